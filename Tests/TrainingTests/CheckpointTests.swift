import BiLSTM
import Foundation
import Numerics
@testable import Training
import XCTest

/// Tier 2: checkpoints are PyTorch-loadable, atomic, and resume to the same bits.
final class CheckpointTests: XCTestCase {
    var dir: String!

    override func setUp() {
        dir = NSTemporaryDirectory() + "lockstep-ck-\(UUID().uuidString)"
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func smallRun(steps: Int, dir: String) -> RunConfig {
        var r = RunConfig()
        r.synthetic = SyntheticTask(sequences: 48, inputSize: 6, classes: 3, minLength: 2, maxLength: 12)
        r.hidden = 8; r.layers = 2; r.dropout = 0.2; r.batchSize = 12; r.shardSize = 5
        r.steps = steps; r.checkpointDir = dir; r.checkpointEvery = 0; r.maxNorm = 0.5
        return r
    }

    func train(_ t: Trainer, until: Int) {
        let computer = ShardComputer(model: t.model, seed: t.run.seed)
        while t.step < until {
            let parts = t.shards(forStep: t.step).map { s -> (grad: FloatBuffer, result: BatchResult) in
                let g = FloatBuffer(count: t.layout.count)
                return (g, computer.compute(params: t.params, examples: s.map { t.data.examples[$0] }, step: t.step, into: g))
            }
            _ = t.apply(parts: parts, seconds: 0)
        }
    }

    func testSafetensorsLayoutIsWhatPyTorchReads() throws {
        let r = smallRun(steps: 2, dir: dir)
        let t = try Trainer(run: r, data: r.synthetic.generate(seed: r.seed))
        try t.saveCheckpoint()
        let raw = [UInt8](try Data(contentsOf: URL(fileURLWithPath: t.checkpointPath)))
        var n = 0
        for k in 0..<8 { n |= Int(raw[k]) << (8 * k) }
        XCTAssertEqual((8 + n) % 8, 0, "data starts 8-byte aligned")
        let header = try JSONSerialization.jsonObject(with: Data(raw[8..<(8 + n)])) as! [String: Any]
        let w = header["layer1.weight_ih_l0"] as! [String: Any]
        XCTAssertEqual(w["dtype"] as? String, "F32")
        XCTAssertEqual(w["shape"] as? [Int], [32, 6])
        XCTAssertEqual((header["layer2.0.weight"] as! [String: Any])["shape"] as? [Int], [3, 16])
        XCTAssertNotNil(header["layer1.bias_hh_l1_reverse"])
        XCTAssertNotNil(header["optimizer.exp_avg.layer1.weight_hh_l0"])
        // Little-endian float32 at the declared offsets.
        let offs = w["data_offsets"] as! [Int]
        let first = raw[(8 + n + offs[0])..<(8 + n + offs[0] + 4)]
        let v = Float(bitPattern: UInt32(first[first.startIndex]) | UInt32(first[first.startIndex + 1]) << 8
                        | UInt32(first[first.startIndex + 2]) << 16 | UInt32(first[first.startIndex + 3]) << 24)
        XCTAssertEqual(v, t.params[t.layout.tensor(named: "layer1.weight_ih_l0")!.offset])
        let meta = header["__metadata__"] as! [String: String]
        XCTAssertEqual(meta["format"], "lockstep-1")
        XCTAssertEqual(meta["weights_sha256"], t.weightsHash)
    }

    func testSameSeedTwiceSameWeightsAndResumeIsBitIdentical() throws {
        let r = smallRun(steps: 9, dir: dir)
        let data = r.synthetic.generate(seed: r.seed)
        let a = try Trainer(run: r, data: data); train(a, until: 9)
        let b = try Trainer(run: r, data: data); train(b, until: 9)
        XCTAssertEqual(a.weightsHash, b.weightsHash)
        // Stop at step 4, checkpoint, resume in a fresh trainer.
        let c = try Trainer(run: r, data: data); train(c, until: 4)
        try c.saveCheckpoint()
        let d = try Trainer(run: r, data: data, resumeFrom: try Checkpoint.load(path: c.checkpointPath))
        XCTAssertEqual(d.step, 4)
        train(d, until: 9)
        XCTAssertEqual(d.weightsHash, a.weightsHash, "resume must reach the same bits")
        var other = r; other.seed = 2
        let e = try Trainer(run: other, data: data); train(e, until: 9)
        XCTAssertNotEqual(e.weightsHash, a.weightsHash)
    }

    func testShardSizeIsPartOfTheMathButNothingElseIs() throws {
        // The schedule never depends on who computes: same batches for any call order.
        let s = Schedule(lengths: (0..<100).map { 1 + $0 % 17 }, batchSize: 10, shardSize: 3, seed: 4)
        XCTAssertEqual(s.batches(epoch: 2), s.batches(epoch: 2))
        XCTAssertNotEqual(s.batches(epoch: 2), s.batches(epoch: 3))
        let all = s.batches(epoch: 0)
        XCTAssertEqual(all.flatMap { $0 }.sorted(), Array(0..<100), "an epoch covers every sequence once")
        for b in all { XCTAssertEqual(b, b.sorted { s.lengths[$0] != s.lengths[$1] ? s.lengths[$0] > s.lengths[$1] : $0 < $1 }) }
        XCTAssertEqual(s.shards(of: Array(0..<10)).map(\.count), [3, 3, 3, 1])
    }

    func testResumeRefusesAnotherConfigOrOtherData() throws {
        let r = smallRun(steps: 3, dir: dir)
        let data = r.synthetic.generate(seed: r.seed)
        let t = try Trainer(run: r, data: data); train(t, until: 2)
        try t.saveCheckpoint()
        let ck = try Checkpoint.load(path: t.checkpointPath)
        var changed = r; changed.optimizer.lr = 0.5
        XCTAssertThrowsError(try Trainer(run: changed, data: data, resumeFrom: ck)) { XCTAssertTrue("\($0)".contains("different config")) }
        let otherData = r.synthetic.generate(seed: 99)
        XCTAssertThrowsError(try Trainer(run: r, data: otherData, resumeFrom: ck)) { XCTAssertTrue("\($0)".contains("different data")) }
        var longer = r; longer.steps = 10
        XCTAssertNoThrow(try Trainer(run: longer, data: data, resumeFrom: ck), "more steps is not another config")
    }

    func testFailedWriteLeavesThePreviousCheckpoint() throws {
        let path = dir + "/ck.safetensors"
        var st = Safetensors()
        st.add("a", .init(floats: [1, 2], shape: [2]))
        try st.write(atomically: path)
        let before = try Data(contentsOf: URL(fileURLWithPath: path))
        // A directory where the temporary file would go makes the write fail, even for root.
        try FileManager.default.createDirectory(atPath: dir + "/.ck.safetensors.tmp-\(getpid())", withIntermediateDirectories: false)
        st.add("b", .init(floats: [3], shape: [1]))
        XCTAssertThrowsError(try st.write(atomically: path)) { XCTAssertTrue("\($0)".contains("HINT"), "\($0)") }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)), before, "the previous file is untouched")
    }

    func testMissingDirectoryIsAClearError() {
        var st = Safetensors()
        st.add("a", .init(floats: [1], shape: [1]))
        XCTAssertThrowsError(try st.write(atomically: dir + "/no/such/dir/ck.safetensors")) {
            XCTAssertTrue("\($0)".contains("cannot write"), "\($0)")
            XCTAssertTrue("\($0)".contains("HINT"))
        }
    }

    func testConfigValidationNamesEachProblem() {
        var r = RunConfig()
        r.batchSize = 4; r.shardSize = 8; r.dropout = 1.5; r.optimizer.lr = -1; r.steps = 0
        let p = r.problems().joined(separator: "\n")
        for s in ["--shard-size", "dropout", "--lr", "--steps"] { XCTAssertTrue(p.contains(s), "missing \(s) in \(p)") }
        XCTAssertTrue(RunConfig().problems().isEmpty)
    }
}
