/// The fixed pairwise reduction tree over shard indices (DESIGN.md §3.3).
///
/// `[lo, hi)` splits at `lo + p` where `p` is the largest power of two below `hi - lo`, so
/// the tree's shape depends only on the count, and every power-of-two-aligned block of
/// shards is a subtree (a worker owning one may pre-add it without changing the bits).
public enum TreeSum {
    public static func split(_ lo: Int, _ hi: Int) -> Int {
        let n = hi - lo
        var p = 1
        while p * 2 < n { p *= 2 }
        return lo + p
    }

    /// Adds `parts` in tree order, in place: the sum ends up in (and is) `parts[0]`, and the
    /// other parts are overwritten with partial sums. Every element sees `left + right` at each
    /// node, so the bits depend only on the tree.
    @discardableResult
    public static func reduceInPlace(_ parts: [FloatBuffer]) -> FloatBuffer {
        precondition(!parts.isEmpty, "reduce of no parts")
        func go(_ lo: Int, _ hi: Int) {
            if hi - lo == 1 { return }
            let mid = split(lo, hi)
            go(lo, mid)
            go(mid, hi)
            add(parts[lo].ptr, parts[mid].ptr, parts[lo].count)
        }
        go(0, parts.count)
        return parts[0]
    }

    /// The tree sum into a new buffer, leaving `parts` untouched.
    public static func reduce(_ parts: [FloatBuffer]) -> FloatBuffer {
        parts.count == 1 ? parts[0].clone() : reduce(parts) { _, _ in }
    }

    /// Floats per block handed to `eachBlock`: a multiple of 8, small enough to stay in L2.
    public static let block = 1 << 14

    /// The tree sum, leaving `parts` untouched (with one part, the sum *is* `parts[0]`). The root
    /// addition runs block by block, and `eachBlock(start, count)` sees each finished block of
    /// the sum in index order while it is still in cache: a reader such as the gradient norm
    /// costs no extra pass over memory. Each node writes `left + right` into a new buffer: the
    /// same bits as `reduceInPlace`, with the parts kept for a caller that must name a bad one.
    ///
    /// `spans[i]`, when given, is how many consecutive shards part i already sums (a worker's
    /// pre-added block): each must be a subtree of the tree over all the shards (an aligned block,
    /// `Subtrees.isSubtree`), and is taken as that node, so the sum has the bits of the tree over
    /// the single shards.
    public static func reduce(_ parts: [FloatBuffer], spans: [Int]? = nil, eachBlock: (UnsafePointer<Float>, Int) -> Void) -> FloatBuffer {
        precondition(!parts.isEmpty, "reduce of no parts")
        let n = parts[0].count
        let leaves = Leaves(spans ?? Array(repeating: 1, count: parts.count))
        func go(_ lo: Int, _ hi: Int, root: Bool) -> FloatBuffer {
            if let i = leaves.part(lo, hi) { return parts[i] }
            let mid = split(lo, hi)
            let a = go(lo, mid, root: false), b = go(mid, hi, root: false)
            let out = FloatBuffer(uninitializedCount: n)
            forEachBlock(n) { i, m in
                for j in i..<(i + m) { out.ptr[j] = a.ptr[j] + b.ptr[j] }
                if root { eachBlock(out.ptr + i, m) }
            }
            return out
        }
        let sum = go(0, leaves.shards, root: true)
        if parts.count == 1 { forEachBlock(n) { i, m in eachBlock(sum.ptr + i, m) } }
        return sum
    }

    /// Parts over consecutive runs of shards, found by the tree node they stand for.
    struct Leaves {
        private var byStart: [Int: (part: Int, end: Int)] = [:]
        let shards: Int
        init(_ spans: [Int]) {
            var at = 0
            for (i, s) in spans.enumerated() {
                precondition(s >= 1, "a part covers at least one shard")
                byStart[at] = (i, at + s)
                at += s
            }
            shards = at
            for (start, leaf) in byStart where leaf.end - start > 1 {
                precondition(TreeSum.isSubtree(start, leaf.end, of: at), "shards \(start)..<\(leaf.end) are not a subtree of the tree over \(at)")
            }
        }
        /// The part that is node [lo, hi), if one is.
        func part(_ lo: Int, _ hi: Int) -> Int? {
            guard let leaf = byStart[lo], leaf.end == hi else { return nil }
            return leaf.part
        }
    }

    /// Whether shards [lo, hi) are one node of the tree over `n` shards.
    public static func isSubtree(_ lo: Int, _ hi: Int, of n: Int) -> Bool {
        var a = 0, b = n
        while true {
            if a == lo && b == hi { return true }
            if b - a <= 1 || lo < a || hi > b { return false }
            let mid = split(a, b)
            if hi <= mid { b = mid } else if lo >= mid { a = mid } else { return false }
        }
    }

    /// Calls `body(start, count)` for consecutive blocks of `[0, n)`.
    private static func forEachBlock(_ n: Int, _ body: (Int, Int) -> Void) {
        var i = 0
        while i < n { body(i, Swift.min(block, n - i)); i += block }
    }

    /// The same tree over plain numbers (loss sums), in Double; `spans` as for the buffers.
    public static func reduce(_ xs: [Double], spans: [Int]? = nil) -> Double {
        if xs.isEmpty { return 0 }
        let leaves = Leaves(spans ?? Array(repeating: 1, count: xs.count))
        func go(_ lo: Int, _ hi: Int) -> Double {
            if let i = leaves.part(lo, hi) { return xs[i] }
            let mid = split(lo, hi)
            return go(lo, mid) + go(mid, hi)
        }
        return go(0, leaves.shards)
    }

    @inline(__always)
    public static func add(_ a: UnsafeMutablePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) {
        for i in 0..<n { a[i] += b[i] }
    }
}
