import BiLSTM
import Datasets
import Foundation
import Numerics
@testable import Training
import XCTest

/// Tier 1–2: `--class-weights` — parsing, `auto`, the config identity and config.toml, and a
/// weighted run's bits at any thread count and through the block (pre-added subtree) path.
final class ClassWeightsTests: XCTestCase {
    var dir: String!

    override func setUp() {
        dir = NSTemporaryDirectory() + "lockstep-cw-\(UUID().uuidString)"
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func smallRun(_ weights: [Float]? = nil, auto: Bool = false) -> RunConfig {
        var r = RunConfig()
        r.synthetic = SyntheticTask(sequences: 48, inputSize: 6, classes: 3, minLength: 2, maxLength: 12)
        r.hidden = 8; r.layers = 2; r.dropout = 0.2; r.batchSize = 12; r.shardSize = 3
        r.steps = 4; r.checkpointDir = dir; r.checkpointEvery = 0; r.maxNorm = 0.5
        r.classWeights = weights; r.autoClassWeights = auto
        return r
    }

    /// Trains with `threads` computers, or with shards pre-added in blocks of `span` (a worker's subtree).
    func train(_ r: RunConfig, threads: Int = 1, span: Int = 1) throws -> Trainer {
        let data = r.synthetic.generate(seed: r.seed)
        let t = try Trainer(run: r, data: data)
        let pool = ShardComputerPool(model: t.model, seed: r.seed, count: threads, classWeights: t.run.classWeights)
        while !t.done {
            let shards = t.shards(forStep: t.step).map { $0.map { data.examples[$0] } }
            let out = pool.computeAll(params: t.params, shards: shards, step: t.step, gradientCount: t.layout.count)
            if span == 1 {
                _ = try t.apply(parts: out.map { ($0.grad, $0.result) }, seconds: 0)
                continue
            }
            // Blocks of `span` shards summed in their subtree's order, as WorkerClient.collectBlock does.
            var parts: [(grad: FloatBuffer, result: BatchResult)] = [], spans: [Int] = []
            var k = 0
            while k < out.count {
                let n = TreeSum.isSubtree(k, k + span, of: out.count) ? span : 1
                let block = Array(out[k..<(k + n)])
                let result = BatchResult(lossSum: TreeSum.reduce(block.map(\.result.lossSum)), frames: block.reduce(0) { $0 + $1.result.frames },
                                         weightSum: TreeSum.reduce(block.map(\.result.weightSum)))
                parts.append((n == 1 ? block[0].grad : TreeSum.reduce(block.map(\.grad)), result))
                spans.append(n)
                k += n
            }
            _ = try t.apply(parts: parts, spans: spans, seconds: 0)
        }
        return t
    }

    func testParsing() {
        XCTAssertEqual(ClassWeights.parse("auto")?.auto, true)
        XCTAssertEqual(ClassWeights.parse(" 1, 2.5,0 ")?.weights, [1, 2.5, 0])
        XCTAssertNil(ClassWeights.parse("1,,2"))
        XCTAssertNil(ClassWeights.parse("balanced"))
        XCTAssertNil(ClassWeights.parse(""))
        XCTAssertEqual(ClassWeights.problem([1, 2], classes: 3), "2 weights for 3 classes (give one per class, in class order)")
        XCTAssertNotNil(ClassWeights.problem([1, .infinity, 2], classes: 3))
        XCTAssertNil(ClassWeights.problem([0, 0, 2], classes: 3))
    }

    /// `auto` is sklearn's "balanced": frames / (classes · frames of the class).
    func testAutoIsBalanced() {
        XCTAssertEqual(ClassWeights.balanced(counts: [6, 2, 4]), [Float(12.0 / 18), 2, 1])
        XCTAssertEqual(ClassWeights.balanced(counts: [5, 0, 5]), [Float(10.0 / 15), 1, Float(10.0 / 15)])
    }

    /// Weights are part of the config identity (a run without them keeps its hash), named when a
    /// resume differs, and config.toml writes `auto` out as the weights it found, bit for bit.
    func testWeightsArePartOfTheIdentityAndConfigTomlKeepsTheirBits() throws {
        let plain = RunConfig()
        XCTAssertFalse(plain.identity.contains("class-weights"))
        var weighted = plain
        weighted.classWeights = [0.1, 1.0 / 3, 7]
        XCTAssertNotEqual(weighted.hash, plain.hash)
        XCTAssertEqual(plain.differences(fromIdentity: weighted.identity), ["--class-weights: the checkpoint has 0.1,0.33333334,7.0, this run (none)"])
        let t = try train(smallRun(auto: true))
        let found = try XCTUnwrap(t.run.classWeights)
        XCTAssertEqual(found.count, 3)
        let path = dir + "/config.toml"
        try Data(t.run.toml(mode: ["local = true"]).utf8).write(to: URL(fileURLWithPath: path))
        var back = RunConfig()
        try TOMLConfig.apply(path: path, to: &back)
        XCTAssertEqual(back.classWeights?.map(\.bitPattern), found.map(\.bitPattern))
        XCTAssertEqual(back.hash, t.run.hash)
        XCTAssertEqual(try train(smallRun(found)).weightsHash, t.weightsHash, "auto is the weights it found")
    }

    /// Weights of 1 are the plain mean to the bit; other weights change the math but not its
    /// determinism: 1, 2 or 3 threads and pre-added blocks give the same bits.
    func testAWeightedRunHasOneHashAtAnyThreadCountAndBlockSize() throws {
        XCTAssertEqual(try train(smallRun([1, 1, 1])).weightsHash, try train(smallRun()).weightsHash)
        let w: [Float] = [0.3, 2.5, 1.75]
        let reference = try train(smallRun(w)).weightsHash
        XCTAssertNotEqual(reference, try train(smallRun()).weightsHash)
        XCTAssertEqual(try train(smallRun(w), threads: 2).weightsHash, reference)
        XCTAssertEqual(try train(smallRun(w), threads: 3).weightsHash, reference)
        XCTAssertEqual(try train(smallRun(w), span: 2).weightsHash, reference)
        XCTAssertEqual(try train(smallRun(w), span: 4).weightsHash, reference)
    }

    func testWeightsThatDoNotFitTheDataAreRefusedBeforeTraining() {
        XCTAssertThrowsError(try train(smallRun([1, 2]))) {
            XCTAssertTrue("\($0)".contains("--class-weights: 2 weights for 3 classes"), "\($0)")
            XCTAssertTrue("\($0)".contains("HINT"), "\($0)")
        }
    }
}
