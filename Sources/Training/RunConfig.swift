import BiLSTM
import Datasets
import Formats
import Foundation
import Numerics

/// What a non-finite loss or gradient does to a run.
public enum NonfinitePolicy: String, Codable, Sendable, CaseIterable { case stop, skip }

/// Which validation figure picks `best.safetensors` and counts for `--patience`.
public enum SelectBy: String, Codable, Sendable, CaseIterable {
    case loss, accuracy
    /// Macro-averaged F1 over the classes (for skewed data, where accuracy follows the big class).
    case f1 = "macro-f1"
}

/// Everything one training run needs. The same keys come from a TOML file and from the
/// command line (which overrides the file).
public struct RunConfig: Codable, Equatable, Sendable {
    // Data
    public var data: String? = nil
    public var classes: Int? = nil
    public var synthetic = SyntheticTask()
    // Model
    public var hidden = 64
    public var layers = 2
    public var arch: Arch = .stacked
    public var bidirectional = true
    public var dropout: Float = 0.1
    // Training
    public var steps: Int? = nil
    public var epochs: Int? = nil
    /// An extended run's earlier horizons: steps before `until` took their learning rate from a
    /// schedule that ran to `total` (what `--resume` with a larger --steps/--epochs leaves behind),
    /// so its config.toml repeats it to the same bits. nil for a run never extended.
    public var segments: [Segment]? = nil

    public struct Segment: Codable, Equatable, Sendable {
        public var until: Int
        public var total: Int
        public init(until: Int, total: Int) { self.until = until; self.total = total }
    }

    /// The schedule's horizon at `step`: the total of the first earlier segment that covers it, else `total`.
    public func horizon(step: Int, total: Int) -> Int { segments?.first { step < $0.until }?.total ?? total }

    /// `until:total,until:total`, as config.toml writes them.
    public static func encode(_ segments: [Segment]) -> String { segments.map { "\($0.until):\($0.total)" }.joined(separator: ",") }
    public static func decodeSegments(_ text: String) -> [Segment]? {
        var out: [Segment] = []
        for part in text.split(separator: ",") {
            let f = part.split(separator: ":")
            guard f.count == 2, let u = Int(f[0]), let t = Int(f[1]) else { return nil }
            out.append(Segment(until: u, total: t))
        }
        return out
    }
    public var batchSize = 32
    public var shardSize = 8
    public var optimizer = OptimizerConfig()
    public var maxNorm: Float = 1.0
    public var seed: UInt64 = 1
    public var onNonfinite: NonfinitePolicy = .stop
    public var schedule = LRScheduleConfig()
    /// How products are computed: part of the math (another mode, another hash). Portable by
    /// default (one hash on every CPU); the identity names it only when it is not openblas, the
    /// old default, so checkpoints of either mode keep their config hash.
    public var numerics: NumericsMode = .portable
    /// Start from these weights (a fresh optimizer); model shape from the file.
    public var initFrom: String? = nil
    /// SHA-256 of the `--init` weights, set when they are read: part of the math.
    public var initHash: String? = nil
    /// `--class-weights w0,w1,…`: the loss's per-class weights, part of the math; nil for the
    /// plain mean. `auto` sets `autoClassWeights`, and the trainer fills these from the data.
    public var classWeights: [Float]? = nil
    public var autoClassWeights = false
    // Validation
    public var validData: String? = nil
    /// `--valid-split F`: validate on a deterministic fraction F of the training data instead
    /// (sequence id and seed decide, so the same split at any worker count, through resume, and
    /// from an `.npz` or its packed copy). Part of the math: the training set is the rest.
    public var validSplit: Float? = nil
    /// Validate every N steps; 0: at the end of every epoch. Always at the end of the run.
    public var validEvery = 0
    public var select: SelectBy = .loss
    /// Stop after this many validations without improvement (0: never).
    public var patience = 0
    // Files
    public var checkpointDir = "runs/lockstep"
    public var checkpointEvery = 50
    /// Also keep the last K checkpoints as `checkpoint-step-N.safetensors` (0: none).
    public var keepLast = 0

    public init() {}

    public static let defaultSteps = 300
    /// The most optimizer steps a run may take (a trillion), and epochs: bounds that keep every
    /// product of steps, batches and epochs inside 64 bits.
    public static let maxSteps = 1 << 40
    public static let maxEpochs = 1 << 20
    /// Sequences in one shard and in one batch: a shard crosses the wire as one message.
    public static let maxShardSize = 1 << 16
    public static let maxBatchSize = 1 << 24

