import Foundation
import XCTest

/// Tier 3: relays (`worker relay`) between the coordinator and the workers, as real processes
/// on loopback: the reduction tree is summed on three levels of processes (workers' blocks,
/// relays' blocks, the coordinator's root) and the run ends at the `--local` hash, also when a
/// worker behind a relay and then a relay itself are killed with `kill -9`.
final class RelayProcessTests: XCTestCase {
    var h: ProcessHarness!
    override func setUp() { h = ProcessHarness() }
    override func tearDown() { h.finish(testRun) }

    func options(steps: Int) -> [String] {
        ["--synthetic-sequences", "64", "--max-length", "30", "--synthetic-input", "8", "--steps", "\(steps)", "--batch-size", "32",
         "--shard-size", "4", "--hidden", "16", "--dropout", "0.3", "--seed", "9"]
    }

    func local(_ steps: Int) throws -> String {
        let p = try h.start("coord", ["start", "--local", "--checkpoint-dir", h.dir + "/local\(steps)"] + options(steps: steps), name: "local\(steps)")
        XCTAssertEqual(h.wait(p, timeout: 120), 0, h.text(h.log("local\(steps)")))
        return try XCTUnwrap(h.hash("local\(steps)"))
    }

    /// A relay joined to `ep`, and its address once it listens.
    func relay(_ name: String, to ep: String, threads: Int, extra: [String] = []) throws -> (Process, String) {
        let p = try h.start("worker", ["relay", ep, "--bind", "tcp://127.0.0.1:0", "--threads", "\(threads)"] + extra, name: name)
        return (p, try XCTUnwrap(h.endpoint(name), h.text(h.log(name))))
    }

    func rows(_ name: String) -> [[String: Any]] {
        h.metricsLines(h.dir + "/" + name).compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            .filter { $0["loss"] != nil }
    }

    /// Two relays of 4 shards each under the coordinator; under the first, two workers of 2
    /// threads (blocks of 2), under the second one worker of 4: 8 shards a step reach the
    /// coordinator as 2 sums, with the `--local` hash.
    func testTwoLevelsOfRelaysGiveLocalsHashWithOneGradientPerRelay() throws {
        let steps = 6
        let reference = try local(steps)
        let singles = try h.start("coord", ["start", "--bind", "tcp://127.0.0.1:0", "--checkpoint-dir", h.dir + "/singles"] + options(steps: steps), name: "singles")
        let sep = try XCTUnwrap(h.endpoint("singles"))
        let sw = try h.start("worker", ["join", sep], name: "singles-w")
        XCTAssertEqual(h.wait(singles, timeout: 120), 0, h.text(h.log("singles")))
        XCTAssertEqual(h.wait(sw, timeout: 30), 0)
        let c = try h.start("coord", ["start", "--bind", "tcp://127.0.0.1:0", "--min-workers", "2", "--checkpoint-dir", h.dir + "/tree"] + options(steps: steps), name: "tree")
        let ep = try XCTUnwrap(h.endpoint("tree"))
        let (r1, r1ep) = try relay("r1", to: ep, threads: 4)
        let (r2, r2ep) = try relay("r2", to: ep, threads: 4)
        let ws = [try h.start("worker", ["join", r1ep, "--threads", "2"], name: "w1"), try h.start("worker", ["join", r1ep, "--threads", "2"], name: "w2"),
                  try h.start("worker", ["join", r2ep, "--threads", "4"], name: "w3")]
        XCTAssertEqual(h.wait(c, timeout: 120), 0, h.text(h.log("tree")))
        for p in [r1, r2] + ws { XCTAssertEqual(h.wait(p, timeout: 30), 0) }
        XCTAssertEqual(h.hash("tree"), reference, h.text(h.log("tree")) + h.text(h.log("r1")) + h.text(h.log("r2")))
        XCTAssertEqual(h.hash("singles"), reference)
        let tree = rows("tree"), flat = rows("singles")
        XCTAssertEqual(tree.map { $0["shards"] as! Int }, Array(repeating: 8, count: steps))
        XCTAssertEqual(flat.map { $0["gradients"] as! Int }, Array(repeating: 8, count: steps))
        let gradients = tree.map { $0["gradients"] as! Int }
        // The first step may start before a relay's workers are in (a straggler's shards then go
        // alone to the other relay); from then on each relay sends one sum a step.
        XCTAssertGreaterThanOrEqual(gradients.dropFirst().filter { $0 == 2 }.count, steps / 2, "\(gradients)")
        let bytesIn = tree.map { $0["bytes_received"] as! Int }.reduce(0, +), flatIn = flat.map { $0["bytes_received"] as! Int }.reduce(0, +)
        XCTAssertLessThan(bytesIn, flatIn / 2)
        // Each relay took its workers' blocks (2 or 4 shards summed in a worker) and summed them again.
        for r in ["r1", "r2"] {
            let line = h.text(h.log(r)).split(separator: "\n").first { $0.contains("sum(s) sent up") }.map(String.init) ?? ""
            XCTAssertFalse(line.isEmpty, h.text(h.log(r)))
        }
        print("relays: gradients into the coordinator per step \(gradients), bytes in \(bytesIn) against \(flatIn) from one worker of single shards")
    }

