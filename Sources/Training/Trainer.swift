import BiLSTM
import Datasets
import Formats
import Foundation
import Numerics


/// The coordinator's training state: weights, optimizer, step, and the batch schedule.
/// `coord start --local` drives it alone; the cluster coordinator feeds it shard results.
public final class Trainer {
    /// More metadata for every checkpoint, asked at each save (the metrics files' lengths).
    public var checkpointExtras: (() -> [String: String])?
    /// The metadata of the checkpoint this run resumed from.
    public private(set) var resumedMetadata: [String: String]?
    public private(set) var run: RunConfig
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
        if run.autoClassWeights {
            self.run.classWeights = ClassWeights.balanced(counts: try data.labelCounts())
            self.run.autoClassWeights = false
        }
        if let w = self.run.classWeights, let bad = ClassWeights.problem(w, classes: data.classes) {
            throw LockstepError("--class-weights: \(bad)", hint: "the data \(data.source) has \(data.classes) classes; or give --class-weights auto")
        }
        let modelProblems = model.problems()
        if !modelProblems.isEmpty { throw LockstepError("bad model: " + modelProblems.joined(separator: "; ")) }
        // Weights, gradients, optimizer state and the spare copy, before any of them is allocated.
        try Memory.check(model.parameterCount * 4 * (4 + optimizerStateCopies(run.optimizer.kind)),
                         for: "the model (\(model.parameterCount) parameters)")
        layout = ParameterLayout(model)
        schedule = Schedule(lengths: data.lengths, batchSize: run.batchSize, shardSize: run.shardSize, seed: run.seed)
        totalSteps = run.totalSteps(batchesPerEpoch: schedule.batchesPerEpoch)
        guard totalSteps <= RunConfig.maxSteps else {
            throw LockstepError("--epochs \(run.epochs ?? 0) of \(schedule.batchesPerEpoch) batches each is \(totalSteps == Int.max ? "more than 2^63" : String(totalSteps)) steps; a run takes at most \(RunConfig.maxSteps)",
                                hint: "give fewer --epochs")
        }
        optimizer = Optimizer(run.optimizer, count: layout.count)
        if let ck = checkpoint {
            if let h = ck.metadata["config_hash"], h != self.run.hash {
                var diffs = ck.metadata["config_identity"].map(self.run.differences(fromIdentity:)) ?? []
                // Other data too (a bare --resume trains the built-in task): say so beside the options.
                if let trained = ck.metadata["data_content"] ?? ck.metadata["data_hash"], trained != data.contentHash {
                    let was = ck.metadata["data_source"] ?? "other data"
                    diffs.append(was == data.source ? "--data: \(was) holds other sequences than the checkpoint's"
                                                    : "--data: the checkpoint trained on \(was), this run on \(data.source)")
                }
                let what = diffs.isEmpty ? "(\(ck.metadata["config"] ?? "?"))" : ": " + diffs.joined(separator: "; ")
                throw LockstepError("cannot resume: the checkpoint was written with a different config\(what)",
                                    hint: "resume with the run's own options: coord start --config \(Trainer.runConfigPath(run)) --resume; or start a new run in another --checkpoint-dir")
            }
            if let h = ck.metadata["data_hash"], h != data.hash { try Trainer.checkSameData(ck, data) }
            guard ck.model == model, ck.optimizerKind == run.optimizer.kind, ck.optimizerState.count == optimizer.state.count else {
                throw LockstepError("cannot resume: the checkpoint's model or optimizer differs from this run's", hint: "use the original options")
            }
            params = ck.params
            resumedMetadata = ck.metadata
            for (dst, src) in zip(optimizer.state, ck.optimizerState) { dst.copy(from: src) }
            optimizer.steps = Int(ck.metadata["optimizer_steps"] ?? "") ?? ck.step
            step = ck.step
            tracking = try ValidationTracking(metadata: ck.metadata, lr: Double(run.optimizer.lr), path: checkpointPathFor(run))
            try checkBest()
            if validation == nil, ck.metadata["valid_data_hash"] != nil {
                throw LockstepError("cannot resume: the run was validated on \(ck.metadata["valid_data_source"] ?? "a validation set"), and this command gives no --valid-data",
                                    hint: "resume with --valid-data \(ck.metadata["valid_data_source"] ?? "…") as before (the best weights and --patience depend on it), or with --config \((run.checkpointDir as NSString).appendingPathComponent("config.toml")) --resume")
            }
            if let v = validation, let h = ck.metadata["valid_data_hash"], h != v.hash {
                throw LockstepError("cannot resume: the checkpoint was validated on other data (\(ck.metadata["valid_data_source"] ?? "?"))",
                                    hint: "resume with the same --valid-data: the best checkpoint and --patience count depend on it")
            }
            // The checkpoint's horizons, and a new one when this run extends (or the config's, for a rerun).
            var segments = ck.metadata["schedule_segments"].flatMap(RunConfig.decodeSegments) ?? self.run.segments ?? []
            if let was = Int(ck.metadata["total_steps"] ?? ""), was != totalSteps, step > 0 {
                segments.append(RunConfig.Segment(until: step, total: was))
            }
            self.run.segments = segments.isEmpty ? nil : segments
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
        LRSchedule.rate(step: step, total: run.horizon(step: step, total: totalSteps), base: run.optimizer.lr, config: run.schedule, plateau: tracking.plateau)
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
        guard sums.frames > 0 else {
            throw LockstepError("the validation set \(validation?.source ?? "") has no labelled frame: its loss and accuracy would be NaN",
                                hint: "give --valid-data with labels y (not -1 everywhere)")
        }
        tracking.lastValidated = step
        let value: Double
        switch run.select {
        case .loss: value = sums.loss
        case .accuracy: value = sums.accuracy
        case .f1: value = sums.perClass.macroF1
        }
        let improved = tracking.bestStep == nil || (run.select == .loss ? value < tracking.best : value > tracking.best)
        if improved {
            tracking.best = value
            tracking.bestStep = step
            tracking.bad = 0
            tracking.bestSHA256 = try saveCheckpoint(to: bestPath)
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

    /// What the weights' bits depend on beyond the config and data, as printed under a hash.
    public static var numerics: String {
        BLAS.mode == .portable
            ? "portable (Lockstep's GEMM, fused multiply-adds in a fixed order: the same bits on any CPU with FMA; computed here with \(BLAS.portablePathName))"
            : "\(BLAS.libraryVersion) \(BLAS.coreName) kernel, one BLAS thread per shard"
    }

    public var bestPath: String { (run.checkpointDir as NSString).appendingPathComponent("best.safetensors") }

    /// Dataset indices of each shard of the batch for `step` (0-based).
    /// Refuses a run whose largest shard's scratch, times the shards this host computes at once
    /// (`threads`: local threads, or every spawned worker's), exceeds what this
    /// process may use, before anything is allocated for it (a shard of long sequences would
    /// otherwise abort the run mid-epoch when it first came up).
    /// `schedule.largestShardFrames`, sorted for once: the memory check and the engines' sizing read it.
    public private(set) lazy var largestShardFrames = schedule.largestShardFrames

    public func checkShardMemory(threads: Int) throws {
        let rows = largestShardFrames, perRow = Engine.trainingBytesPerRow(model)
        let (frames, over1) = rows.multipliedReportingOverflow(by: max(threads, 1))
        let (need, over2) = perRow.multipliedReportingOverflow(by: frames)
        let over = over1 || over2
        guard over || need > Memory.limit else { return }
        throw LockstepError("a shard of the \(run.shardSize) longest sequences (\(rows) frames) needs \(over ? "more than 2^63 bytes" : Memory.gib(need)) of scratch for \(max(threads, 1)) shard(s) computed at once on this host (\(perRow) bytes a frame), more than this process may use (\(Memory.gib(Memory.limit)))",
                            hint: "lower --shard-size or --threads, or cut the longest sequences of \(data.source) into pieces")
    }

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
        // With class weights the mean is over the frames' weights (NLLLoss's), tree-summed like the loss.
        let weightSum = run.classWeights == nil ? Double(max(frames, 1)) : TreeSum.reduce(parts.map(\.result.weightSum), spans: spans)
        let denominator = weightSum > 0 ? weightSum : 1
        // Divide by the frame count and clip inside the norm and optimizer passes, and take the
        // norm of each block of the sum as the tree's root addition finishes it: the same roundings
        // as separate passes, with one pass over the gradients instead of four on the step barrier.
        let divisor = run.classWeights == nil ? Float(max(frames, 1)) : Float(denominator)
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
            r.totalSteps = totalSteps
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
        var r = StepReport(step: step, epoch: epoch, loss: run.classWeights == nil ? lossSum / Double(max(frames, 1)) : lossSum / denominator, frames: frames,
                           gradNorm: gradNorm, clipped: clipped, seconds: seconds)
        r.shards = shardCount
        r.totalSteps = totalSteps
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

    @discardableResult
    func saveCheckpoint(to path: String) throws -> String {
        try FileManager.default.createDirectory(atPath: run.checkpointDir, withIntermediateDirectories: true)
        let configJSON = String(decoding: try JSONEncoder.sorted.encode(run), as: UTF8.self)
        var meta = ["config_hash": run.hash, "config_identity": run.identity, "data_hash": data.hash, "data_content": data.contentHash,
                    "data_source": data.source, "config": configJSON, "total_steps": String(totalSteps)]
        if let v = validation { meta["valid_data_hash"] = v.hash; meta["valid_data_source"] = v.source }
        meta["numerics"] = Trainer.numerics
        meta.merge(tracking.metadata) { $1 }
        if let extras = checkpointExtras?() { meta.merge(extras) { $1 } }
        if let segments = run.segments, !segments.isEmpty { meta["schedule_segments"] = RunConfig.encode(segments) }
        return try Checkpoint.save(path: path, layout: layout, params: params, optimizer: optimizer, step: step, metadata: meta)
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

extension Trainer {
    /// The run directory's config.toml (its resolved options, mode included).
    static func runConfigPath(_ run: RunConfig) -> String { (run.checkpointDir as NSString).appendingPathComponent("config.toml") }
}

func checkpointPathFor(_ run: RunConfig) -> String { (run.checkpointDir as NSString).appendingPathComponent("checkpoint.safetensors") }

/// What the validations of a run found so far: the best figure (by `--select`) and its step,
/// validations since it, whether `--patience` stopped the run, and the plateau schedule's
/// state. Kept in every checkpoint (doubles as their bits), so a resumed run decides the same.
public struct ValidationTracking: Equatable, Sendable {
    public var best = Double.nan
    public var bestStep: Int? = nil
    /// `file_sha256` of the `best.safetensors` written at `bestStep`: resume checks the file.
    public var bestSHA256: String? = nil
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
        if let bestSHA256 { m["valid_best_sha256"] = bestSHA256 }
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
        bestSHA256 = m["valid_best_sha256"]
        bad = Int(m["valid_bad"] ?? "0") ?? 0
        stopped = m["stopped"]
        plateau.lr = try bits("plateau_lr") ?? lr
        plateau.best = try bits("plateau_best") ?? .infinity
        plateau.bad = Int(m["plateau_bad"] ?? "0") ?? 0
        lastValidated = Int(m["valid_last_step"] ?? "0") ?? 0
    }
}

extension Trainer {
    /// A checkpoint's data and this run's differ in their recorded hash: the same data in
    /// another container is accepted only when both sides' content is known, not claimed. A
    /// run on an `.npz` (its content hash computed) resumes on a packed copy once every
    /// sequence of the copy is read and hashed; a run on packed data recorded only its
    /// manifest's identity, so it resumes on a copy with that identity.
    static func checkSameData(_ ck: Checkpoint, _ data: Dataset) throws {
        let recorded = ck.metadata["data_hash"] ?? "", content = ck.metadata["data_content"] ?? recorded
        let source = ck.metadata["data_source"] ?? "?"
        guard recorded == content, content == data.contentHash else {
            throw LockstepError(recorded == content
                ? "cannot resume: the checkpoint was trained on different data (\(source))"
                : "cannot resume: the checkpoint was trained on the packed data \(source) (identity \(recorded.prefix(16))…), and this data's identity is \(data.hash.prefix(16))…",
                hint: recorded == content ? "resume with the same --data (\(source)) and --seed, or with the run's own options: coord start --config DIR/config.toml --resume"
                    : "resume on that packed directory, or on a copy with the same manifest (`coord data info` prints its identity)")
        }
        if let store = data.store {
            let computed = try store.computeContentHash(classes: data.classes)
            guard computed == content else {
                throw LockstepError("cannot resume: \(store.dir) claims the content of \(source) (\(content.prefix(16))…), but its shards hold \(computed.prefix(16))…",
                                    hint: "`coord data verify \(store.dir)` names what differs; repack it from the original data")
            }
        }
    }
}

extension Trainer {
    /// On resume, `best.safetensors` must be the file this run wrote at its best step (the
    /// checkpoint records its `file_sha256`): the run's last line will name it as the best.
    func checkBest() throws {
        guard let bestStep = tracking.bestStep, let want = tracking.bestSHA256 else { return }
        let hint = "put back the best.safetensors this run wrote (a backup or a copy), or start the run again in a new --checkpoint-dir"
        guard FileManager.default.fileExists(atPath: bestPath) else {
            throw LockstepError("cannot resume: \(bestPath) is gone; the checkpoint says the best validation was at step \(bestStep)", hint: hint)
        }
        let best: Checkpoint
        do { best = try Checkpoint.load(path: bestPath) } catch {
            throw LockstepError("cannot resume: \(bestPath), the best weights of step \(bestStep), is damaged: \(error)", hint: hint)
        }
        if best.metadata[CheckpointIntegrity.fileKey] == want && best.step == bestStep { return }
        // Written after this checkpoint, before a crash: this run's own (its config and data), and
        // the resumed run reaches that validation again and writes the same file.
        if best.step > step, best.metadata["config_hash"] == run.hash, best.metadata["data_hash"] == data.hash { return }
        throw LockstepError("cannot resume: \(bestPath) is not the file this run wrote at step \(bestStep) (it holds step \(best.step), file_sha256 \((best.metadata[CheckpointIntegrity.fileKey] ?? "none").prefix(16))…; the checkpoint recorded \(want.prefix(16))…)", hint: hint)
    }
}
