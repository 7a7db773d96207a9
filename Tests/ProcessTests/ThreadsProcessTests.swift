import Foundation
import Numerics
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

    /// A worker computing several shards at once over TCP is given aligned blocks of shards
    /// (subtrees of the reduction tree), adds each block in the subtree's order and sends one
    /// sum: the tree is computed on two levels, in the worker and at the coordinator, and the
    /// coordinator takes in fewer gradients, with the `--local` hash. A worker of 8 threads
    /// answers a step of 8 shards with one gradient (three levels of adds inside it).
    func testWorkersSumAlignedBlocksOfShardsAndTheHashIsLocals() throws {
        func options(steps: Int) -> [String] {
            ["--synthetic-sequences", "64", "--max-length", "30", "--synthetic-input", "8", "--steps", "\(steps)", "--batch-size", "32",
             "--shard-size", "4", "--hidden", "16", "--dropout", "0.3", "--seed", "9"]
        }
        let opts = options(steps: 4)
        let local = try h.start("coord", ["start", "--local", "--checkpoint-dir", h.dir + "/local"] + opts, name: "local")
        XCTAssertEqual(h.wait(local, timeout: 120), 0, h.text(h.log("local")))
        let reference = try XCTUnwrap(h.hash("local"))
        func cluster(_ name: String, threads: [Int]) throws -> (gradients: [Int], shards: [Int], bytesIn: Int, largest: [Int]) {
            let c = try h.start("coord", ["start", "--bind", "tcp://127.0.0.1:0", "--min-workers", "\(threads.count)",
                                          "--checkpoint-dir", h.dir + "/" + name] + opts, name: name)
            let ep = try XCTUnwrap(h.endpoint(name))
            let ws = try threads.enumerated().map { k, n in try h.start("worker", ["join", ep, "--threads", "\(n)"], name: "\(name)-w\(k)") }
            XCTAssertEqual(h.wait(c, timeout: 120), 0, h.text(h.log(name)))
            for w in ws { XCTAssertEqual(h.wait(w, timeout: 30), 0) }
            XCTAssertEqual(h.hash(name), reference, "\(name): \(h.text(h.log(name)))")
            let rows = h.metricsLines(h.dir + "/" + name).compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
                .filter { $0["loss"] != nil }
            return (rows.map { $0["gradients"] as! Int }, rows.map { $0["shards"] as! Int }, rows.map { $0["bytes_received"] as! Int }.reduce(0, +),
                    rows.map { $0["max_shard_frames"] as! Int })
        }
        let singles = try cluster("singles", threads: [1, 1])
        XCTAssertEqual(singles.gradients, singles.shards, "one gradient per shard")
        XCTAssertEqual(singles.shards, [8, 8, 8, 8])
        let blocks = try cluster("blocks", threads: [4, 1])
        XCTAssertTrue(zip(blocks.gradients, blocks.shards).allSatisfy { $0 < $1 }, "a block of 4 summed in the worker every step: \(blocks)")
        XCTAssertLessThan(blocks.bytesIn, singles.bytesIn)
        XCTAssertEqual(blocks.largest, singles.largest, "the largest shard's frames, not a block's")
        let whole = try cluster("whole", threads: [8])
        XCTAssertEqual(whole.gradients, [1, 1, 1, 1], "the step's 8 shards in one sum")
        // kill -9 of a worker holding a block, joiners of other widths, stragglers: the same hash.
        let chaosOpts = options(steps: 12)
        let reference12 = try { () throws -> String in
            let p = try h.start("coord", ["start", "--local", "--checkpoint-dir", h.dir + "/local12"] + chaosOpts, name: "local12")
            XCTAssertEqual(h.wait(p, timeout: 120), 0, h.text(h.log("local12")))
            return try XCTUnwrap(h.hash("local12"))
        }()
        let c = try h.start("coord", ["start", "--bind", "tcp://127.0.0.1:0", "--min-workers", "2", "--checkpoint-dir", h.dir + "/chaos"] + chaosOpts, name: "chaos")
        let ep = try XCTUnwrap(h.endpoint("chaos"))
        let slow = ["--debug-delay", "0.1"]
        let wide = try h.start("worker", ["join", ep, "--threads", "4"] + slow, name: "chaos-wide")
        let narrow = try h.start("worker", ["join", ep] + slow, name: "chaos-narrow")
        h.until(60) { self.h.metricsLines(self.h.dir + "/chaos").count >= 3 }
        h.kill9(wide)
        _ = try h.start("worker", ["join", ep, "--threads", "2"] + slow, name: "chaos-two")
        h.until(60) { self.h.metricsLines(self.h.dir + "/chaos").count >= 7 }
        h.kill9(narrow)
        _ = try h.start("worker", ["join", ep, "--threads", "8"] + slow, name: "chaos-eight")
        XCTAssertEqual(h.wait(c, timeout: 180), 0, h.text(h.log("chaos")))
        XCTAssertEqual(h.hash("chaos"), reference12, h.text(h.log("chaos")))
        XCTAssertTrue(h.text(h.log("chaos")).contains("closed its connection: released at once"), h.text(h.log("chaos")))
        let rows = h.metricsLines(h.dir + "/chaos").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        XCTAssertTrue(rows.contains { ($0["gradients"] as? Int ?? 8) < ($0["shards"] as? Int ?? 8) }, "blocks were summed in the chaos run")
        print("gradients into the coordinator per step: \(singles.gradients) with two 1-thread workers, \(blocks.gradients) with a 4-thread and a 1-thread worker, \(whole.gradients) with one 8-thread worker; bytes in \(singles.bytesIn), \(blocks.bytesIn), \(whole.bytesIn)")
    }
}

