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
        reduceInPlace(parts.map { $0.clone() })
    }

    /// The same tree over plain numbers (loss sums), in Double.
    public static func reduce(_ xs: [Double]) -> Double {
        func go(_ lo: Int, _ hi: Int) -> Double {
            if hi - lo == 1 { return xs[lo] }
            let mid = split(lo, hi)
            return go(lo, mid) + go(mid, hi)
        }
        return xs.isEmpty ? 0 : go(0, xs.count)
    }

    @inline(__always)
    public static func add(_ a: UnsafeMutablePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) {
        for i in 0..<n { a[i] += b[i] }
    }
}
