import BiLSTM
import Foundation
import Numerics

/// What one worker (or the local trainer) computes for one shard: the gradient of the summed
/// NLL, its loss sum and frame count. A pure function of (weights, shard, step, seed).
public final class ShardComputer {
    public let engine: Engine
    public let seed: UInt64

    public init(model: ModelConfig, seed: UInt64) {
        engine = Engine(model)
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

    public init(model: ModelConfig, seed: UInt64, count: Int) {
        self.count = max(1, count)
        team = SpinningTeam(helpers: self.count - 1)
        free = (0..<self.count).map { _ in ShardComputer(model: model, seed: seed) }
        available = DispatchSemaphore(value: self.count)
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

/// One optimizer step's outcome, as logged to metrics.jsonl.
public struct StepReport: Sendable {
    public var step: Int          // 1-based: the number of steps done after this one
    public var epoch: Int
    public var loss: Double
    public var frames: Int
    /// Frames in the step's largest shard: with `frames / shards` it shows how evenly the step divides.
    public var maxShardFrames: Int = 0
    public var shards: Int = 0
    /// Gradients the reduce added: `shards`, less what workers summed in blocks before sending.
    public var gradients: Int = 0
    public var gradNorm: Float
    public var clipped: Bool
    public var seconds: Double
    public var workersAlive: Int = 0
    public var reissued: Int = 0
    /// Coordinator time for this step: reduce + clip + optimizer step + sending the next step's work.
    public var coordinatorSeconds: Double = 0
    public var bytesSent: Int = 0
    /// Bytes of the messages received during the step (workers' results and heartbeats).
    public var bytesReceived: Int = 0
    /// Workers' compute seconds for the step's shards (cluster mode): the slowest and the mean.
    /// With two workers, slowest − mean is time lost to one core running slower than the other.
    public var shardSecondsMax: Double = 0
    public var shardSecondsMean: Double = 0
    /// Each worker's compute seconds in the step (cluster mode), by the coordinator's name for it.
    public var workerSeconds: [String: Double] = [:]

    /// Sets the slowest and mean shard compute time from each shard's seconds.
    public mutating func setShardSeconds(_ seconds: [Double]) {
        shardSecondsMax = seconds.max() ?? 0
        shardSecondsMean = seconds.reduce(0, +) / Double(max(seconds.count, 1))
    }
    /// Why the update was skipped (`--on-nonfinite skip`), if it was.
    public var skipped: String? = nil
    /// The learning rate this step used.
    public var lr: Float = 0

    /// The step's TensorBoard scalars (the same numbers as its metrics line).
    public var scalars: [(String, Double)] {
        [("train/loss", loss), ("train/grad_norm", Double(gradNorm)), ("train/clipped", clipped ? 1 : 0), ("lr", Double(lr)),
         ("frames_per_s", Double(Int(seconds > 0 ? Double(frames) / seconds : 0))), ("workers", Double(workersAlive)),
         ("shards_reissued", Double(reissued)), ("coordinator_ms", 1000 * coordinatorSeconds)]
    }

    public var json: String {
        get throws {
            let fps = seconds > 0 ? Double(frames) / seconds : 0
            return try MetricsJSON.line([
                "step": .int(step), "epoch": .int(epoch), "loss": .double(loss), "frames": .int(frames), "frames_per_s": .int(Int(fps)),
                "grad_norm": .float(gradNorm), "clipped": .bool(clipped), "workers_alive": .int(workersAlive), "shards_reissued": .int(reissued),
                "shards": .int(shards), "gradients": .int(gradients), "max_shard_frames": .int(maxShardFrames), "seconds": .double(seconds),
                "coordinator_seconds": .double(coordinatorSeconds), "bytes_sent": .int(bytesSent), "bytes_received": .int(bytesReceived),
                "shard_seconds_max": .double(shardSecondsMax), "shard_seconds_mean": .double(shardSecondsMean),
                "skipped": .bool(skipped != nil), "lr": .float(lr),
            ].merging(workerSeconds.isEmpty ? [:] : ["worker_shard_seconds": .object(workerSeconds.mapValues(MetricsJSON.double))]) { $1 })
        }
    }
}

/// One line of `metrics.jsonl`, written by `JSONEncoder` (keys sorted, so a line's bytes are a
/// function of its values; non-finite numbers are `null`).
public enum MetricsJSON: Encodable {
    case int(Int), double(Double), float(Float), bool(Bool), string(String), array([MetricsJSON]), object([String: MetricsJSON]), null

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .int(let v): try c.encode(v)
        case .double(let v): if v.isFinite { try c.encode(v) } else { try c.encodeNil() }
        case .float(let v): if v.isFinite { try c.encode(v) } else { try c.encodeNil() }
        case .bool(let v): try c.encode(v)
        case .string(let v): try c.encode(v)
        case .array(let v): try c.encode(v)
        case .object(let v): try c.encode(v)
        case .null: try c.encodeNil()
        }
    }

    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return e
    }()

