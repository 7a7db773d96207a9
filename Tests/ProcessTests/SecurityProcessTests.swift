import ClusterProtocol
import Foundation
import Transport
import XCTest

/// Tier 3: CURVE authentication with an allow-list, and the loopback-only default.
final class SecurityProcessTests: XCTestCase {
    var h: ProcessHarness!
    override func setUp() { h = ProcessHarness() }
    override func tearDown() { h.cleanUp() }

    func keygen(_ program: String, _ name: String) throws -> CurveKeypair {
        let p = try h.start(program, ["keygen", "--out", h.dir + "/" + name], name: "keygen-\(name)")
        XCTAssertEqual(h.wait(p, timeout: 30), 0)
        var st = stat()
        stat(h.dir + "/\(name).key", &st)
        XCTAssertEqual(st.st_mode & 0o777, 0o600, "secret key files are private")
        return try CurveKeypair.read(h.dir + "/\(name).key")
    }

    func testOnlyAllowListedWorkersJoinAndTheResultIsUnchanged() throws {
        _ = try keygen("coord", "coord")
        let good = try keygen("worker", "good")
        _ = try keygen("worker", "stranger")
        try "# workers allowed to join\n\(good.publicKey)  # good\n".write(toFile: h.dir + "/allow", atomically: true, encoding: .utf8)
        let opts = ProcessHarness.options(steps: 8)
        let ref = try h.start("coord", ["start", "--local", "--checkpoint-dir", h.dir + "/ref"] + opts, name: "ref")
        XCTAssertEqual(h.wait(ref, timeout: 120), 0)
        let c = try h.start("coord", ["start", "--checkpoint-dir", h.dir + "/run", "--bind", "tcp://127.0.0.1:0",
                                      "--curve-keys", h.dir + "/coord.key", "--allow", h.dir + "/allow"] + opts, name: "coord")
        let ep = try XCTUnwrap(h.endpoint("coord"))
        let intruders = [
            ("stranger", ["--curve-keys", h.dir + "/stranger.key", "--server-key", h.dir + "/coord.pub"]),
            ("nokey", []),
            ("wrongserver", ["--curve-keys", h.dir + "/good.key", "--server-key", h.dir + "/stranger.pub"]),
        ]
        for (name, args) in intruders { try h.start("worker", ["join", ep] + args, name: name) }
        // No key and the wrong server key fail before ZAP; each is logged with the worker's own
        // address. A worker with no key is rejected so early that libzmq may close the connection
        // before the monitor reads its address (it then does not retry): that line says so instead.
        let port = try XCTUnwrap(ep.split(separator: ":").last)
        func line(_ reason: String, addressed: Bool) -> Substring? {
            h.text(h.log("coord")).split(separator: "\n").first {
                // A key-less peer may close first when it sees the server's CURVE greeting: libzmq
                // then reports the handshake as dropped rather than as a mechanism mismatch.
                ($0.contains(reason) || (!addressed && $0.contains("the connection dropped during the handshake")))
                    && ($0.contains("from 127.0.0.1:") || (!addressed && $0.contains("an address that could not be read (the connection closed first)")))
            }
        }
        let reasons = [("it offered no CURVE key", false), ("it holds the wrong server key", true)]
        _ = h.until(20) { reasons.allSatisfy { line($0.0, addressed: $0.1) != nil } }
        for (reason, addressed) in reasons {
            let found = try XCTUnwrap(line(reason, addressed: addressed), "no line for '\(reason)':\n\(h.text(h.log("coord")))")
            guard let at = found.range(of: #"from 127\.0\.0\.1:[0-9]+"#, options: .regularExpression) else { continue }
            XCTAssertNotEqual(found[at].split(separator: ":").last, port, "the peer's port, not the coordinator's: \(found)")
        }
        XCTAssertFalse(h.text(h.log("coord")).contains("joined"), "no intruder may join:\n\(h.text(h.log("coord")))")
        try h.start("worker", ["join", ep, "--curve-keys", h.dir + "/good.key", "--server-key", h.dir + "/coord.pub"], name: "good")
        XCTAssertEqual(h.wait(c, timeout: 120), 0, h.text(h.log("coord")))
        XCTAssertEqual(h.hash("coord"), h.hash("ref"), "authentication does not change the math")
        let log = h.text(h.log("coord"))
        XCTAssertTrue(log.contains("refused a worker from 127.0.0.1 (CURVE, key \(try CurveKeypair.read(h.dir + "/stranger.key").publicKey))"), log)
        XCTAssertEqual(log.components(separatedBy: " joined ").count - 1, 1, "only the allow-listed worker joined:\n\(log)")
        for (name, _) in intruders {
            XCTAssertFalse(h.text(h.log(name)).contains("joined run"), "\(name) must never be welcomed (no model, no weights, no data)")
        }
    }

    func testBindingBeyondLoopbackNeedsCurveOrInsecure() throws {
        let p = try h.start("coord", ["start", "--bind", "tcp://0.0.0.0:0", "--checkpoint-dir", h.dir + "/x"] + ProcessHarness.options(steps: 2), name: "open")
        XCTAssertEqual(h.wait(p, timeout: 30), 64)
        let said = h.text(h.log("open"))
        XCTAssertTrue(said.contains("without authentication") && said.contains("--curve-keys") && said.contains("--insecure"), said)
    }
}

/// Tier 3: floods do not exhaust the coordinator or change the result.
final class FloodProcessTests: XCTestCase {
    var h: ProcessHarness!
    override func setUp() { h = ProcessHarness() }
    override func tearDown() { h.cleanUp() }

