/// One labelled sequence: `x` is `[length, inputSize]` row-major, `y` is `[length]`
/// (class index, or -1 for a frame the loss ignores).
public struct Example: Sendable, Equatable {
    public let id: Int
    public let x: [Float]
    public let y: [Int32]
    public var length: Int { y.count }

    public init(id: Int, x: [Float], y: [Int32]) {
        self.id = id
        self.x = x
        self.y = y
    }
}

/// Sequences sorted by length (descending, ties in input order) and laid out time-major and
/// packed: at step `t` only the first `batchSizes[t]` sequences are active and their rows are
/// `offsets[t] ..< offsets[t] + batchSizes[t]` (PyTorch's `PackedSequence`, DESIGN.md §2).
public struct PackedBatch: Sendable {
    public let inputSize: Int
    /// order[j] = index (in the given list) of the j-th longest sequence.
    public let order: [Int]
    public let ids: [Int]          // [B] in sorted order
    public let lengths: [Int]      // [B] in sorted order
    public let batchSizes: [Int]   // [T]
    public let offsets: [Int]      // [T + 1]
    public let x: [Float]          // [N, inputSize] packed
    public let y: [Int32]          // [N] packed
    public var rows: Int { offsets[offsets.count - 1] }
    public var steps: Int { batchSizes.count }
    public var count: Int { order.count }
    /// Frames whose label counts in the loss (label >= 0).
    public let validFrames: Int

    public init(_ examples: [Example], inputSize: Int) {
        precondition(!examples.isEmpty, "a batch needs at least one sequence")
        self.inputSize = inputSize
        let order = examples.indices.sorted { a, b in
            examples[a].length != examples[b].length ? examples[a].length > examples[b].length : a < b
        }
        self.order = order
        ids = order.map { examples[$0].id }
        lengths = order.map { examples[$0].length }
        let T = lengths[0]
        var bs = [Int](repeating: 0, count: T)
        for len in lengths { for t in 0..<len { bs[t] += 1 } }
        batchSizes = bs
        var offs = [0]
        for b in bs { offs.append(offs.last! + b) }
        offsets = offs
        let n = offs[T]
        var x = [Float](repeating: 0, count: n * inputSize)
        var y = [Int32](repeating: -1, count: n)
        var valid = 0
        for t in 0..<T {
            for j in 0..<bs[t] {
                let e = examples[order[j]]
                let r = offs[t] + j
                for k in 0..<inputSize { x[r * inputSize + k] = e.x[t * inputSize + k] }
                y[r] = e.y[t]
                if e.y[t] >= 0 { valid += 1 }
            }
        }
        self.x = x
        self.y = y
        validFrames = valid
    }

    @inline(__always) public func row(_ t: Int, _ j: Int) -> Int { offsets[t] + j }

    /// The rows whose state feeds step `t`, walking forward or in reverse: the first
    /// `count` rows of step `t` continue the sequences at rows `base ..< base + count`.
    @inline(__always)
    public func predecessors(_ t: Int, reverse: Bool) -> (base: Int, count: Int) {
        if reverse { return t + 1 < steps ? (offsets[t + 1], batchSizes[t + 1]) : (0, 0) }
        return t > 0 ? (offsets[t - 1], batchSizes[t]) : (0, 0)
    }
}
