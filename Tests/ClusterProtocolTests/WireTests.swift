import BiLSTM
@testable import ClusterProtocol
import Foundation
import Numerics
import Training
import XCTest

/// Tier 1: every message round-trips; malformed input is refused with a reason, never a trap.
final class WireTests: XCTestCase {
    let examples = [Example(id: 5, x: [1, 2, 3, 4], y: [0, -1]), Example(id: 9, x: [5, 6], y: [1])]
    var samples: [Message] {
        [.hello(Hello(fingerprint: "ab", blasCore: "Zen", threads: 2, pid: 77, incarnation: 0xfeed_0000_0001)),
         .hello(Hello(fingerprint: "ab", blasCore: "Zen", threads: 2, pid: 77, incarnation: 5, sharedMemory: true)),
         .hello(Hello(fingerprint: "ab", blasCore: "Zen", threads: 1, pid: 78, dataHash: String(repeating: "f0", count: 32))),
         .welcome(Welcome(runId: 4, model: ModelConfig(inputSize: 2, hidden: 4, layers: 1, classes: 3), seed: 1, dataHash: String(repeating: "0e", count: 32))),
         .welcome(Welcome(runId: 3, model: ModelConfig(inputSize: 2, hidden: 4, layers: 2, classes: 3, arch: .split, dropout: 0.25), seed: 11)),
         .welcome(Welcome(runId: 3, model: ModelConfig(inputSize: 2, hidden: 4, layers: 2, classes: 3), seed: 11,
                          sharedWeights: "/proc/12/fd/7", sharedToken: 0xdead_beef_0000_0001, maxShards: 4)),
         .refuse("no"), .refuse("numerics differ", numerics: "mode=openblas;blas=Zen"),
         .work(Work(step: 4, shard: 1, sequenceIds: [5, 9], weights: FloatBuffer([1, 2, 3]), sequences: examples)),
         .work(Work(step: 4, shard: 2, sequenceIds: [5], weights: nil, sequences: [])),
         .work(Work(step: 4, shard: 3, sequenceIds: [9], weights: nil, weightsShared: true, sequences: examples)),
         .work(Work(step: (1 << 40) + 4, shard: 0, sequenceIds: [9], weights: nil, weightsShared: true, sequences: [], evaluate: true, weightsStep: 4)),
         .work(Work(step: 7, shard: 1, sequenceIds: [3, 8], weights: nil, sequences: [], prefetchIds: [4, 11, 1 << 33])),
         .work(Work(step: 7, shard: 5, sequenceIds: [3], weights: nil, sequences: [], block: 4..<6, shardCount: 7)),
         .welcome(Welcome(runId: 4, model: ModelConfig(inputSize: 2, hidden: 4, layers: 1, classes: 3), seed: 1, dataHash: "ab", dataCount: 1 << 33)),
         .result(ShardResult(step: (1 << 40) + 4, shard: 0, lossSum: 2.5, frames: 3, grad: FloatBuffer(count: 0), computeSeconds: 0.5,
                             counts: [2, 0, 2, 4, 1])),
         .result(ShardResult(step: 4, shard: 1, lossSum: 2.5, frames: 3, grad: FloatBuffer([0.5, -1, 2]))),
         .welcome(Welcome(runId: 5, model: ModelConfig(inputSize: 2, hidden: 4, layers: 1, classes: 3), seed: 1, classWeights: [0.5, 0, 3.25])),
         .result(ShardResult(step: 4, shard: 1, lossSum: 2.5, frames: 3, weightSum: 4.75, grad: FloatBuffer([0.5, -1, 2]), span: 2)),
         .result(ShardResult(step: 4, shard: 1, lossSum: 2.5, frames: 3, grad: FloatBuffer([0.5, -1, 2]), computeSeconds: 0.1875)),
         .result(ShardResult(step: 4, shard: 3, lossSum: 2.5, frames: 3, grad: FloatBuffer(count: 0), computeSeconds: 0.5,
                             sharedGradient: SharedGradient(path: "/proc/9/fd/4", token: 77))),
         .heartbeat, .stop, .reset]
    }

    func testEveryMessageRoundTrips() throws {
        for m in samples { XCTAssertEqual(try Message.decode(m.encode(), limits: WireLimits()), m, m.typeName) }
    }