    /// `kill -9` of a worker behind a relay, then of a relay (its shards go back to the
    /// coordinator's queue), a new relay joining with a worker: the `--local` hash.
    func testKillingAWorkerBehindARelayAndThenTheRelayChangesNoBit() throws {
        let steps = 12
        let reference = try local(steps)
        let c = try h.start("coord", ["start", "--bind", "tcp://127.0.0.1:0", "--min-workers", "2", "--checkpoint-dir", h.dir + "/chaos"] + options(steps: steps), name: "chaos")
        let ep = try XCTUnwrap(h.endpoint("chaos"))
        let slow = ["--debug-delay", "0.1"]
        let (r1, r1ep) = try relay("r1", to: ep, threads: 4)
        let (r2, r2ep) = try relay("r2", to: ep, threads: 4)
        let victim = try h.start("worker", ["join", r1ep, "--threads", "2"] + slow, name: "w1")
        _ = try h.start("worker", ["join", r1ep, "--threads", "2"] + slow, name: "w2")
        _ = try h.start("worker", ["join", r2ep, "--threads", "4"] + slow, name: "w3")
        h.until(60) { self.h.metricsLines(self.h.dir + "/chaos").count >= 3 }
        h.kill9(victim)
        h.until(60) { self.h.metricsLines(self.h.dir + "/chaos").count >= 6 }
        h.kill9(r2)
        let (r3, r3ep) = try relay("r3", to: ep, threads: 2)
        _ = try h.start("worker", ["join", r3ep] + slow, name: "w4")
        XCTAssertEqual(h.wait(c, timeout: 180), 0, h.text(h.log("chaos")))
        XCTAssertEqual(h.hash("chaos"), reference, h.text(h.log("chaos")) + h.text(h.log("r1")))
        XCTAssertEqual(h.wait(r1, timeout: 30), 0)
        XCTAssertEqual(h.wait(r3, timeout: 30), 0)
        XCTAssertTrue(h.text(h.log("r1")).contains("closed its connection: released at once"), h.text(h.log("r1")))
        XCTAssertTrue(h.text(h.log("chaos")).contains("closed its connection: released at once"), h.text(h.log("chaos")))
    }

