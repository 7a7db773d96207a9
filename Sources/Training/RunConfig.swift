import BiLSTM
import Foundation
import Numerics

/// Everything one training run needs. The same keys come from a TOML file and from the
/// command line (which overrides the file).
/// What a non-finite loss or gradient does to a run.
public enum NonfinitePolicy: String, Codable, Sendable, CaseIterable { case stop, skip }

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
    public var batchSize = 32
    public var shardSize = 8
    public var optimizer = OptimizerConfig()
    public var maxNorm: Float = 1.0
    public var seed: UInt64 = 1
    public var onNonfinite: NonfinitePolicy = .stop
    // Files
    public var checkpointDir = "runs/lockstep"
    public var checkpointEvery = 50
    /// Also keep the last K checkpoints as `checkpoint-step-N.safetensors` (0: none).
    public var keepLast = 0

    public init() {}

    public static let defaultSteps = 300
    /// Sequences in one shard and in one batch: a shard crosses the wire as one message.
    public static let maxShardSize = 1 << 16
    public static let maxBatchSize = 1 << 24

    public func model(for data: Dataset) -> ModelConfig {
        ModelConfig(inputSize: data.inputSize, hidden: hidden, layers: layers, classes: data.classes,
                    bidirectional: bidirectional, arch: arch, dropout: dropout)
    }

    public func totalSteps(batchesPerEpoch: Int) -> Int {
        if let steps { return steps }
        if let epochs { return epochs * batchesPerEpoch }
        return RunConfig.defaultSteps
    }

    /// Every reason this config cannot run, checked before any data is read or socket opened.
    public func problems() -> [String] {
        var p: [String] = []
        if let s = steps, s < 1 { p.append("--steps must be at least 1 (got \(s))") }
        if let e = epochs, e < 1 { p.append("--epochs must be at least 1 (got \(e))") }
        if steps != nil && epochs != nil { p.append("give --steps or --epochs, not both") }
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
        let m = ModelConfig(inputSize: 1, hidden: hidden, layers: layers, classes: min(max(classes ?? 2, 2), ModelConfig.maxClasses),
                            bidirectional: bidirectional, arch: arch, dropout: dropout)
        p += m.problems().map { "model: \($0)" }
        return p
    }

    /// The fields that define the math of a run, by option name, with the value as the user
    /// reads it and its exact bits; resuming with any of them changed is refused.
    public var mathFields: [(key: String, shown: String, bits: String)] {
        let o = optimizer
        func f(_ k: String, _ v: Float) -> (String, String, String) { (k, "\(v)", "\(v.bitPattern)") }
        func s(_ k: String, _ v: String) -> (String, String, String) { (k, v, v) }
        return [s("hidden", "\(hidden)"), s("layers", "\(layers)"), s("arch", arch.rawValue), s("unidirectional", "\(!bidirectional)"),
                f("dropout", dropout), s("batch-size", "\(batchSize)"), s("shard-size", "\(shardSize)"), s("seed", "\(seed)"),
                s("optimizer", o.kind.rawValue), f("lr", o.lr), f("momentum", o.momentum), f("weight-decay", o.weightDecay),
                f("beta1", o.beta1), f("beta2", o.beta2), f("eps", o.eps), f("max-norm", maxNorm),
                s("classes", classes.map(String.init) ?? "auto"), s("on-nonfinite", onNonfinite.rawValue)]
    }

    public var identity: String {
        let short = ["hidden": "hidden", "layers": "layers", "arch": "arch", "unidirectional": "bidirectional", "dropout": "dropout",
                     "batch-size": "batch", "shard-size": "shard", "seed": "seed", "optimizer": "opt", "lr": "lr", "momentum": "mom",
                     "weight-decay": "wd", "beta1": "b1", "beta2": "b2", "eps": "eps", "max-norm": "maxnorm", "classes": "classes",
                     "on-nonfinite": "nonfinite"]
        return mathFields.map { f in
            // The historical spelling, so that the config hash of existing checkpoints is unchanged.
            let v = f.key == "unidirectional" ? "\(bidirectional)" : f.bits
            return "\(short[f.key]!)=\(v)"
        }.joined(separator: ";")
    }

    /// Each math field whose value differs from the one recorded in `identity`, with both values.
    public func differences(fromIdentity recorded: String) -> [String] {
        var old: [String: String] = [:]
        for part in recorded.split(separator: ";") {
            let kv = part.split(separator: "=", maxSplits: 1).map(String.init)
            if kv.count == 2 { old[kv[0]] = kv[1] }
        }
        let mine = Dictionary(uniqueKeysWithValues: identity.split(separator: ";").map { p -> (String, String) in
            let kv = p.split(separator: "=", maxSplits: 1).map(String.init); return (kv[0], kv.count > 1 ? kv[1] : "")
        })
        var out: [String] = []
        for (f, part) in zip(mathFields, identity.split(separator: ";")) {
            let short = String(part.split(separator: "=")[0])
            guard let was = old[short], was != mine[short] else { continue }
            out.append("--\(f.key): the checkpoint has \(RunConfig.shown(short, was)), this run \(f.shown)")
        }
        return out
    }

    /// A recorded identity value as the user reads it (floats are stored as their bits).
    static func shown(_ short: String, _ v: String) -> String {
        if short == "bidirectional" { return v == "true" ? "false" : "true" }
        let floats: Set = ["dropout", "lr", "mom", "wd", "b1", "b2", "eps", "maxnorm"]
        if floats.contains(short), let b = UInt32(v) { return "\(Float(bitPattern: b))" }
        return v
    }

    public var hash: String { SHA256.hex(Array(identity.utf8)) }

    /// The training data this config names (the synthetic task when none).
    public func loadData() throws -> Dataset {
        if let data { return try Dataset.load(npz: data, classes: classes) }
        return synthetic.generate(seed: seed)
    }
}