/// Tier 3: the default numerics (portable) give one hash whatever code path its kernels take
/// (scalar, 8- or 16-column AVX2+FMA tiles, 32-column AVX-512 tiles) and whatever OpenBLAS
/// kernel is set, at any thread count, locally and on workers that each take another path; it
/// is not the OpenBLAS mode's hash; and a run of the OpenBLAS mode resumes in it by itself.
final class PortableNumericsProcessTests: XCTestCase {
    var h: ProcessHarness!
    override func setUp() { h = ProcessHarness() }
    override func tearDown() { h.finish(testRun) }

    func testOneHashOnEveryKernelPathThreadCountAndWorker() throws {
        let opts = ProcessHarness.options(steps: 6)
        var hashes: [String: String] = [:]
        for (path, threads) in [("scalar", 1), ("lanes8", 2), ("lanes16", 1), ("lanes16", 3), ("avx512", 2)] {
            let name = "\(path)-\(threads)"
            // Any OpenBLAS kernel: the portable mode never calls it for the math.
            let p = try h.start("coord", ["start", "--local", "--threads", "\(threads)", "--checkpoint-dir", h.dir + "/" + name] + opts,
                                name: name, env: ["LOCKSTEP_GEMM_PATH": path, "OPENBLAS_CORETYPE": threads == 2 ? "Sandybridge" : "Haswell"])
            XCTAssertEqual(h.wait(p, timeout: 120), 0, h.text(h.log(name)))
            hashes[name] = h.hash(name)
        }
        let c = try h.start("coord", ["start", "--bind", "tcp://127.0.0.1:0", "--min-workers", "2", "--checkpoint-dir", h.dir + "/cluster"] + opts,
                            name: "cluster")
        let ep = try XCTUnwrap(h.endpoint("cluster"))
        // Other OpenBLAS kernels do not matter in portable mode: no pinning, no refusal.
        let w1 = try h.start("worker", ["join", ep, "--no-pin"], name: "w1", env: ["LOCKSTEP_GEMM_PATH": "scalar", "OPENBLAS_CORETYPE": "Sandybridge"])
        let w2 = try h.start("worker", ["join", ep], name: "w2", env: ["LOCKSTEP_GEMM_PATH": "lanes8"])
        XCTAssertEqual(h.wait(c, timeout: 180), 0, h.text(h.log("cluster")))
        XCTAssertEqual(h.wait(w1, timeout: 30), 0, h.text(h.log("w1")))
        XCTAssertEqual(h.wait(w2, timeout: 30), 0)
        hashes["2 workers (scalar, lanes8)"] = h.hash("cluster")
        XCTAssertEqual(hashes.count, 6)
        XCTAssertEqual(Set(hashes.values).count, 1, "\(hashes)")
        XCTAssertTrue(h.text(h.out("scalar-1")).contains("numerics: portable"), h.text(h.out("scalar-1")))
        let blas = try h.start("coord", ["start", "--local", "--numerics", "openblas", "--checkpoint-dir", h.dir + "/openblas"] + opts, name: "openblas")
        XCTAssertEqual(h.wait(blas, timeout: 120), 0, h.text(h.log("openblas")))
        XCTAssertNotEqual(hashes.values.first, h.hash("openblas"), "portable is its own math")
        // A run of the OpenBLAS mode (as every run was before portable became the default) resumes in its own mode.
        let half = try h.start("coord", ["start", "--local", "--numerics", "openblas", "--checkpoint-dir", h.dir + "/old"]
                                   + ProcessHarness.options(steps: 3), name: "old")
        XCTAssertEqual(h.wait(half, timeout: 120), 0, h.text(h.log("old")))
        let resumed = try h.start("coord", ["start", "--local", "--resume", "--checkpoint-dir", h.dir + "/old"] + opts, name: "old-resumed")
        XCTAssertEqual(h.wait(resumed, timeout: 120), 0, h.text(h.log("old-resumed")))
        XCTAssertTrue(h.text(h.log("old-resumed")).contains("resuming in the checkpoint's numerics: openblas"), h.text(h.log("old-resumed")))
        XCTAssertEqual(h.hash("old-resumed"), h.hash("openblas"))
    }
}