    public static func line(_ fields: [String: MetricsJSON]) throws -> String {
        do { return String(decoding: try encoder.encode(fields), as: UTF8.self) } catch {
            throw LockstepError("cannot write a metrics line: \(error)", hint: "this is a bug in Lockstep: please report it with the run's config.toml")
        }
    }
}

/// The coordinator's training state: weights, optimizer, step, and the batch schedule.
/// `coord start --local` drives it alone; the cluster coordinator feeds it shard results.
public final class Trainer {
    public let run: RunConfig
    public let data: Dataset
    public let model: ModelConfig
    public let layout: ParameterLayout
    public let schedule: Schedule
    /// The current weights. Each optimizer step writes a new buffer (recycling an old one that
    /// nobody else holds), so a buffer handed out here never changes: the coordinator sends it
    /// to workers as it is, without a snapshot.
    public private(set) var params: FloatBuffer
    private var spareParams: FloatBuffer?
    public let optimizer: Optimizer
    public private(set) var step: Int
    public let totalSteps: Int
    private var epochCache: (epoch: Int, batches: [[Int]])? = nil
    /// The validation set (`--valid-data`), its forward-only shards, and what validations found.
    public let validation: Dataset?
    public let validationShards: [[Int]]
    public private(set) var tracking: ValidationTracking

    public init(run: RunConfig, data: Dataset, resumeFrom checkpoint: Checkpoint? = nil, initWeights: Checkpoint? = nil,
                validation: Dataset? = nil) throws {
        self.run = run
        self.data = data
        self.validation = validation
        validationShards = validation.map { EvalPlan.shards(lengths: $0.lengths, batchSize: run.batchSize, shardSize: run.shardSize) } ?? []
        tracking = ValidationTracking(lr: Double(run.optimizer.lr))
        model = run.model(for: data)
        let modelProblems = model.problems()
        if !modelProblems.isEmpty { throw LockstepError("bad model: " + modelProblems.joined(separator: "; ")) }
        // Weights, gradients, optimizer state and the spare copy, before any of them is allocated.
        try Memory.check(model.parameterCount * 4 * (4 + optimizerStateCopies(run.optimizer.kind)),
                         for: "the model (\(model.parameterCount) parameters)")
        layout = ParameterLayout(model)
        schedule = Schedule(lengths: data.lengths, batchSize: run.batchSize, shardSize: run.shardSize, seed: run.seed)
        totalSteps = run.totalSteps(batchesPerEpoch: schedule.batchesPerEpoch)
        optimizer = Optimizer(run.optimizer, count: layout.count)
        if let ck = checkpoint {
            if let h = ck.metadata["config_hash"], h != run.hash {
                let diffs = ck.metadata["config_identity"].map(run.differences(fromIdentity:)) ?? []
                let what = diffs.isEmpty ? "(\(ck.metadata["config"] ?? "?"))" : ": " + diffs.joined(separator: "; ")
                throw LockstepError("cannot resume: the checkpoint was written with a different config\(what)",
                                    hint: "resume with the same options as the original run, or start a new run in another --checkpoint-dir")
            }
            if let h = ck.metadata["data_hash"], h != data.hash {
                throw LockstepError("cannot resume: the checkpoint was trained on different data (\(ck.metadata["data_source"] ?? "?"))",
                                    hint: "resume with the same --data (and --seed for synthetic data)")
            }
            guard ck.model == model, ck.optimizerKind == run.optimizer.kind, ck.optimizerState.count == optimizer.state.count else {
                throw LockstepError("cannot resume: the checkpoint's model or optimizer differs from this run's", hint: "use the original options")
            }
            params = ck.params
            for (dst, src) in zip(optimizer.state, ck.optimizerState) { dst.copy(from: src) }
            optimizer.steps = Int(ck.metadata["optimizer_steps"] ?? "") ?? ck.step
            step = ck.step
            tracking = try ValidationTracking(metadata: ck.metadata, lr: Double(run.optimizer.lr), path: checkpointPathFor(run))
            if let v = validation, let h = ck.metadata["valid_data_hash"], h != v.hash {
                throw LockstepError("cannot resume: the checkpoint was validated on other data (\(ck.metadata["valid_data_source"] ?? "?"))",
                                    hint: "resume with the same --valid-data: the best checkpoint and --patience count depend on it")
            }
            if totalSteps < step {
                throw LockstepError("cannot resume: the checkpoint is at step \(step) but this run ends at step \(totalSteps)",
                                    hint: "give --steps (or --epochs) of at least \(step); the checkpoint is left as it is")
            }
        } else if let ck = initWeights {
            guard ck.model.sameShape(as: model) else {
                throw LockstepError("--init: the weights do not fit this run's model", hint: "drop the options that contradict the file")
            }
            params = ck.params
            step = 0
        } else {
            params = layout.initialParameters(seed: run.seed)
            step = 0
        }
    }

