import BiLSTM
import ClusterProtocol
import Foundation
import Numerics

/// Fuzz input format: frames as `[u32 little-endian length][bytes]`, repeated (at most 8).
/// The decoder must refuse or accept every input without trapping.
public enum FuzzInput {
    public static func frames(_ data: UnsafeRawBufferPointer) -> [[UInt8]] {
        var out: [[UInt8]] = []
        var at = 0
        while at + 4 <= data.count && out.count < 8 {
            let n = Int(data[at]) | Int(data[at + 1]) << 8 | Int(data[at + 2]) << 16 | Int(data[at + 3]) << 24
            at += 4
            let len = min(n, data.count - at)
            out.append(Array(data[at..<(at + len)]))
            at += len
        }
        return out
    }

    public static func encode(_ frames: [[UInt8]]) -> [UInt8] {
        var out: [UInt8] = []
        for f in frames {
            let n = UInt32(f.count)
            out += [UInt8(n & 0xff), UInt8((n >> 8) & 0xff), UInt8((n >> 16) & 0xff), UInt8(n >> 24)] + f
        }
        return out
    }

    public static func run(_ data: UnsafeRawBufferPointer) {
        let frames = frames(data)
        var limits = WireLimits()
        _ = try? Message.decode(frames, limits: limits)
        limits.parameterCount = 3
        limits.inputSize = 2
        _ = try? Message.decode(frames, limits: limits)
    }

    /// Real messages of every type: the seed corpus.
    public static var seeds: [(String, [[UInt8]])] {
        let ex = [Example(id: 5, x: [1, 2, 3, 4], y: [0, -1]), Example(id: 9, x: [5, 6], y: [1])]
        let model = ModelConfig(inputSize: 2, hidden: 4, layers: 2, classes: 3, arch: .split, dropout: 0.25)
        return [
            ("hello", Message.hello(Hello(fingerprint: "ab", blasCore: "Zen", threads: 1, pid: 7, incarnation: 99, sharedMemory: true)).encode()),
            ("welcome", Message.welcome(Welcome(runId: 3, model: model, seed: 11, sharedWeights: "/proc/1/fd/3", sharedToken: 5, maxShards: 2,
                                                 classWeights: [0.5, 2, 1])).encode()),
            ("refuse", Message.refuse("no", numerics: "mode=openblas;blas=Zen").encode()),
            ("work-weights", Message.work(Work(step: 4, shard: 1, sequenceIds: [5, 9], weights: FloatBuffer([1, 2, 3]), sequences: ex)).encode()),
            ("work-shared", Message.work(Work(step: 4, shard: 0, sequenceIds: [9], weights: nil, weightsShared: true, sequences: [])).encode()),
            ("work", Message.work(Work(step: 4, shard: 2, sequenceIds: [5], weights: nil, sequences: [], prefetchIds: [6, 7], block: 2..<4)).encode()),
            ("result", Message.result(ShardResult(step: 4, shard: 1, lossSum: 2.5, frames: 3, weightSum: 4.5, grad: FloatBuffer([0.5, -1, 2]))).encode()),
            ("result-shared", Message.result(ShardResult(step: 4, shard: 1, lossSum: 2.5, frames: 3, grad: FloatBuffer(count: 0),
                                                         sharedGradient: SharedGradient(path: "/proc/1/fd/4", token: 6))).encode()),
            ("work-validation", Message.work(Work(step: (1 << 40) + 4, shard: 0, sequenceIds: [9], weights: nil, weightsShared: true,
                                                  sequences: [], evaluate: true, weightsStep: 4)).encode()),
            ("result-validation", Message.result(ShardResult(step: (1 << 40) + 4, shard: 0, lossSum: 2.5, frames: 3, grad: FloatBuffer(count: 0),
                                                             counts: [2, 0, 2, 4, 1])).encode()),
            ("heartbeat", Message.heartbeat.encode()), ("stop", Message.stop.encode()), ("reset", Message.reset.encode()),
        ]
    }
}