    func testMalformedMessagesAreRefusedWithAReason() {
        var limits = WireLimits()
        limits.parameterCount = 3
        limits.inputSize = 2
        let good = Message.result(ShardResult(step: 1, shard: 0, lossSum: 1, frames: 1, grad: FloatBuffer([1, 2, 3]))).encode()
        var badMagic = good; badMagic[0][0] = 0x58
        var badVersion = good; badVersion[0][4] = 9
        var badType = good; badType[0][6] = 99
        let truncated = [Array(good[0].prefix(10)), good[1]]
        let wrongSize = Message.result(ShardResult(step: 1, shard: 0, lossSum: 1, frames: 1, grad: FloatBuffer([1, 2]))).encode()
        let wrongWidth = Message.work(Work(step: 1, shard: 0, sequenceIds: [1], weights: nil,
                                           sequences: [Example(id: 1, x: [1, 2, 3], y: [0])])).encode()
        let slow = Message.result(ShardResult(step: 1, shard: 0, lossSum: 1, frames: 1, grad: FloatBuffer([1, 2, 3]), computeSeconds: 1)).encode()
        let at = slow[0].count - 9  // the compute time, before the gradient's carriage byte
        var nanTime = slow; nanTime[0].replaceSubrange(at..<(at + 8), with: withUnsafeBytes(of: Double.nan.bitPattern.littleEndian, Array.init))
        var badCarriage = Message.work(Work(step: 1, shard: 0, sequenceIds: [1], weights: nil, sequences: [])).encode()
        // The carriage byte comes before the evaluate flag, the weights' step, the block, the
        // round's shard count and the read-ahead count.
        badCarriage[0][badCarriage[0].count - 30] = 3
        var badEvaluate = badCarriage; badEvaluate[0][badEvaluate[0].count - 30] = 0; badEvaluate[0][badEvaluate[0].count - 29] = 7
        var badHints = badEvaluate; badHints[0][badHints[0].count - 29] = 0
        // Shard 0 said to be in the block of 2 that starts at shard 1 (start, span, shard count, then no read-ahead).
        func block(_ start: UInt8, _ span: UInt8, of count: UInt8) -> [[UInt8]] {
            var b = badHints
            b[0].replaceSubrange((b[0].count - 20)..., with: [start, 0, 0, 0, 0, 0, 0, 0] + [span, 0, 0, 0] + [count, 0, 0, 0] + [0, 0, 0, 0])
            return b
        }
        let badBlock = block(1, 2, of: 4)
        // Shards 0..<3 of a round of 4 are not a node of its tree; nor is a block wider than the round.
        let notSubtree = block(0, 3, of: 4), pastRound = block(0, 2, of: 1)
        badHints[0].replaceSubrange((badHints[0].count - 4)..., with: [0xFF, 0xFF, 0xFF, 0x7F])
        var badGradient = slow; badGradient[0][badGradient[0].count - 1] = 3
        var noSpan = slow; noSpan[0].replaceSubrange((at - 4)..<at, with: [0, 0, 0, 0])  // the span, before the compute time
        // A validation result whose counts frame cannot be (correct, then pairs).
        var badCounts = slow; badCounts[0][badCounts[0].count - 1] = 2; badCounts[1] = [UInt8](repeating: 0, count: 16)
        var negativeTime = slow; negativeTime[0].replaceSubrange(at..<(at + 8), with: withUnsafeBytes(of: (-1.0).bitPattern.littleEndian, Array.init))
        let cases: [(String, [[UInt8]], String)] = [
            ("nan time", nanTime, "compute time nan"), ("negative time", negativeTime, "compute time -1.0"),
            ("empty", [], "empty"), ("magic", badMagic, "magic"), ("version", badVersion, "protocol version 9"),
            ("type", badType, "unknown message type"), ("truncated", truncated, "truncated"),
            ("params", wrongSize, "the model has 3"), ("d_in", wrongWidth, "d_in 3"),
            ("frames", good + [[], [], []], "frames"), ("carriage", badCarriage, "weights carriage 3"), ("evaluate", badEvaluate, "evaluate flag 7"),
            ("read-ahead", badHints, "2147483647 sequences to read ahead"),
            ("block", badBlock, "work for shard 0 in a block of 2 from 1"),
            ("not a subtree", notSubtree, "shards 0..<3 of a round of 4: not a block of its tree"),
            ("past the round", pastRound, "shards 0..<2 of a round of 1: not a block"),
            ("gradient carriage", badGradient, "gradient carriage 3"), ("span", noSpan, "result over 0 shards"),
            ("counts", badCounts, "validation counts frame of 16 bytes"), ("missing frame", [good[0]], "frames"),
        ]
        for (name, frames, expect) in cases {
            XCTAssertThrowsError(try Message.decode(frames, limits: limits), name) {
                XCTAssertTrue("\($0)".contains(expect), "\(name): \($0)")
            }
        }
    }