    /// The run is over: every step done, or stopped early (`--patience`).
    public var done: Bool { step >= totalSteps || tracking.stopped != nil }

    /// The learning rate of the next step.
    public var learningRate: Float {
        LRSchedule.rate(step: step, total: totalSteps, base: run.optimizer.lr, config: run.schedule, plateau: tracking.plateau)
    }

    /// Whether the step just applied is followed by a validation.
    public var validationDue: Bool { validationDue(after: step) }

    /// A validation is due after the step done last and not recorded yet (a resumed run).
    public var validationPending: Bool { validationDue && tracking.lastValidated != step }

    /// Whether a validation follows once `s` steps are done.
    public func validationDue(after s: Int) -> Bool {
        guard validation != nil, s > 0 else { return false }
        if s >= totalSteps { return true }
        return run.validEvery > 0 ? s % run.validEvery == 0 : s % schedule.batchesPerEpoch == 0
    }

    /// The validation shards' sequences.
    /// Validation shard `k`'s sequences (read on demand from a packed set).
    public func validationShard(_ k: Int) throws -> [Example] { try validationShardIds[k].map { try example(id: $0) } }

    /// The validation shards as sequence ids: a validation sequence's id follows the training
    /// set's (`data.count + i`), so a worker's cache keeps both.
    public var validationShardIds: [[Int]] { validationShards.map { $0.map { data.count + $0 } } }

    /// A training or validation sequence by id.
    public func example(id: Int) throws -> Example {
        if id < data.count { return try data.example(id) }
        let e = try validation!.example(id - data.count)  // read on demand when packed
        return Example(id: id, x: e.x, y: e.y)
    }

    /// Takes the sums of a validation after this step: best weights, patience, plateau rate.
    /// Returns the metrics line's fields and a short text for the progress line.
    public func recordValidation(_ sums: EvalSums) throws -> ValidationReport {
        tracking.lastValidated = step
        let value = run.select == .loss ? sums.loss : sums.accuracy
        let improved = tracking.bestStep == nil || (run.select == .loss ? value < tracking.best : value > tracking.best)
        if improved {
            tracking.best = value
            tracking.bestStep = step
            tracking.bad = 0
            try saveCheckpoint(to: bestPath)
        } else {
            tracking.bad += 1
            // Recorded at the last step too: a run extended later (--resume with more steps) stops here as the longer run would.
            if run.patience > 0 && tracking.bad >= run.patience {
                tracking.stopped = String(format: "early stop at step %d: valid_%@ did not improve for %d validations (best %.6f at step %d)",
                                          step, run.select.rawValue, tracking.bad, tracking.best, tracking.bestStep ?? 0)
            }
        }
        var reduced = false
        if run.schedule.kind == .plateau { reduced = tracking.plateau.observe(sums.loss, config: run.schedule) }
        return ValidationReport(step: step, epoch: schedule.position(step: max(step - 1, 0)).epoch, sums: sums, best: tracking.best,
                                bestStep: tracking.bestStep ?? step, improved: improved, stopped: tracking.stopped,
                                lrReduced: reduced ? Float(tracking.plateau.lr) : nil, select: run.select)
    }