    func rssMiB(_ pid: Int32) -> Double {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return Double(line.split(separator: " ").dropFirst().first ?? "0").map { $0 / 1024 } ?? 0
    }

    func testConnectionAndHelloFloodsAreSurvived() throws {
        // Long enough (40 steps of a worker slowed to 50 ms a shard: over 8 s) that the fake which
        // got in stays silent past the 3 s liveness window whatever the machine's load.
        let opts = ProcessHarness.options(steps: 40)
        let ref = try h.start("coord", ["start", "--local", "--checkpoint-dir", h.dir + "/ref"] + opts, name: "ref")
        XCTAssertEqual(h.wait(ref, timeout: 120), 0)
        let c = try h.start("coord", ["start", "--checkpoint-dir", h.dir + "/run", "--bind", "tcp://127.0.0.1:0", "--max-workers", "2"] + opts, name: "coord")
        let ep = try XCTUnwrap(h.endpoint("coord"))
        try h.start("worker", ["join", ep, "--debug-delay", "0.05"], name: "w1")
        let before = rssMiB(c.processIdentifier)
        // 400 idle TCP connections held open for the whole run.
        let fds = (0..<400).map { _ in h.rawConnect(ep) }.filter { $0 >= 0 }
        defer { fds.forEach { close($0) } }
        // 60 identities saying hello: one fits under --max-workers 2, the rest are refused.
        let ctx = ZMQContext()
        var fakes: [ZMQSocket] = []
        let hello = Message.hello(Hello(fingerprint: ProcessHarness.workerNumerics, blasCore: "test", threads: 1, pid: 1)).encode()
        // This user's own processes (with the run's join key): they reach the core and its limits.
        let key = try XCTUnwrap(try JoinKey.read(try XCTUnwrap(JoinKey.path(endpoint: ep))))
        for _ in 0..<60 {
            let s = try ZMQSocket(ctx, .dealer)
            s.curveClient(key.worker, serverKey: key.serverPublic)
            try s.connect(ep)
            fakes.append(s)
        }
        Thread.sleep(forTimeInterval: 0.5)
        for s in fakes { s.send(hello) }
        var peak = 0.0
        h.until(180) {
            peak = max(peak, self.rssMiB(c.processIdentifier))
            return !c.isRunning
        }
        XCTAssertEqual(h.wait(c, timeout: 5), 0, h.text(h.log("coord")))
        XCTAssertEqual(h.hash("coord"), h.hash("ref"))
        let log = h.text(h.log("coord"))
        XCTAssertGreaterThanOrEqual(log.components(separatedBy: "--max-workers").count - 1, 50, "refusals past the cap:\n\(log.suffix(2000))")
        XCTAssertTrue(log.contains("declared dead"), "the fake worker that got in never works and is declared dead")
        XCTAssertGreaterThan(before, 0, "RSS was sampled")
        XCTAssertLessThan(peak, before + 100, "memory stays bounded under the floods (before \(before) MiB, peak \(peak) MiB)")
        print("coordinator RSS before the floods \(before) MiB, peak during them \(peak) MiB")
    }
}