    /// The coordinator killed with `kill -9` and started again with `--resume` on its address:
    /// the relay reconnects by itself (with the new run's join key), keeps its workers, and the
    /// run ends at the `--local` hash.
    func testACoordinatorKilledAndResumedGetsItsRelayBack() throws {
        let steps = 12
        let reference = try local(steps)
        let opts = options(steps: steps) + ["--checkpoint-every", "2"]
        let dir = h.dir + "/resumed"
        let c = try h.start("coord", ["start", "--bind", "tcp://127.0.0.1:0", "--checkpoint-dir", dir] + opts, name: "first")
        let ep = try XCTUnwrap(h.endpoint("first"))
        let (r, rep) = try relay("r", to: ep, threads: 4)
        let ws = try (0..<2).map { try h.start("worker", ["join", rep, "--threads", "2", "--debug-delay", "0.1"], name: "w\($0)") }
        h.until(60) { self.h.metricsLines(dir).count >= 5 }
        h.kill9(c)
        let again = try h.start("coord", ["start", "--checkpoint-dir", dir, "--resume", "--bind", ep] + opts, name: "second")
        XCTAssertEqual(h.wait(again, timeout: 120), 0, h.text(h.log("second")))
        XCTAssertEqual(h.hash("second"), reference, h.text(h.log("second")) + h.text(h.log("r")))
        XCTAssertEqual(h.wait(r, timeout: 30), 0, h.text(h.log("r")))
        for w in ws { XCTAssertEqual(h.wait(w, timeout: 30), 0) }
        XCTAssertTrue(h.text(h.log("r")).contains("join key has changed"), h.text(h.log("r")))
        XCTAssertEqual(h.metricsLines(dir).filter { $0.contains("\"loss\"") }.count, steps, "each step once")
    }

    /// CURVE below a relay: only a worker whose key is on the relay's allow-list joins it (one
    /// with its own unlisted key, and one with none, exit 2 with the reason and never get the
    /// model); the coordinator above admits the relay by the run's join key; the result is `--local`'s.
    func testOnlyAllowListedWorkersJoinARelay() throws {
        for name in ["relay", "good", "stranger"] {
            let k = try h.start("worker", ["keygen", "--out", h.dir + "/" + name], name: "keygen-" + name)
            XCTAssertEqual(h.wait(k, timeout: 30), 0)
        }
        try h.text(h.dir + "/good.pub").write(toFile: h.dir + "/allow", atomically: true, encoding: .utf8)  // a .pub file is an allow-list
        let reference = try local(4)
        let c = try h.start("coord", ["start", "--bind", "tcp://127.0.0.1:0", "--checkpoint-dir", h.dir + "/curve"] + options(steps: 4), name: "curve")
        let ep = try XCTUnwrap(h.endpoint("curve"))
        let (r, rep) = try relay("r", to: ep, threads: 2, extra: ["--listen-keys", h.dir + "/relay.key", "--allow", h.dir + "/allow"])
        let stranger = try h.start("worker", ["join", rep, "--curve-keys", h.dir + "/stranger.key", "--server-key", h.dir + "/relay.pub"], name: "stranger")
        let nokey = try h.start("worker", ["join", rep], name: "nokey")
        XCTAssertEqual(h.wait(stranger, timeout: 60), 2, h.text(h.log("stranger")))
        XCTAssertEqual(h.wait(nokey, timeout: 60), 2, h.text(h.log("nokey")))
        XCTAssertTrue(h.text(h.log("stranger")).contains("not on the coordinator's allow-list"), h.text(h.log("stranger")))
        let w = try h.start("worker", ["join", rep, "--threads", "2", "--curve-keys", h.dir + "/good.key", "--server-key", h.dir + "/relay.pub"], name: "good")
        XCTAssertEqual(h.wait(c, timeout: 120), 0, h.text(h.log("curve")))
        XCTAssertEqual(h.wait(r, timeout: 30), 0)
        XCTAssertEqual(h.wait(w, timeout: 30), 0)
        XCTAssertEqual(h.hash("curve"), reference)
        let log = h.text(h.log("r"))
        XCTAssertEqual(log.components(separatedBy: " joined ").count - 1, 1, "only the allow-listed worker joined:\n\(log)")
        for name in ["stranger", "nokey"] { XCTAssertFalse(h.text(h.log(name)).contains("joined run"), h.text(h.log(name))) }
    }