    /// The validation shards' sums recorded (`recordValidation`) and written to the metrics,
    /// with what changed logged.
    public func finishValidation(_ parts: [EvalSums], metrics: MetricsLog, log: (String) -> Void) throws -> ValidationReport {
        let report = try recordValidation(EvalSums.combine(parts, classes: model.classes))
        try metrics.write(report)
        if let r = report.lrReduced { log("validation after step \(report.step): loss did not improve; learning rate reduced to \(r)") }
        if let why = report.stopped { log(why) }
        return report
    }

    /// What the weights' bits depend on beyond the config and data, as printed under a hash.
    public static var numerics: String {
        BLAS.mode == .portable
            ? "portable (Lockstep's GEMM, fused multiply-adds in a fixed order: the same bits on any CPU with FMA; computed here with \(BLAS.portablePathName))"
            : "\(BLAS.libraryVersion) \(BLAS.coreName) kernel, one BLAS thread per shard"
    }

    public var bestPath: String { (run.checkpointDir as NSString).appendingPathComponent("best.safetensors") }

    /// Dataset indices of each shard of the batch for `step` (0-based).
    public func shards(forStep step: Int) -> [[Int]] {
        let (epoch, index) = schedule.position(step: step)
        if epochCache?.epoch != epoch { epochCache = (epoch, schedule.batches(epoch: epoch)) }
        return schedule.shards(of: epochCache!.batches[index])
    }

    /// Adds shard results in the fixed tree, averages, clips, steps. `parts[k]` is shard k's, or
    /// with `spans` the sum of `spans[k]` consecutive shards (a subtree a worker pre-added);
    /// they are left unchanged.
    ///
    /// A non-finite loss or gradient stops the run (throws, naming the step and shard) or, with
    /// `--on-nonfinite skip`, skips the update: the step counts, weights and optimizer state stay.
    /// Either way the outcome is a function of the data, so every rerun does the same.
    public func apply(parts: [(grad: FloatBuffer, result: BatchResult)], spans: [Int]? = nil, seconds: Double) throws -> StepReport {
        let epoch = schedule.position(step: step).epoch
        let lossSum = TreeSum.reduce(parts.map(\.result.lossSum), spans: spans)
        let frames = parts.reduce(0) { $0 + $1.result.frames }
        // Divide by the frame count and clip inside the norm and optimizer passes, and take the
        // norm of each block of the sum as the tree's root addition finishes it: the same roundings
        // as separate passes, with one pass over the gradients instead of four on the step barrier.
        let divisor = Float(max(frames, 1))
        var norm = NormAccumulator(divisor: divisor)
        let sum = TreeSum.reduce(parts.map(\.grad), spans: spans) { norm.add($0, $1) }
        let shardCount = spans?.reduce(0, +) ?? parts.count
        if !lossSum.isFinite || !norm.sumOfSquares.isFinite {
            let what: String
            if let k = parts.firstIndex(where: { !$0.result.lossSum.isFinite || !$0.grad.allFinite }) {
                let bad = spans.map { $0.prefix(k).reduce(0, +) } ?? k, span = spans?[k] ?? 1
                let seqs = (bad..<(bad + span)).flatMap { shards(forStep: step)[$0] }
                what = "step \(step + 1), shard \(span == 1 ? "\(bad)" : "s \(bad)..<\(bad + span)") (sequences \(seqs.prefix(8).map(String.init).joined(separator: ", "))\(seqs.count > 8 ? ", …" : "")): non-finite loss or gradient"
            } else {
                what = "step \(step + 1): the sum of \(shardCount) finite shard gradients overflows float32"
            }
            guard run.onNonfinite == .skip else {
                throw LockstepError("run stopped at \(what); the last checkpoint is intact",
                                    hint: "lower --lr or --max-norm, check the data, or pass --on-nonfinite skip to skip such steps")
            }
            step += 1
            var r = StepReport(step: step, epoch: epoch, loss: .nan, frames: frames, gradNorm: .nan, clipped: false, seconds: seconds)
            r.skipped = what
            r.shards = shardCount
            r.gradients = parts.count
            return r
        }
        let (gradNorm, factor, clipped) = Clip.factor(norm: norm.norm, maxNorm: run.maxNorm)
        let lr = learningRate
        optimizer.lr = lr
        let next = isKnownUniquelyReferenced(&spareParams) ? spareParams! : FloatBuffer(uninitializedCount: params.count)
        optimizer.step(params: params, grads: sum, scaling: GradientScaling(divisor: divisor, factor: factor), into: next)
        spareParams = params
        params = next
        step += 1
        var r = StepReport(step: step, epoch: epoch, loss: lossSum / Double(max(frames, 1)), frames: frames,
                           gradNorm: gradNorm, clipped: clipped, seconds: seconds)
        r.shards = shardCount
        r.gradients = parts.count
        // A block's frames are its shards' total: take each shard's from the plan instead.
        r.maxShardFrames = spans == nil ? parts.map(\.result.frames).max() ?? 0
            : shards(forStep: step - 1).map { $0.reduce(0) { $0 + data.lengths[$1] } }.max() ?? 0
        r.lr = lr
        return r
    }