    public func model(for data: Dataset) -> ModelConfig {
        ModelConfig(inputSize: data.inputSize, hidden: hidden, layers: layers, classes: data.classes,
                    bidirectional: bidirectional, arch: arch, dropout: dropout)
    }

    public func totalSteps(batchesPerEpoch: Int) -> Int {
        if let steps { return steps }
        if let epochs {
            let (n, overflow) = epochs.multipliedReportingOverflow(by: batchesPerEpoch)
            return overflow ? Int.max : n
        }
        return RunConfig.defaultSteps
    }

    /// Every reason this config cannot run, checked before any data is read or socket opened.
    public func problems() -> [String] {
        var p: [String] = []
        let most = RunConfig.maxSteps
        if let s = steps, !(1...most).contains(s) { p.append("--steps must be in 1...\(most) (got \(s))") }
        if let e = epochs, !(1...RunConfig.maxEpochs).contains(e) { p.append("--epochs must be in 1...\(RunConfig.maxEpochs) (got \(e))") }
        if checkpointEvery > most { p.append("--checkpoint-every must be at most \(most) (got \(checkpointEvery))") }
        if keepLast > 1 << 20 { p.append("--keep-last must be at most \(1 << 20) (got \(keepLast))") }
        if validEvery > most { p.append("--valid-every must be at most \(most) (got \(validEvery))") }
        if patience > 1 << 20 { p.append("--patience must be at most \(1 << 20) (got \(patience))") }
        if schedule.warmupSteps > most { p.append("--warmup-steps must be at most \(most) (got \(schedule.warmupSteps))") }
        if schedule.stepSize > most { p.append("--lr-step-size must be at most \(most) (got \(schedule.stepSize))") }
        if schedule.plateauPatience > 1 << 20 { p.append("--plateau-patience must be at most \(1 << 20) (got \(schedule.plateauPatience))") }
        if steps != nil && epochs != nil { p.append("give --steps or --epochs, not both") }
        if let segs = segments {
            var last = 0
            for g in segs {
                if g.until <= last || g.until > most || g.total < 1 || g.total > most {
                    p.append("schedule-segments: \(g.until):\(g.total) is out of order or range (each until:total, until increasing, both in 1...\(most))")
                    break
                }
                last = g.until
            }
        }
        if batchSize < 1 { p.append("--batch-size must be at least 1 (got \(batchSize))") }
        if shardSize < 1 { p.append("--shard-size must be at least 1 (got \(shardSize))") }
        if shardSize > batchSize { p.append("--shard-size (\(shardSize)) cannot exceed --batch-size (\(batchSize))") }
        if !(optimizer.lr > 0 && optimizer.lr.isFinite) { p.append("--lr must be a positive number (got \(optimizer.lr))") }
        if !(optimizer.momentum >= 0 && optimizer.momentum < 1) { p.append("--momentum must be in [0, 1) (got \(optimizer.momentum))") }
        if !(optimizer.weightDecay >= 0) { p.append("--weight-decay must be >= 0 (got \(optimizer.weightDecay))") }
        if !(maxNorm >= 0 && maxNorm.isFinite) { p.append("--max-norm must be >= 0; 0 turns clipping off (got \(maxNorm))") }
        if checkpointEvery < 0 { p.append("--checkpoint-every must be >= 0; 0 writes only the final checkpoint") }
        if keepLast < 0 { p.append("--keep-last must be >= 0; 0 keeps only checkpoint.safetensors (got \(keepLast))") }
        if let c = classes, !(2...ModelConfig.maxClasses).contains(c) { p.append("--classes must be in 2...\(ModelConfig.maxClasses) (got \(c))") }
        if shardSize > RunConfig.maxShardSize { p.append("--shard-size must be at most \(RunConfig.maxShardSize) (got \(shardSize))") }
        if batchSize > RunConfig.maxBatchSize { p.append("--batch-size must be at most \(RunConfig.maxBatchSize) (got \(batchSize))") }
        if data == nil { p += synthetic.problems() }
        p += schedule.problems()
        if validEvery < 0 { p.append("--valid-every must be >= 0; 0 validates at the end of every epoch (got \(validEvery))") }
        if patience < 0 { p.append("--patience must be >= 0; 0 never stops early (got \(patience))") }
        if autoClassWeights && classWeights != nil { p.append("--class-weights is auto or a list, not both") }
        if let w = classWeights, let bad = ClassWeights.problem(w, classes: classes ?? w.count) { p.append("--class-weights: \(bad)") }
        if let f = validSplit {
            if !(f > 0 && f <= 0.5) { p.append("--valid-split must be in (0, 0.5]: the fraction of the training data held out (got \(f))") }
            if validData != nil { p.append("--valid-split and --valid-data are two validation sets: give one") }
        }
        if validData == nil && validSplit == nil {
            if patience > 0 { p.append("--patience needs a validation set: give --valid-data or --valid-split") }
            if schedule.kind == .plateau { p.append("--lr-schedule plateau reads the validation loss: give --valid-data or --valid-split") }
        }
        let m = ModelConfig(inputSize: 1, hidden: hidden, layers: layers, classes: min(max(classes ?? 2, 2), ModelConfig.maxClasses),
                            bidirectional: bidirectional, arch: arch, dropout: dropout)
        p += m.problems().map { "model: \($0)" }
        return p
    }

