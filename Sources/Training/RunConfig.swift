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

    public init() {}

    public static let defaultSteps = 300

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
        if let c = classes, c < 2 { p.append("--classes must be at least 2 (got \(c))") }
        if data == nil { p += synthetic.problems() }
        let m = ModelConfig(inputSize: 1, hidden: hidden, layers: layers, classes: 2,
                            bidirectional: bidirectional, arch: arch, dropout: dropout)
        p += m.problems().map { "model: \($0)" }
        return p
    }

    /// The fields that define the math of a run; resuming with any of them changed is refused.
    public var identity: String {
        let o = optimizer
        return ["hidden=\(hidden)", "layers=\(layers)", "arch=\(arch.rawValue)", "bidirectional=\(bidirectional)",
                "dropout=\(dropout.bitPattern)", "batch=\(batchSize)", "shard=\(shardSize)", "seed=\(seed)",
                "opt=\(o.kind.rawValue)", "lr=\(o.lr.bitPattern)", "mom=\(o.momentum.bitPattern)", "wd=\(o.weightDecay.bitPattern)",
                "b1=\(o.beta1.bitPattern)", "b2=\(o.beta2.bitPattern)", "eps=\(o.eps.bitPattern)", "maxnorm=\(maxNorm.bitPattern)",
                "classes=\(classes.map(String.init) ?? "auto")", "nonfinite=\(onNonfinite.rawValue)"].joined(separator: ";")
    }

    public var hash: String { SHA256.hex(Array(identity.utf8)) }

    /// The training data this config names (the synthetic task when none).
    public func loadData() throws -> Dataset {
        if let data { return try Dataset.load(npz: data, classes: classes) }
        return synthetic.generate(seed: seed)
    }
}
