import BiLSTM
import Formats
import Foundation
import Numerics

/// One optimizer step's outcome, as logged to metrics.jsonl.
public struct StepReport: Sendable {
    public var step: Int          // 1-based: the number of steps done after this one
    public var epoch: Int
    /// The run's last step (`--steps`, or `--epochs` × batches per epoch): what `coord status` counts to.
    public var totalSteps: Int = 0
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


}
