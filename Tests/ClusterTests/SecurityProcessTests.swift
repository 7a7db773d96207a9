import Cluster
import Foundation
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
        Thread.sleep(forTimeInterval: 2)
        XCTAssertFalse(h.text(h.log("coord")).contains("joined"), "no intruder may join:\n\(h.text(h.log("coord")))")
        try h.start("worker", ["join", ep, "--curve-keys", h.dir + "/good.key", "--server-key", h.dir + "/coord.pub"], name: "good")
        XCTAssertEqual(h.wait(c, timeout: 120), 0, h.text(h.log("coord")))
        XCTAssertEqual(h.hash("coord"), h.hash("ref"), "authentication does not change the math")
        let log = h.text(h.log("coord"))
        XCTAssertTrue(log.contains("refused a worker from 127.0.0.1 (CURVE, key \(try CurveKeypair.read(h.dir + "/stranger.key").publicKey))"), log)
        XCTAssertTrue(log.contains("CURVE handshake failed"), log)
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
