import BiLSTM
import Datasets
import FileIO
import Formats
import Foundation
import Numerics

/// Forward-only sums over labelled frames: validation during training, `coord eval`.
///
/// Each shard's sums are a pure function of (weights, the shard's sequences); shards are added
/// in shard order with the fixed tree for the loss and exactly for the counts, so every figure
/// is the same bits whoever computed which shard, at any worker or thread count.
public struct EvalSums: Equatable, Sendable {
    public let classes: Int
    public var lossSum: Double = 0
    public var frames = 0
    public var correct = 0
    /// Non-zero cells of the confusion matrix, `true · C + predicted` → frames (sparse: a model
    /// may have 65,536 classes).
    public var confusion: [Int: Int] = [:]

    public init(classes: Int) { self.classes = classes }

    /// Shards' sums in shard order: the loss through `TreeSum`, the counts exactly.
    public static func combine(_ parts: [EvalSums], classes: Int) -> EvalSums {
        var s = EvalSums(classes: classes)
        s.lossSum = TreeSum.reduce(parts.map(\.lossSum))
        for p in parts {
            s.frames += p.frames
            s.correct += p.correct
            s.confusion.merge(p.confusion, uniquingKeysWith: +)
        }
        return s
    }

    /// Mean NLL per frame.
    public var loss: Double { frames > 0 ? lossSum / Double(frames) : .nan }
    public var accuracy: Double { frames > 0 ? Double(correct) / Double(frames) : .nan }
    public func cell(true t: Int, predicted p: Int) -> Int { confusion[t * classes + p] ?? 0 }

    /// Per class: frames of that class, frames predicted as it, and frames both.
    public struct PerClass: Sendable {
        public var truth: [Int], predicted: [Int], hits: [Int]
        /// nil where the class never occurs (recall) or is never predicted (precision).
        public func recall(_ c: Int) -> Double? { truth[c] > 0 ? Double(hits[c]) / Double(truth[c]) : nil }
        public func precision(_ c: Int) -> Double? { predicted[c] > 0 ? Double(hits[c]) / Double(predicted[c]) : nil }
        public func f1(_ c: Int) -> Double? {
            guard let p = precision(c), let r = recall(c) else { return nil }
            return p + r > 0 ? 2 * p * r / (p + r) : 0
        }
        /// The mean F1 over the classes that occur or are predicted (scikit-learn's macro average:
        /// a class that occurs but is never predicted counts 0), in class order.
        public var macroF1: Double {
            let seen = truth.indices.filter { truth[$0] > 0 || predicted[$0] > 0 }
            guard !seen.isEmpty else { return 0 }
            return seen.reduce(0.0) { $0 + (f1($1) ?? 0) } / Double(seen.count)
        }
    }

    public var perClass: PerClass {
        var c = PerClass(truth: .init(repeating: 0, count: classes), predicted: .init(repeating: 0, count: classes),
                         hits: .init(repeating: 0, count: classes))
        for (k, n) in confusion {
            let (t, p) = k.quotientAndRemainder(dividingBy: classes)
            c.truth[t] += n
            c.predicted[p] += n
            if t == p { c.hits[t] += n }
        }
        return c
    }

    /// `[correct, then (cell, frames) pairs by cell]`: the counts as a worker sends them.
    public var counts: [Int] {
        [correct] + confusion.keys.sorted().flatMap { [$0, confusion[$0]!] }
    }

    /// Reads `counts`; nil when they are not well formed for `classes`.
    public init?(classes: Int, lossSum: Double, frames: Int, counts: [Int]) {
        guard counts.count % 2 == 1, let correct = counts.first, correct >= 0, correct <= frames else { return nil }
        self.classes = classes
        self.lossSum = lossSum
        self.frames = frames
        self.correct = correct
        var total = 0, diagonal = 0, last = -1
        for i in stride(from: 1, to: counts.count, by: 2) {
            let cell = counts[i], n = counts[i + 1]
            guard cell > last, cell < classes * classes, n > 0, n <= frames else { return nil }
            last = cell
            confusion[cell] = n
            total += n
            if cell % classes == cell / classes { diagonal += n }
        }
        guard total == frames, diagonal == correct else { return nil }
    }
}

