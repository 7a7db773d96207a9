import Foundation
import XCTest

/// Tier 3: `--threads` computes whole shards at once, each with single-threaded BLAS, so no
/// thread count changes a bit (the outside report: `worker join --threads 2` changed the hash).
final class ThreadsProcessTests: XCTestCase {
    var h: ProcessHarness!
    override func setUp() { h = ProcessHarness() }
    override func tearDown() { h.finish(testRun) }

    /// The reported config (d_in 40, batch 24, shard 4, H 32, dropout 0.3), on 48 shorter sequences for 3 steps.
    let reported = ["--synthetic-sequences", "48", "--max-length", "40", "--synthetic-input", "40", "--steps", "3", "--batch-size", "24",
                    "--shard-size", "4", "--hidden", "32", "--layers", "2", "--dropout", "0.3", "--seed", "5"]

    func testOneHashForAnyThreadCountLocallyAndOnAWorker() throws {
        var hashes: [String: String] = [:]
        for n in [1, 2, 3] {
            let p = try h.start("coord", ["start", "--local", "--threads", "\(n)", "--checkpoint-dir", h.dir + "/local\(n)"] + reported, name: "local\(n)")
            XCTAssertEqual(h.wait(p, timeout: 120), 0, h.text(h.log("local\(n)")))
            hashes["local --threads \(n)"] = h.hash("local\(n)")
        }
        for n in [1, 2, 3] {
            let c = try h.start("coord", ["start", "--bind", "tcp://127.0.0.1:0", "--checkpoint-dir", h.dir + "/w\(n)"] + reported, name: "coord\(n)")
            let ep = try XCTUnwrap(h.endpoint("coord\(n)"))
            let w = try h.start("worker", ["join", ep, "--threads", "\(n)", "--debug-delay", "0.05"], name: "worker\(n)")
            XCTAssertEqual(h.wait(c, timeout: 120), 0, h.text(h.log("coord\(n)")))
            XCTAssertEqual(h.wait(w, timeout: 30), 0)
            hashes["worker --threads \(n)"] = h.hash("coord\(n)")
            // It really ran that many shards at once.
            XCTAssertTrue(h.text(h.log("worker\(n)")).contains("up to \(n) at once"), h.text(h.log("worker\(n)")))
        }
        XCTAssertEqual(Set(hashes.values).count, 1, "\(hashes)")
        XCTAssertEqual(hashes.count, 6)
    }
}
