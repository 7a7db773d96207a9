@testable import ClusterProtocol
import Foundation
@testable import Transport
import XCTest

/// Tier 3: on a shared host, nobody but the coordinator's own user joins a loopback run, and
/// dead workers are released the moment their connection closes (real processes).
final class IntrusionProcessTests: XCTestCase {
    var h: ProcessHarness!

    override func setUp() { h = ProcessHarness() }
    override func tearDown() { h.finish(testRun) }

    func reference(steps: Int) throws -> String { try h.reference(steps: steps) }

    /// A hand-written worker that knows the numerics fingerprint (it is public) and says hello
    /// over and over; `keys`: CURVE keys of its own and the server key it somehow learned.
    final class FakeWorker {
        let socket: ZMQSocket
        init(_ ctx: ZMQContext, _ endpoint: String, keys: (CurveKeypair, String)? = nil) throws {
            socket = try ZMQSocket(ctx, .dealer)
            if let (k, server) = keys { socket.curveClient(k, serverKey: server) }
            try socket.connect(endpoint)
        }
        var welcomed = false
        func tryToJoin() {
            socket.send(Message.hello(Hello(fingerprint: ProcessHarness.workerNumerics, blasCore: "Zen", threads: 1, pid: 4242)).encode(), dontWait: true)
            while let frames = socket.receive() {
                if case .welcome? = try? Message.decode(frames, limits: WireLimits()) { welcomed = true }
            }
        }
    }