/// How a set of sequences is cut for forward-only work: sorted by length (descending, ties by
/// index), cut into batches of `batchSize`, each dealt into shards of at most `shardSize` like a
/// training batch. Depends only on the lengths and the two sizes.
public enum EvalPlan {
    public static func shards(lengths: [Int], batchSize: Int, shardSize: Int) -> [[Int]] {
        let order = lengths.indices.sorted { lengths[$0] != lengths[$1] ? lengths[$0] > lengths[$1] : $0 < $1 }
        let dealer = Schedule(lengths: lengths, batchSize: batchSize, shardSize: shardSize, seed: 0)
        var out: [[Int]] = []
        var b = 0
        while b < order.count {
            out += dealer.shards(of: Array(order[b..<min(b + batchSize, order.count)]))
            b += batchSize
        }
        return out
    }
}

/// One shard's forward pass without dropout, read out per frame.
public struct ForwardOutput {
    public var sums: EvalSums
    /// Per sequence of the shard (in the given order): the argmax class of each frame.
    public var predictions: [[Int32]]
    /// Per sequence, `[length, C]` log-probabilities, when asked for.
    public var logprobs: [[Float]]?
}

extension Engine {
    /// Forward without dropout over `examples`; sums over frames whose label is >= 0.
    public func evaluate(params: FloatBuffer, examples: [Example], keepLogprobs: Bool = false) -> ForwardOutput {
        let C = config.classes
        let batch = PackedBatch(examples, inputSize: config.inputSize)
        let r = forward(params: params, batch: batch, dropout: nil, forBackward: false)
        let lp = logp!
        var sums = EvalSums(classes: C)
        sums.lossSum = r.lossSum
        sums.frames = r.frames
        var predictions = examples.map { [Int32](repeating: 0, count: $0.length) }
        var logprobs: [[Float]]? = keepLogprobs ? examples.map { [Float](repeating: 0, count: $0.length * C) } : nil
        for t in 0..<batch.steps {
            for j in 0..<batch.batchSizes[t] {
                let row = batch.offsets[t] + j
                let p = lp + row * C
                var best = 0
                for k in 1..<C where p[k] > p[best] { best = k }
                let e = batch.order[j]
                predictions[e][t] = Int32(best)
                if keepLogprobs { for k in 0..<C { logprobs![e][t * C + k] = p[k] } }
                let y = Int(batch.y[row])
                if y >= 0 {
                    sums.confusion[y * C + best, default: 0] += 1
                    if y == best { sums.correct += 1 }
                }
            }
        }
        return ForwardOutput(sums: sums, predictions: predictions, logprobs: logprobs)
    }
}

extension ShardComputerPool {
    /// Forward-only sums of every shard, `count` at a time; in shard order.
    public func evaluateAll(params: FloatBuffer, shards: [[Example]]) -> [EvalSums] {
        var out = [EvalSums?](repeating: nil, count: shards.count)
        let lock = NSLock()
        forEach(shards.count) { k in
            let s = self.with { $0.engine.evaluate(params: params, examples: shards[k]).sums }
            lock.withLock { out[k] = s }
        }
        return out.map { $0! }
    }
}

/// A trained model over a data file, batch by batch: what `coord eval` and `coord predict` run.
/// Memory is the data plus one batch's activations per thread, not the file's activations.
public enum Inference {
    /// The checkpoint (verified) and the data, refused before any work when they do not fit.
    public static func load(checkpoint: String, data: String, labels: Dataset.Labels) throws -> (Checkpoint, Dataset) {
        let ck = try Checkpoint.load(path: checkpoint)
        // A packed directory is read batch by batch, not whole.
        let set = DataManifest.isPacked(data) ? try PackedData.open(data, classes: ck.model.classes, labels: labels)
                                              : try Dataset.load(npz: data, classes: ck.model.classes, labels: labels)
        guard set.inputSize == ck.model.inputSize else {
            throw LockstepError("\(data): x has d_in = \(set.inputSize) features per frame but the model in \(checkpoint) takes \(ck.model.inputSize)",
                                hint: "use data with the model's input width (the features it was trained on)")
        }
        return (ck, set)
    }