    /// One field that defines the math of a run: its name in `identity` (the historical
    /// spelling, so existing checkpoints keep their config hash), its option, its recorded value
    /// (floats as their bits) and how a recorded value reads to the user.
    public struct MathField {
        let name: String, option: String, recorded: String
        let show: (String) -> String
    }

    /// Resuming with any of these changed is refused.
    public var mathFields: [MathField] {
        let o = optimizer
        func f(_ n: String, _ k: String, _ v: Float) -> MathField {
            MathField(name: n, option: k, recorded: "\(v.bitPattern)") { UInt32($0).map { "\(Float(bitPattern: $0))" } ?? $0 }
        }
        func s(_ n: String, _ k: String, _ v: String) -> MathField { MathField(name: n, option: k, recorded: v) { $0 } }
        return [s("hidden", "hidden", "\(hidden)"), s("layers", "layers", "\(layers)"), s("arch", "arch", arch.rawValue),
                MathField(name: "bidirectional", option: "unidirectional", recorded: "\(bidirectional)") { $0 == "true" ? "false" : "true" },
                f("dropout", "dropout", dropout), s("batch", "batch-size", "\(batchSize)"), s("shard", "shard-size", "\(shardSize)"),
                s("seed", "seed", "\(seed)"), s("opt", "optimizer", o.kind.rawValue), f("lr", "lr", o.lr), f("mom", "momentum", o.momentum),
                f("wd", "weight-decay", o.weightDecay), f("b1", "beta1", o.beta1), f("b2", "beta2", o.beta2), f("eps", "eps", o.eps),
                f("maxnorm", "max-norm", maxNorm), s("classes", "classes", classes.map(String.init) ?? "auto"),
                s("nonfinite", "on-nonfinite", onNonfinite.rawValue)] + scheduleFields
    }

    /// The schedule and the starting weights, named only when they differ from a constant rate
    /// and fresh weights, so runs without them keep their config hash (and checkpoints resume).
    var scheduleFields: [MathField] {
        var out: [MathField] = []
        let c = schedule
        func f(_ n: String, _ v: Float) -> MathField {
            MathField(name: n, option: n, recorded: "\(v.bitPattern)") { UInt32($0).map { "\(Float(bitPattern: $0))" } ?? $0 }
        }
        func s(_ n: String, _ v: String) -> MathField { MathField(name: n, option: n, recorded: v) { $0 } }
        if c.kind != .constant { out.append(s("lr-schedule", c.kind.rawValue)) }
        if c.warmupSteps != 0 { out.append(s("warmup-steps", "\(c.warmupSteps)")) }
        if c.kind == .step { out.append(s("lr-step-size", "\(c.stepSize)")) }
        if c.kind == .step || c.kind == .plateau { out.append(f("lr-gamma", c.gamma)) }
        if c.kind == .cosine || c.kind == .plateau { out.append(f("min-lr", c.minLR)) }
        if c.kind == .plateau { out.append(s("plateau-patience", "\(c.plateauPatience)")) }
        if numerics != .openblas { out.append(s("numerics", numerics.rawValue)) }
        if let initHash { out.append(MathField(name: "init", option: "init", recorded: initHash) { "weights with SHA-256 \($0.prefix(16))…" }) }
        if let validSplit { out.append(f("valid-split", validSplit)) }
        if let w = classWeights {
            out.append(MathField(name: "class-weights", option: "class-weights", recorded: w.map { "\($0.bitPattern)" }.joined(separator: ",")) {
                $0.split(separator: ",").map { UInt32($0).map { "\(Float(bitPattern: $0))" } ?? String($0) }.joined(separator: ",")
            })
        }
        return out
    }

