import BiLSTM
@testable import Datasets
import FileIO
@testable import Formats
import Foundation
import Numerics
@testable import Training
import XCTest

/// Tier 2 (in-process, files): resume checks what it is given before it changes anything:
/// the best weights' file, the data's identity, the validation set; weights must be finite;
/// counts have ranges.
final class ResumeTrustTests: XCTestCase {
    var dir: String!
    override func setUp() {
        dir = NSTemporaryDirectory() + "lockstep-trust-\(UUID().uuidString)"
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func run(_ d: String) -> RunConfig {
        var r = RunConfig()
        r.synthetic = SyntheticTask(sequences: 48, inputSize: 6, classes: 3, minLength: 2, maxLength: 12)
        r.hidden = 8; r.layers = 1; r.batchSize = 12; r.shardSize = 6; r.steps = 6; r.checkpointDir = d; r.checkpointEvery = 0
        return r
    }

    func train(_ t: Trainer, until: Int) throws {
        let computer = ShardComputer(model: t.model, seed: t.run.seed)
        while t.step < until {
            let parts = try t.shards(forStep: t.step).map { s -> (grad: FloatBuffer, result: BatchResult) in
                let g = FloatBuffer(count: t.layout.count)
                return (g, computer.compute(params: t.params, examples: try s.map { try t.data.example($0) }, step: t.step, into: g))
            }
            _ = try t.apply(parts: parts, seconds: 0)
        }
    }

    func testBestWeightsThatAreGoneDamagedOrAnotherRunsAreRefusedOnResume() throws {
        var r = run(dir); r.validData = "v"
        let data = r.synthetic.generate(seed: 1), valid = r.synthetic.generate(seed: 1, firstId: 1000, count: 12)
        let t = try Trainer(run: r, data: data, validation: valid)
        try train(t, until: 2)
        let computer = ShardComputer(model: t.model, seed: 0)
        let sums = try (0..<t.validationShards.count).map { computer.engine.evaluate(params: t.params, examples: try t.validationShard($0)).sums }
        _ = try t.recordValidation(EvalSums.combine(sums, classes: 3))
        try t.saveCheckpoint()
        let ck = try Checkpoint.load(path: t.checkpointPath)
        XCTAssertNotNil(ck.metadata["valid_best_sha256"], "the checkpoint records the best file")
        XCTAssertNoThrow(try Trainer(run: r, data: data, resumeFrom: ck, validation: valid))
        let best = try Data(contentsOf: URL(fileURLWithPath: t.bestPath))
        // Another valid checkpoint in its place (this one, at step 2 too but not the file written).
        try FileManager.default.removeItem(atPath: t.bestPath)
        try FileManager.default.copyItem(atPath: t.checkpointPath, toPath: t.bestPath)
        XCTAssertThrowsError(try Trainer(run: r, data: data, resumeFrom: ck, validation: valid)) { XCTAssertTrue("\($0)".contains("is not the file this run wrote"), "\($0)") }
        var flipped = [UInt8](best); flipped[flipped.count - 3] ^= 1
        try Data(flipped).write(to: URL(fileURLWithPath: t.bestPath))
        XCTAssertThrowsError(try Trainer(run: r, data: data, resumeFrom: ck, validation: valid)) { XCTAssertTrue("\($0)".contains("is damaged"), "\($0)") }
        try FileManager.default.removeItem(atPath: t.bestPath)
        XCTAssertThrowsError(try Trainer(run: r, data: data, resumeFrom: ck, validation: valid)) { XCTAssertTrue("\($0)".contains("is gone"), "\($0)") }
        // Dropping --valid-data on resume is said, not silently accepted.
        try best.write(to: URL(fileURLWithPath: t.bestPath))
        XCTAssertThrowsError(try Trainer(run: r, data: data, resumeFrom: ck)) { XCTAssertTrue("\($0)".contains("gives no --valid-data"), "\($0)") }
    }

    func testARunOnAnNpzResumesOnItsPackedCopyButAPackedRunOnlyOnItsOwnIdentity() throws {
        let r = run(dir)
        let data = r.synthetic.generate(seed: 1)
        try AtomicFile.write(data.npzBytes(), to: dir + "/d.npz")
        let npz = try Dataset.load(npz: dir + "/d.npz")
        try PackedData.pack(inputs: [dir + "/d.npz"], out: dir + "/p", shardBytes: 1 << 20)
        let packed = try PackedData.open(dir + "/p", classes: nil)
        let t = try Trainer(run: r, data: npz); try train(t, until: 2); try t.saveCheckpoint()
        let onNpz = try Checkpoint.load(path: t.checkpointPath)
        XCTAssertNoThrow(try Trainer(run: r, data: packed, resumeFrom: onNpz), "the copy's content is read and hashed, then accepted")
        let p = try Trainer(run: r, data: packed); try train(p, until: 2); try p.saveCheckpoint()
        let onPacked = try Checkpoint.load(path: p.checkpointPath)
        XCTAssertEqual(onPacked.metadata["data_hash"], packed.hash)
        XCTAssertThrowsError(try Trainer(run: r, data: npz, resumeFrom: onPacked)) { XCTAssertTrue("\($0)".contains("identity"), "\($0)") }
        XCTAssertNoThrow(try Trainer(run: r, data: try PackedData.open(dir + "/p", classes: nil), resumeFrom: onPacked))
    }

    func testNonFiniteWeightsAreRefusedNamingTheTensor() throws {
        let r = run(dir)
        let t = try Trainer(run: r, data: r.synthetic.generate(seed: 1))
        let name = t.layout.tensors[1]
        t.params.ptr[name.offset + 2] = .infinity
        try t.saveCheckpoint()
        XCTAssertThrowsError(try Checkpoint.load(path: t.checkpointPath)) { e in
            XCTAssertTrue("\(e)".contains("tensor '\(name.name)' holds inf at element 2"), "\(e)")
        }
    }

    func testCountsOutOfRangeAreRefusedBeforeAnyWork() {
        var r = run(dir); r.steps = nil; r.epochs = Int.max
        XCTAssertTrue(r.problems().contains { $0.contains("--epochs must be in 1...") }, "\(r.problems())")
        r.epochs = nil; r.steps = Int.max
        XCTAssertTrue(r.problems().contains { $0.contains("--steps must be in 1...") }, "\(r.problems())")
        r.steps = 5; r.checkpointEvery = Int.max; r.patience = Int.max
        XCTAssertEqual(r.problems().filter { $0.contains("at most") }.count, 2, "\(r.problems())")
    }
}