    public var weightsHash: String { params.sha256 }

    public var checkpointPath: String { checkpointPathFor(run) }

    public func saveCheckpoint() throws {
        try saveCheckpoint(to: checkpointPath)
        try KeptCheckpoints.keep(checkpointPath, step: step, last: run.keepLast)
    }

    func saveCheckpoint(to path: String) throws {
        try FileManager.default.createDirectory(atPath: run.checkpointDir, withIntermediateDirectories: true)
        let configJSON = String(decoding: try JSONEncoder.sorted.encode(run), as: UTF8.self)
        var meta = ["config_hash": run.hash, "config_identity": run.identity, "data_hash": data.hash,
                    "data_source": data.source, "config": configJSON, "total_steps": String(totalSteps)]
        if let v = validation { meta["valid_data_hash"] = v.hash; meta["valid_data_source"] = v.source }
        meta["numerics"] = Trainer.numerics
        meta.merge(tracking.metadata) { $1 }
        try Checkpoint.save(path: path, layout: layout, params: params, optimizer: optimizer, step: step, metadata: meta)
    }

    /// Frame accuracy (argmax) over a dataset, evaluated without dropout.
    public func accuracy(on set: Dataset, engine: Engine? = nil) -> Double {
        let engine = engine ?? Engine(model)
        var correct = 0, total = 0
        var i = 0
        let sorted = set.examples.sorted { $0.length > $1.length }
        while i < sorted.count {
            let sums = engine.evaluate(params: params, examples: Array(sorted[i..<min(i + 64, sorted.count)])).sums
            correct += sums.correct
            total += sums.frames
            i += 64
        }
        return total > 0 ? Double(correct) / Double(total) : 0
    }
}

func checkpointPathFor(_ run: RunConfig) -> String { (run.checkpointDir as NSString).appendingPathComponent("checkpoint.safetensors") }

/// What the validations of a run found so far: the best figure (by `--select`) and its step,
/// validations since it, whether `--patience` stopped the run, and the plateau schedule's
/// state. Kept in every checkpoint (doubles as their bits), so a resumed run decides the same.
public struct ValidationTracking: Equatable, Sendable {
    public var best = Double.nan
    public var bestStep: Int? = nil
    public var bad = 0
    public var stopped: String? = nil
    public var plateau: PlateauState
    /// The step of the last validation recorded (0: none): a checkpoint written between a step
    /// and its validation (an interrupt) resumes with that validation.
    public var lastValidated = 0

    init(lr: Double) { plateau = PlateauState(lr: lr) }

    var metadata: [String: String] {
        var m = ["valid_bad": "\(bad)", "plateau_lr": "\(plateau.lr.bitPattern)", "plateau_best": "\(plateau.best.bitPattern)",
                 "plateau_bad": "\(plateau.bad)", "valid_last_step": "\(lastValidated)"]
        if let bestStep { m["valid_best"] = "\(best.bitPattern)"; m["valid_best_step"] = "\(bestStep)" }
        if let stopped { m["stopped"] = stopped }
        return m
    }

    init(metadata m: [String: String], lr: Double, path: String) throws {
        plateau = PlateauState(lr: lr)
        func bits(_ k: String) throws -> Double? {
            guard let v = m[k] else { return nil }
            guard let b = UInt64(v) else { throw LockstepError("\(path): metadata \(k) is not a number (\(v))", hint: "restore the checkpoint from a copy") }
            return Double(bitPattern: b)
        }
        if let s = m["valid_best_step"] { bestStep = Int(s); best = try bits("valid_best") ?? .nan }
        bad = Int(m["valid_bad"] ?? "0") ?? 0
        stopped = m["stopped"]
        plateau.lr = try bits("plateau_lr") ?? lr
        plateau.best = try bits("plateau_best") ?? .infinity
        plateau.bad = Int(m["plateau_bad"] ?? "0") ?? 0
        lastValidated = Int(m["valid_last_step"] ?? "0") ?? 0
    }
}