    public var identity: String { mathFields.map { "\($0.name)=\($0.recorded)" }.joined(separator: ";") }

    /// Each math field whose value differs from the one recorded in `identity`, with both values.
    public func differences(fromIdentity recorded: String) -> [String] {
        var old: [String: String] = [:]
        for part in recorded.split(separator: ";") {
            let kv = part.split(separator: "=", maxSplits: 1).map(String.init)
            if kv.count == 2 { old[kv[0]] = kv[1] }
        }
        var out = mathFields.compactMap { f -> String? in
            let optional = scheduleFields.contains { $0.name == f.name }
            guard let was = old[f.name] ?? (optional ? "(none)" : nil), was != f.recorded else { return nil }
            return "--\(f.option): the checkpoint has \(was == "(none)" ? was : f.show(was)), this run \(f.show(f.recorded))"
        }
        let names = Set(mathFields.map(\.name))
        // A field this run lacks reads as any config that has it would show it.
        var every = RunConfig()
        every.schedule.kind = .plateau; every.schedule.warmupSteps = 1; every.numerics = .portable
        every.initHash = ""; every.validSplit = 0.5; every.classWeights = []
        let shows = Dictionary((every.mathFields + [MathField(name: "lr-step-size", option: "lr-step-size", recorded: "") { $0 }]).map { ($0.name, $0.show) },
                               uniquingKeysWith: { a, _ in a })
        for (k, v) in old where !names.contains(k) { out.append("--\(k): the checkpoint has \(shows[k]?(v) ?? v), this run (none)") }
        return out.sorted()
    }

    public var hash: String { SHA256.hex(Array(identity.utf8)) }

    /// The training data this config names (the synthetic task when none).
    /// A packed directory is opened, not read: its sequences are read when a step needs them
    /// (the coordinator of a cluster whose workers have their own copies reads none).
    public func loadData() throws -> Dataset {
        if let data, DataManifest.isPacked(data) {
            // A split needs every sequence in memory: the packed set is read whole (every shard checked).
            return validSplit == nil ? try PackedData.open(data, classes: classes) : try PackedData.load(data, classes: classes, labels: .required)
        }
        if let data { return try Dataset.load(npz: data, classes: classes) }
        return synthetic.generate(seed: seed)
    }

    /// `--valid-split`: (training, validation) from `data`. Sequence i is held out when
    /// Philox(seed, validSplit, i) falls below the fraction; each side keeps its order and takes
    /// new ids 0..<count (what dropout and the shard plan key on), so every mode sees the same sets.
    public func split(_ data: Dataset) throws -> (train: Dataset, valid: Dataset) {
        guard let f = validSplit else { return (data, data) }
        var train: [Example] = [], valid: [Example] = []
        for i in 0..<data.count {
            let r = Philox.block(key: seed, counter: SIMD4(RandomPurpose.validSplit.rawValue, UInt32(truncatingIfNeeded: i), UInt32(truncatingIfNeeded: i >> 32), 0))
            let e = try data.example(i)
            if Philox.unit(r.x) < f { valid.append(Example(id: valid.count, x: e.x, y: e.y)) } else { train.append(Example(id: train.count, x: e.x, y: e.y)) }
        }
        guard !train.isEmpty, !valid.isEmpty else {
            throw LockstepError("--valid-split \(f) of \(data.count) sequences leaves \(train.count) to train on and \(valid.count) to validate on",
                                hint: "use more data, or another fraction")
        }
        var t = Dataset(examples: train, inputSize: data.inputSize, classes: data.classes, source: data.source + " (training split)")
        var v = Dataset(examples: valid, inputSize: data.inputSize, classes: data.classes, source: data.source + " (validation split \(f))")
        t.paddedLength = data.paddedLength; v.paddedLength = data.paddedLength
        return (t, v)
    }
}
