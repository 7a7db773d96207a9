import Foundation
import BiLSTM
@testable import Cluster
import Numerics
import XCTest

/// Tier 1: every message round-trips; malformed input is refused with a reason, never a trap.
final class WireTests: XCTestCase {
    let examples = [Example(id: 5, x: [1, 2, 3, 4], y: [0, -1]), Example(id: 9, x: [5, 6], y: [1])]
    var samples: [Message] {
        [.hello(Hello(fingerprint: "ab", blasCore: "Zen", threads: 2, pid: 77)),
         .welcome(Welcome(runId: 3, model: ModelConfig(inputSize: 2, hidden: 4, layers: 2, classes: 3, arch: .split, dropout: 0.25), seed: 11)),
         .refuse("no"),
         .work(Work(step: 4, shard: 1, sequenceIds: [5, 9], weights: FloatBuffer([1, 2, 3]), sequences: examples)),
         .work(Work(step: 4, shard: 2, sequenceIds: [5], weights: nil, sequences: [])),
         .result(ShardResult(step: 4, shard: 1, lossSum: 2.5, frames: 3, grad: FloatBuffer([0.5, -1, 2]))),
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
        let cases: [(String, [[UInt8]], String)] = [
            ("empty", [], "empty"), ("magic", badMagic, "magic"), ("version", badVersion, "protocol version 9"),
            ("type", badType, "unknown message type"), ("truncated", truncated, "truncated"),
            ("params", wrongSize, "the model has 3"), ("d_in", wrongWidth, "d_in 3"),
            ("frames", good + [[], [], []], "frames"), ("missing frame", [good[0]], "frames"),
        ]
        for (name, frames, expect) in cases {
            XCTAssertThrowsError(try Message.decode(frames, limits: limits), name) {
                XCTAssertTrue("\($0)".contains(expect), "\(name): \($0)")
            }
        }
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

final class CurveKeyFileTests: XCTestCase {
    func testAllowListAcceptsKeysWithHashesPubLinesAndComments() throws {
        let path = NSTemporaryDirectory() + "allow-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: path) }
        var withHash: [String] = []
        while withHash.count < 2 {
            let k = CurveKeypair.generate().publicKey
            if k.contains("#") { withHash.append(k) }
        }
        let (a, b) = (withHash[0], withHash[1])
        try "# workers\n\n\(a)\n\(b)   # trailing words are ignored\npublic-key = \(b)\n#\n".write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertEqual(try CurveKeypair.allowList(path), [a, b, b])
        try "not-a-key\n".write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try CurveKeypair.allowList(path)) { XCTAssertTrue("\($0)".contains(":1:") && "\($0)".contains("HINT"), "\($0)") }
    }
}

/// The fuzzer's regression corpus (scripts/fuzz adds any crasher it finds): every input must
/// decode or be refused, never trap.
final class FuzzCorpusTests: XCTestCase {
    func testEveryCorpusInputIsDecodedOrRefused() throws {
        let dir = try XCTUnwrap(Bundle.module.path(forResource: "FuzzCorpus", ofType: nil))
        let files = try FileManager.default.contentsOfDirectory(atPath: dir)
        XCTAssertGreaterThanOrEqual(files.count, 9, "the seeds of every message type are there")
        var decoded = 0
        for f in files {
            let d = try Data(contentsOf: URL(fileURLWithPath: dir + "/" + f))
            d.withUnsafeBytes { FuzzInput.run($0) }
            if d.withUnsafeBytes({ (try? Message.decode(FuzzInput.frames($0), limits: WireLimits())) != nil }) { decoded += 1 }
        }
        XCTAssertGreaterThanOrEqual(decoded, 9, "the seeds are valid messages")
    }
}