    /// Packed data through relays: a relay with its own copy is sent no training sequences and
    /// reads them for its worker that has none; a relay without one passes the coordinator's on,
    /// and sends none to its worker that reads its own copy. The `--local` hash, with validation.
    func testRelaysPassOnOrReadTheSequencesAndTheHashIsLocals() throws {
        func coord(_ name: String, _ args: [String]) throws {
            let p = try h.start("coord", args, name: name)
            XCTAssertEqual(h.wait(p, timeout: 120), 0, h.text(h.log(name)))
        }
        try coord("train", ["synthetic", "--out", h.dir + "/train.npz", "--first", "0", "--count", "64", "--synthetic-input", "8", "--max-length", "30"])
        try coord("valid", ["synthetic", "--out", h.dir + "/valid.npz", "--first", "64", "--count", "16", "--synthetic-input", "8", "--max-length", "30"])
        try coord("pack", ["data", "pack", h.dir + "/train.npz", "--out", h.dir + "/packed", "--shard-mb", "0.01"])
        let opts = ["--data", h.dir + "/packed", "--valid-data", h.dir + "/valid.npz", "--valid-every", "3", "--steps", "6", "--batch-size", "32",
                    "--shard-size", "4", "--hidden", "16", "--dropout", "0.3", "--seed", "9"]
        try coord("ref", ["start", "--local", "--checkpoint-dir", h.dir + "/ref"] + opts)
        let c = try h.start("coord", ["start", "--bind", "tcp://127.0.0.1:0", "--min-workers", "2", "--checkpoint-dir", h.dir + "/run"] + opts, name: "run")
        let ep = try XCTUnwrap(h.endpoint("run"))
        let (r1, r1ep) = try relay("r1", to: ep, threads: 4, extra: ["--data-root", h.dir + "/packed"])
        let (r2, r2ep) = try relay("r2", to: ep, threads: 4)
        let w1 = try h.start("worker", ["join", r1ep, "--threads", "4"], name: "w1")
        let w2 = try h.start("worker", ["join", r2ep, "--threads", "4", "--data-root", h.dir + "/packed"], name: "w2")
        XCTAssertEqual(h.wait(c, timeout: 120), 0, h.text(h.log("run")))
        for p in [r1, r2, w1, w2] { XCTAssertEqual(h.wait(p, timeout: 30), 0) }
        XCTAssertEqual(h.hash("run"), h.hash("ref"), h.text(h.log("run")))
        func valid(_ name: String) -> [String] {
            h.metricsLines(h.dir + "/" + name).compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
                .filter { $0["valid_loss"] != nil }.map { "\($0["step"]!) \($0["valid_loss"]!) \($0["valid_accuracy"]!)" }
        }
        XCTAssertEqual(valid("run").count, 2)
        XCTAssertEqual(valid("run"), valid("ref"), "validation through relays gives the same figures")
        XCTAssertTrue(h.text(h.log("run")).contains("reads the data from its own copy"), h.text(h.log("run")))
        XCTAssertTrue(h.text(h.log("r2")).contains("reads the data from its own copy"), h.text(h.log("r2")))
    }

    /// A relay is refused at its command line when it would listen beyond loopback unauthenticated.
    func testARelayBeyondLoopbackWithoutAuthenticationIsRefusedWithTheFix() throws {
        let p = try h.start("worker", ["relay", "127.0.0.1:5555", "--bind", "tcp://0.0.0.0:0"], name: "open")
        XCTAssertNotEqual(h.wait(p, timeout: 30), 0)
        for s in ["without authentication", "HINT", "--allow"] { XCTAssertTrue(h.text(h.log("open")).contains(s), h.text(h.log("open"))) }
        let q = try h.start("worker", ["relay", "127.0.0.1:5555", "--bind", "tcp://127.0.0.1:0", "--threads", "1"], name: "narrow")
        XCTAssertNotEqual(h.wait(q, timeout: 30), 0)
        XCTAssertTrue(h.text(h.log("narrow")).contains("--threads must be in 2...1024"), h.text(h.log("narrow")))
    }
}
