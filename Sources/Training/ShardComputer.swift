import BiLSTM
import Foundation
import Numerics

/// What one worker (or the local trainer) computes for one shard: the gradient of the summed
/// NLL, its loss sum and frame count. A pure function of (weights, shard, step, seed).
public final class ShardComputer {
    public let engine: Engine
    public let seed: UInt64

    public init(model: ModelConfig, seed: UInt64, classWeights: [Float]? = nil) {
        engine = Engine(model, classWeights: classWeights)
        self.seed = seed
    }

    public func compute(params: FloatBuffer, examples: [Example], step: Int, into grads: FloatBuffer) -> BatchResult {
        let batch = PackedBatch(examples, inputSize: engine.config.inputSize)
        let key = engine.config.dropout > 0 ? Dropout.Key(seed: seed, step: step) : nil
        return engine.forwardBackward(params: params, grads: grads, batch: batch, dropout: key)
    }
}

func optimizerStateCopies(_ kind: OptimizerKind) -> Int { kind == .adam ? 2 : 1 }

/// Computes several shards at once, one `ShardComputer` (engine and buffers) per thread. BLAS
/// stays single-threaded in each, and each shard's gradient is a pure function of its inputs, so
/// the bits never depend on the thread count: only how many shards run at a time does
/// (DESIGN.md §3.5: never split a dot product's order).
public final class ShardComputerPool: @unchecked Sendable {
    public let count: Int
    private var free: [ShardComputer]
    private let lock = NSLock()
    private let available: DispatchSemaphore
    private let team: SpinningTeam

    public init(model: ModelConfig, seed: UInt64, count: Int, classWeights: [Float]? = nil) {
        self.count = max(1, count)
        team = SpinningTeam(helpers: self.count - 1)
        free = (0..<self.count).map { _ in ShardComputer(model: model, seed: seed, classWeights: classWeights) }
        available = DispatchSemaphore(value: self.count)
    }

    /// Sizes every computer's scratch for shards of up to `rows` packed rows (frames).
    public func reserve(rows: Int) {
        lock.withLock { for c in free { c.engine.reserve(rows: rows) } }
    }

    /// Runs `body` with a computer of its own, waiting for one to be free.
    public func with<R>(_ body: (ShardComputer) -> R) -> R {
        available.wait()
        let c = lock.withLock { free.removeLast() }
        defer { lock.withLock { free.append(c) }; available.signal() }
        return body(c)
    }

    /// Gradient buffers by shard index, reused from step to step while nobody else holds them
    /// (fresh 2 MiB buffers cost page faults on every step).
    private var gradients: [FloatBuffer] = []

    /// Every shard of a step, `count` at a time; results in shard order.
    public func computeAll(params: FloatBuffer, shards: [[Example]], step: Int, gradientCount: Int)
        -> [(grad: FloatBuffer, result: BatchResult, seconds: Double)] {
        var out = [(grad: FloatBuffer, result: BatchResult, seconds: Double)?](repeating: nil, count: shards.count)
        let outLock = NSLock()
        for k in 0..<shards.count {
            if k < gradients.count, gradients[k].count == gradientCount, isKnownUniquelyReferenced(&gradients[k]) { continue }
            let g = FloatBuffer(uninitializedCount: gradientCount)
            if k < gradients.count { gradients[k] = g } else { gradients.append(g) }
        }
        let grads = Array(gradients.prefix(shards.count))
        forEach(shards.count) { k in
            let t0 = Date()
            let grad = grads[k]
            let r = self.with { $0.compute(params: params, examples: shards[k], step: step, into: grad) }
            let seconds = Date().timeIntervalSince(t0)
            outLock.withLock { out[k] = (grad, r, seconds) }
        }
        return out.map { $0! }
    }

    /// Runs `body(k)` for k in 0..<n on the team: item k goes to thread k mod threads, a fixed
    /// deal, though any would give the same bits.
    public func forEach(_ n: Int, _ body: @escaping (Int) -> Void) {
        let threads = min(count, n)
        guard threads > 0 else { return }
        team.run(threads) { j in
            for k in stride(from: j, to: n, by: threads) { body(k) }
        }
    }
}

/// The caller plus `helpers` threads of our own that run one job per step together. Between
/// steps a helper busy-waits (yielding its core) for up to `Timing`-like 50 ms before it sleeps:
/// on a VM a core left idle at every step barrier computed the next shard 5–15% slower (README).
final class SpinningTeam: @unchecked Sendable {
    static let spinSeconds = 0.05
    private let condition = NSCondition()
    private var generation = 0
    private var job: ((Int) -> Void)?
    private var width = 0
    private var pending = 0

    init(helpers: Int) {
        for h in 0..<max(helpers, 0) {
            let t = Thread { [self] in helper(index: h + 1) }
            t.name = "lockstep.shard-\(h + 1)"
            t.start()
        }
    }

    /// Runs `body(0)` here and `body(1)`…`body(width - 1)` on the helpers; returns when all are done.
    func run(_ width: Int, _ body: @escaping (Int) -> Void) {
        condition.lock()
        job = body
        self.width = width
        pending = width - 1
        generation += 1
        condition.broadcast()
        condition.unlock()
        body(0)
        condition.lock()
        while pending > 0 { condition.wait() }
        job = nil
        condition.unlock()
    }

    private func helper(index: Int) {
        var seen = 0
        while true {
            // Spin a little for the next step, then sleep until it comes.
            let until = Date().addingTimeInterval(SpinningTeam.spinSeconds)
            while Date() < until {
                condition.lock(); let g = generation; condition.unlock()
                if g != seen { break }
                sched_yield()
            }
            condition.lock()
            while generation == seen { condition.wait() }
            seen = generation
            let body = job, mine = index < width
            condition.unlock()
            if mine, let body { body(index) }
            if mine {
                condition.lock()
                pending -= 1
                if pending == 0 { condition.broadcast() }
                condition.unlock()
            }
        }
    }
}