    func testOnlyTheCoordinatorsOwnUserJoinsALoopbackRun() throws {
        let ref = try reference(steps: 8)
        let c = try h.start("coord", ["start", "--checkpoint-dir", h.dir + "/run", "--bind", "tcp://127.0.0.1:0"] + ProcessHarness.options(steps: 8), name: "coord")
        let ep = try XCTUnwrap(h.endpoint("coord"))
        let keyPath = try XCTUnwrap(JoinKey.path(endpoint: ep))
        XCTAssertTrue(h.text(h.log("coord")).contains("join with the run's key in \(keyPath)"), h.text(h.log("coord")))
        var st = stat()
        XCTAssertEqual(stat(keyPath, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600, "the join key is the user's alone")
        XCTAssertEqual(stat((keyPath as NSString).deletingLastPathComponent, &st), 0)
        XCTAssertEqual(st.st_mode & 0o077, 0, "in a directory closed to others")

        // Fakes: no key at all; and a key of its own with the coordinator's real public key.
        let ctx = ZMQContext()
        let serverKey = try XCTUnwrap(try JoinKey.read(keyPath)).serverPublic
        let fakes = [try FakeWorker(ctx, ep), try FakeWorker(ctx, ep, keys: (try CurveKeypair.generate(), serverKey))]
        // Another user: the real worker binary as `nobody`, who cannot read the key file.
        var other: Process?
        if getuid() == 0, FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv"), nobodyCanRun(h.bin + "/worker") {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
            p.arguments = ["--reuid=nobody", "--regid=nogroup", "--clear-groups", h.bin + "/worker", "join", ep, "--join-key", keyPath]
            p.environment = ["HOME": "/nonexistent", "PATH": "/usr/bin:/bin"]
            _ = FileManager.default.createFile(atPath: h.log("nobody"), contents: nil)
            p.standardError = FileHandle(forWritingAtPath: h.log("nobody"))
            p.standardOutput = FileHandle.nullDevice
            try p.run()
            other = p
        }
        let until = Date().addingTimeInterval(4)
        while Date() < until { fakes.forEach { $0.tryToJoin() }; Thread.sleep(forTimeInterval: 0.1) }
        XCTAssertFalse(fakes.contains { $0.welcomed }, "no fake worker may be welcomed")
        if let other {
            other.waitUntilExit()
            XCTAssertEqual(other.terminationStatus, 2, h.text(h.log("nobody")))
            let said = h.text(h.log("nobody"))
            XCTAssertTrue(said.contains("refused by the coordinator") && said.contains("requires authentication") && said.contains("HINT"), said)
        }
        // This user's worker joins by itself, and the run is the reference run.
        try h.start("worker", ["join", ep], name: "good")
        XCTAssertEqual(h.wait(c, timeout: 120), 0, h.text(h.log("coord")))
        XCTAssertEqual(h.hash("coord"), ref)
        let log = h.text(h.log("coord"))
        XCTAssertEqual(log.components(separatedBy: " joined ").count - 1, 1, "only this user's worker joined:\n\(log)")
        XCTAssertTrue(log.contains("refused a worker from 127.0.0.1 (CURVE, key"), "the stranger's key was refused by name:\n\(log)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: keyPath), "the join key goes with its coordinator")
    }

    func testARefusedWorkerExitsWithTheReasonAndAMissingCoordinatorIsSaidSo() throws {
        // Nothing listens: the worker says so (rather than "never welcomed").
        let lonely = try h.start("worker", ["join", "127.0.0.1:\(freePort())"], name: "lonely")
        XCTAssertTrue(h.until(15) { self.h.text(self.h.log("lonely")).contains("nothing answers at tcp://127.0.0.1:") }, h.text(h.log("lonely")))
        h.kill9(lonely)
        // Own CURVE keys that are not on the allow-list: exit 2 at once, with the reason.
        let c = try h.start("coord", ["start", "--checkpoint-dir", h.dir + "/run", "--bind", "tcp://127.0.0.1:0"] + ProcessHarness.options(steps: 2), name: "coord")
        let ep = try XCTUnwrap(h.endpoint("coord"))
        let serverKey = try XCTUnwrap(try JoinKey.read(try XCTUnwrap(JoinKey.path(endpoint: ep)))).serverPublic
        let stranger = try CurveKeypair.generate()
        try stranger.write(base: h.dir + "/stranger")
        let w = try h.start("worker", ["join", ep, "--curve-keys", h.dir + "/stranger.key", "--server-key", serverKey], name: "stranger")
        XCTAssertEqual(h.wait(w, timeout: 20), 2, h.text(h.log("stranger")))
        XCTAssertTrue(h.text(h.log("stranger")).contains("refused this worker's key"), h.text(h.log("stranger")))
        h.kill9(c)
    }

    /// The outside report: a worker told the port of another run's coordinator worked for it.
    /// `coord start` prints the join command with its run id; `--run` refuses any other run.
    func testAWorkerToldItsRunLeavesAnotherRunsCoordinator() throws {
        let ref = try h.reference(steps: 2)
        let c = try h.start("coord", ["start", "--checkpoint-dir", h.dir + "/run", "--bind", "tcp://127.0.0.1:0"] + ProcessHarness.options(steps: 2), name: "coord")
        let ep = try XCTUnwrap(h.endpoint("coord"))
        var command = ""
        XCTAssertTrue(h.until(20) {
            command = self.h.text(self.h.log("coord")).components(separatedBy: "join with: ").dropFirst().first?.prefix { $0 != "\n" }.description ?? ""
            return !command.isEmpty
        })
        XCTAssertTrue(command.hasPrefix("worker join \(ep.dropFirst(6)) --run "), command)
        let run = String(command.split(separator: " ").last ?? "")
        let other = try h.start("worker", ["join", ep, "--run", "123abc"], name: "other")
        XCTAssertEqual(h.wait(other, timeout: 20), 2, h.text(h.log("other")))
        XCTAssertTrue(h.text(h.log("other")).contains("not run 123abc"), h.text(h.log("other")))
        try h.start("worker", ["join", ep, "--run", run], name: "mine")
        XCTAssertEqual(h.wait(c, timeout: 120), 0, h.text(h.log("coord")))
        XCTAssertEqual(h.hash("coord"), ref)
        // A bind that fails names the way out: a free port, and --run.
        let held = try h.start("coord", ["start", "--checkpoint-dir", h.dir + "/run2", "--bind", "tcp://127.0.0.1:0"] + ProcessHarness.options(steps: 2), name: "held")
        let heldEp = try XCTUnwrap(h.endpoint("held"))
        let clash = try h.start("coord", ["start", "--checkpoint-dir", h.dir + "/clash", "--bind", heldEp] + ProcessHarness.options(steps: 2), name: "clash")
        XCTAssertEqual(h.wait(clash, timeout: 30), 1, h.text(h.log("clash")))
        XCTAssertTrue(h.text(h.log("clash")).contains("--bind tcp://127.0.0.1:0"), h.text(h.log("clash")))
        h.kill9(held)
    }

    func testWorkersStartedWithTheirCoordinatorFindItsJoinKey() throws {
        let ref = try reference(steps: 8)
        let port = freePort()
        // Workers first, then the coordinator: they meet it before (or just after) its key is written.
        let workers = try (0..<2).map { try h.start("worker", ["join", "127.0.0.1:\(port)"], name: "early\($0)") }
        let c = try h.start("coord", ["start", "--checkpoint-dir", h.dir + "/early", "--bind", "tcp://127.0.0.1:\(port)", "--min-workers", "2"]
                                + ProcessHarness.options(steps: 8), name: "coord")
        XCTAssertEqual(h.wait(c, timeout: 120), 0, h.text(h.log("coord")))
        XCTAssertEqual(h.hash("coord"), ref)
        for (i, w) in workers.enumerated() { XCTAssertEqual(h.wait(w, timeout: 30), 0, h.text(h.log("early\(i)"))) }
    }

    /// Whether `nobody` may run the binary where it was built (a clone in a private folder: no).
    func nobodyCanRun(_ path: String) -> Bool {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        p.arguments = ["--reuid=nobody", "--regid=nogroup", "--clear-groups", path, "--help"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        guard (try? p.run()) != nil else { return false }
        p.waitUntilExit()
        if p.terminationStatus != 0 { print("the worker binary is not reachable by nobody here: the other-user case is skipped") }
        return p.terminationStatus == 0
    }

    func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len); return getsockname(fd, $0, &len) }
        }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    func testAWorkerKilledAndRestartedAgainAndAgainCannotStallTheRun() throws {
        let ref = try reference(steps: 24)
        let c = try h.start("coord", ["start", "--checkpoint-dir", h.dir + "/churn", "--bind", "tcp://127.0.0.1:0"] + ProcessHarness.options(steps: 24), name: "coord")
        let ep = try XCTUnwrap(h.endpoint("coord"))
        try h.start("worker", ["join", ep, "--debug-delay", "0.05"], name: "steady")
        var rng = SystemRandomNumberGenerator()
        var kills = 0
        var churner = try h.start("worker", ["join", ep], name: "churn0")
        while c.isRunning && kills < 40 {
            Thread.sleep(forTimeInterval: Double.random(in: 0.2...0.8, using: &rng))
            h.kill9(churner)
            kills += 1
            churner = try h.start("worker", ["join", ep], name: "churn\(kills)")
        }
        XCTAssertEqual(h.wait(c, timeout: 120), 0, h.text(h.log("coord")))
        XCTAssertEqual(h.hash("coord"), ref)
        let log = h.text(h.log("coord"))
        XCTAssertGreaterThan(kills, 3)
        // Each kill is seen as it happens (a new connection that reuses the descriptor before the
        // close is read may, rarely, leave one to the liveness window).
        let atOnce = log.components(separatedBy: "closed its connection: released at once").count - 1
        let waited = log.components(separatedBy: "declared dead").count - 1
        XCTAssertGreaterThanOrEqual(atOnce, 3, log)
        XCTAssertLessThanOrEqual(waited, 1, "killed workers are not waited out:\n\(log)")
    }
}