    public struct Output {
        public var sums: EvalSums
        /// Per sequence of the data, in its order: argmax per frame, and `[length, C]` log-probabilities.
        public var predictions: [[Int32]]?
        public var logprobs: [[Float]]?
    }

    /// Forward without dropout over every sequence, in batches of `batchSize` (one shard each),
    /// `threads` batches at once. `progress` gets the sequences done so far.
    public static func run(model: ModelConfig, params: FloatBuffer, data: Dataset, batchSize: Int, threads: Int,
                           predictions: Bool = false, logprobs: Bool = false, progress: (Int) -> Void = { _ in }) throws -> Output {
        var m = model
        m.dropout = 0
        let pool = ShardComputerPool(model: m, seed: 0, count: threads)
        let shards = EvalPlan.shards(lengths: data.lengths, batchSize: batchSize, shardSize: batchSize)
        var sums = [EvalSums?](repeating: nil, count: shards.count)
        var preds: [[Int32]]? = predictions || logprobs ? [[Int32]](repeating: [], count: data.count) : nil
        var lps: [[Float]]? = logprobs ? [[Float]](repeating: [], count: data.count) : nil
        let lock = NSLock()
        var failure: Error?
        var done = 0
        // A round of `threads` batches at a time, so progress is reported between rounds.
        var first = 0
        while first < shards.count {
            let round = Array(shards[first..<min(first + max(threads, 1) * 4, shards.count)])
            let base = first
            pool.forEach(round.count) { k in
                let ids = round[k]
                let examples: [Example]
                do { examples = try ids.map { try data.example($0) } } catch {
                    lock.withLock { failure = failure ?? error }
                    return
                }
                let out = pool.with { $0.engine.evaluate(params: params, examples: examples, keepLogprobs: logprobs) }
                lock.withLock {
                    sums[base + k] = out.sums
                    if preds != nil { for (j, i) in ids.enumerated() { preds![i] = out.predictions[j] } }
                    if lps != nil { for (j, i) in ids.enumerated() { lps![i] = out.logprobs![j] } }
                }
            }
            if let failure { throw failure }
            first += round.count
            done += round.reduce(0) { $0 + $1.count }
            progress(done)
        }
        return Output(sums: EvalSums.combine(sums.map { $0! }, classes: m.classes), predictions: preds, logprobs: lps)
    }

    /// `pred` int64 `[N, Lmax]` (-1 on padding) and, when given, `logprobs` float32 `[N, Lmax, C]`
    /// (0 on padding), as an `.npz` written atomically.
    public static func writePredictions(_ out: Output, data: Dataset, classes: Int, to path: String) throws {
        let n = data.count, lmax = data.paddedLength
        var pred = [Int64](repeating: -1, count: n * lmax)
        for (i, p) in (out.predictions ?? []).enumerated() { for t in p.indices { pred[i * lmax + t] = Int64(p[t]) } }
        func bytes<T>(_ a: [T]) -> [UInt8] { a.withUnsafeBytes { Array($0) } }
        var members = [("pred.npy", NPYArray.encode(descr: "<i8", shape: [n, lmax], data: bytes(pred)))]
        if let lps = out.logprobs {
            var lp = [Float](repeating: 0, count: n * lmax * classes)
            for (i, l) in lps.enumerated() { for k in l.indices { lp[i * lmax * classes + k] = l[k] } }
            members.append(("logprobs.npy", NPYArray.encode(descr: "<f4", shape: [n, lmax, classes], data: bytes(lp))))
        }
        let zip64 = members.reduce(0) { $0 + $1.1.count } > Int(UInt32.max) - 1 << 20
        try AtomicFile.write(ZipArchive.write(members, zip64: zip64), to: path)
    }
}