    /// A worker trusts no coordinator's bytes: a sequence with a label the model does not have,
    /// or a non-finite input, is refused before the engine sees it.
    func testWorkWithLabelsOutsideTheModelOrNonFiniteInputsIsRefused() {
        var limits = WireLimits()
        limits.inputSize = 2; limits.classes = 3
        func work(_ e: Example) -> [[UInt8]] {
            Message.work(Work(step: 1, shard: 0, sequenceIds: [e.id], weights: nil, sequences: [e])).encode()
        }
        XCTAssertNoThrow(try Message.decode(work(Example(id: 1, x: [1, 2, 3, 4], y: [2, -1])), limits: limits))
        for (e, words) in [(Example(id: 1, x: [1, 2, 3, 4], y: [3, 0]), "label 3"), (Example(id: 1, x: [1, 2], y: [1_000_000_000]), "label 1000000000"),
                           (Example(id: 1, x: [1, 2], y: [-5]), "label -5"), (Example(id: 1, x: [1, .nan], y: [0]), "non-finite"),
                           (Example(id: 1, x: [.infinity, 1], y: [0]), "non-finite")] {
            XCTAssertThrowsError(try Message.decode(work(e), limits: limits)) { XCTAssertTrue("\($0)".contains(words), "\($0)") }
        }
    }

    /// `--class-weights` cross the wire in the welcome: one finite weight >= 0 per class, or none.
    func testClassWeightsThatCannotWeightTheModelAreRefused() {
        let model = ModelConfig(inputSize: 2, hidden: 4, layers: 1, classes: 3)
        for (weights, words) in [([Float](arrayLiteral: 1, 2), "2 class weights for 3 classes"), ([1, -1, 2], "class 1 has weight -1.0"),
                                 ([1, .nan, 2], "class 1 has weight nan"), ([0, 0, 0], "every weight is 0")] {
            let m = Message.welcome(Welcome(runId: 1, model: model, seed: 1, classWeights: weights)).encode()
            XCTAssertThrowsError(try Message.decode(m, limits: WireLimits())) { XCTAssertTrue("\($0)".contains(words), "\($0)") }
        }
        // A result's weight sum is a sum of weights >= 0.
        var m = Message.result(ShardResult(step: 1, shard: 0, lossSum: 1, frames: 1, weightSum: -2, grad: FloatBuffer([1]))).encode()
        XCTAssertThrowsError(try Message.decode(m, limits: WireLimits())) { XCTAssertTrue("\($0)".contains("weight sum -2.0"), "\($0)") }
        m = Message.result(ShardResult(step: 1, shard: 0, lossSum: 1, frames: 1, weightSum: .infinity, grad: FloatBuffer([1]))).encode()
        XCTAssertThrowsError(try Message.decode(m, limits: WireLimits())) { XCTAssertTrue("\($0)".contains("weight sum inf"), "\($0)") }
    }

    func testRandomCorruptionNeverCrashesTheDecoder() {
        var limits = WireLimits()
        limits.parameterCount = 3
        var decoded = 0, refused = 0
        for (i, m) in samples.enumerated() {
            let frames = m.encode()
            for k in 0..<400 {
                var f = frames
                let r = Philox.block(key: 42, counter: SIMD4(UInt32(i), UInt32(k), 0, 0))
                let which = Int(r[0]) % f.count
                if f[which].isEmpty { continue }
                switch r[1] % 3 {
                case 0: f[which][Int(r[2]) % f[which].count] ^= UInt8(truncatingIfNeeded: r[3] | 1)
                case 1: f[which] = Array(f[which].prefix(Int(r[2]) % f[which].count))
                default: f[which] += (0..<Int(r[2] % 64)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
                }
                if (try? Message.decode(f, limits: limits)) != nil { decoded += 1 } else { refused += 1 }
            }
        }
        XCTAssertGreaterThan(refused, 1000)
        XCTAssertGreaterThan(decoded, 0, "flipped payload bytes are still well-formed messages")
    }
}
