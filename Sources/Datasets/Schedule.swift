import Numerics

/// Which sequences make each global batch and how batches are cut into shards (DESIGN.md §3.1).
///
/// Epoch `e`: a Philox shuffle from `(seed, e)`; windows of `16 · batchSize` sequences are
/// sorted by length (descending, ties by index) and cut into batches, whose order is then
/// shuffled; each batch is dealt into `ceil(batchSize / shardSize)` shards by position
/// (position `i` of the length-sorted batch goes to shard `i mod count`), so the shards of a
/// step carry nearly equal frames and workers finish together. Nothing here depends on the
/// number of workers.
public struct Schedule: Sendable {
    public let lengths: [Int]
    public let batchSize: Int
    public let shardSize: Int
    public let seed: UInt64
    public static let bucketBatches = 16

    public init(lengths: [Int], batchSize: Int, shardSize: Int, seed: UInt64) {
        self.lengths = lengths
        self.batchSize = batchSize
        self.shardSize = shardSize
        self.seed = seed
    }

    public var batchesPerEpoch: Int { (lengths.count + batchSize - 1) / batchSize }
    /// The most shards a step has (a full batch); a last, smaller batch has fewer.
    public var maxShards: Int { shardCount(batchSize) }
    func shardCount(_ sequences: Int) -> Int { (sequences + shardSize - 1) / shardSize }
    /// Frames of the largest shard any epoch can deal: at most the `shardSize` longest sequences.
    /// A sort of every length: callers keep it (`Trainer.largestShardFrames`). Saturates at Int.max.
    public var largestShardFrames: Int {
        lengths.sorted(by: >).prefix(shardSize).reduce(0) { $0.addingReportingOverflow($1).overflow ? .max : $0 + $1 }
    }

    static func permutation(_ n: Int, seed: UInt64, purpose: RandomPurpose, epoch: Int) -> [Int] {
        var p = Array(0..<n)
        if n < 2 { return p }
        for i in stride(from: n - 1, through: 1, by: -1) {
            let r = Philox.block(key: seed, counter: SIMD4(purpose.rawValue, UInt32(truncatingIfNeeded: epoch), UInt32(i), 0))
            let j = Int((UInt64(r[0]) << 32 | UInt64(r[1])) % UInt64(i + 1))
            p.swapAt(i, j)
        }
        return p
    }

    /// The batches of one epoch, as lists of dataset indices sorted by length.
    public func batches(epoch: Int) -> [[Int]] {
        let perm = Schedule.permutation(lengths.count, seed: seed, purpose: .shuffle, epoch: epoch)
        var batches: [[Int]] = []
        let window = batchSize * Schedule.bucketBatches
        var start = 0
        while start < perm.count {
            let w = perm[start..<min(start + window, perm.count)].sorted {
                lengths[$0] != lengths[$1] ? lengths[$0] > lengths[$1] : $0 < $1
            }
            var b = 0
            while b < w.count { batches.append(Array(w[b..<min(b + batchSize, w.count)])); b += batchSize }
            start += window
        }
        let order = Schedule.permutation(batches.count, seed: seed, purpose: .batchOrder, epoch: epoch)
        return order.map { batches[$0] }
    }

    /// Deals a length-sorted batch into shards of at most `shardSize` sequences, round-robin by
    /// position. A contiguous cut would give one worker the longest sequences and leave the other idle
    /// at the step barrier; dealt shards differ by at most one sequence and stay length-sorted.
    public func shards(of batch: [Int]) -> [[Int]] {
        let count = shardCount(batch.count)
        return (0..<count).map { k in stride(from: k, to: batch.count, by: count).map { batch[$0] } }
    }

    /// (epoch, index within the epoch) of a global step.
    public func position(step: Int) -> (epoch: Int, index: Int) {
        (step / batchesPerEpoch, step % batchesPerEpoch)
    }
}