/// One validation, as a line of `metrics.jsonl` and a note on the progress line.
public struct ValidationReport: Sendable {
    public var step: Int
    public var epoch: Int
    public var sums: EvalSums
    public var best: Double
    public var bestStep: Int
    public var improved: Bool
    public var stopped: String?
    public var lrReduced: Float?
    public var select: SelectBy
    /// Per-class recall goes in the metrics up to this many classes.
    public static let recallClasses = 1024

    public var json: String {
        get throws {
            var fields: [String: MetricsJSON] = [
                "step": .int(step), "epoch": .int(epoch), "valid_loss": .double(sums.loss), "valid_accuracy": .double(sums.accuracy),
                "valid_frames": .int(sums.frames), "valid_correct": .int(sums.correct),
                "valid_best_\(select.rawValue)": .double(best), "valid_best_step": .int(bestStep), "valid_improved": .bool(improved),
            ]
            if sums.classes <= ValidationReport.recallClasses {
                let per = sums.perClass
                fields["valid_recall"] = .array((0..<sums.classes).map { per.recall($0).map(MetricsJSON.double) ?? .null })
            }
            if let lrReduced { fields["lr_reduced_to"] = .float(lrReduced) }
            if let stopped { fields["stopped"] = .string(stopped) }
            return try MetricsJSON.line(fields)
        }
    }

    public var text: String {
        String(format: "  valid loss %.4f acc %.2f%%%@", sums.loss, 100 * sums.accuracy, improved ? " (best)" : "")
    }
}

/// Appends one JSON line per step to `metrics.jsonl`; on resume, drops lines past the resumed
/// step. Every write is checked: a full disk stops the run with a clear error (the last
/// checkpoint intact) instead of crashing, and `--resume` rewrites what came after it.
public final class MetricsLog {
    private let fd: Int32
    public let path: String
    /// The same figures as TensorBoard scalars (`tb/`).
    public let tensorBoard: TensorBoardLog
    /// Told of every step and validation once they are written (the Prometheus endpoint).
    public var onStep: ((StepReport) -> Void)?
    public var onValidation: ((ValidationReport) -> Void)?

    public init(directory: String, resumeStep: Int?) throws {
        path = (directory as NSString).appendingPathComponent("metrics.jsonl")
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var keep = ""
        if let resumeStep, let old = try? String(contentsOfFile: path, encoding: .utf8) {
            for line in old.split(separator: "\n") {
                if let r = line.range(of: "\"step\":"), let n = Int(line[r.upperBound...].prefix(while: \.isNumber)), n <= resumeStep {
                    keep += line + "\n"
                }
            }
        }
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw LockstepError("cannot write \(path): \(String(cString: strerror(errno)))",
                                hint: "check that --checkpoint-dir is writable and has free space")
        }
        tensorBoard = try TensorBoardLog(runDirectory: directory, resumeStep: resumeStep)
        try append(keep)
    }

    deinit { close(fd) }

    public func write(_ report: StepReport) throws {
        try append(try report.json + "\n")
        try tensorBoard.write(step: report.step, scalars: report.scalars)
        onStep?(report)
    }

    public func write(_ report: ValidationReport) throws {
        try append(try report.json + "\n")
        try tensorBoard.write(step: report.step, scalars: [("valid/loss", report.sums.loss), ("valid/accuracy", report.sums.accuracy)])
        onValidation?(report)
    }

    private func append(_ text: String) throws {
        // A torn last line would be dropped on resume anyway; appendChecked cuts it now.
        try appendChecked(Array(text.utf8), to: fd, path: path)
    }
}

/// Writes all of `bytes` at the end of the open file `fd`; on failure (a full disk) cuts what
/// got written, so the file ends with a whole record, and throws the error with the fix.
func appendChecked(_ bytes: [UInt8], to fd: Int32, path: String) throws {
    var off = 0
    while off < bytes.count {
        let n = bytes.withUnsafeBytes { Foundation.write(fd, $0.baseAddress! + off, bytes.count - off) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else {
            let err = String(cString: strerror(errno))
            ftruncate(fd, lseek(fd, 0, SEEK_CUR) - off_t(off))
            throw LockstepError("cannot append to \(path): \(err); the run stopped, its last checkpoint is intact",
                                hint: "free disk space, then rerun the same command with --resume: it continues to the same bits")
        }
        off += n
    }
}
