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

    /// Adds `parts` into `parts[0]` in tree order. All parts must have the same count.
    public static func reduce(_ parts: [FloatBuffer]) -> FloatBuffer {
        precondition(!parts.isEmpty, "reduce of no parts")
        let out = parts[0].clone()
        if parts.count > 1 { reduceInto(out, parts, 0, parts.count) }
        return out
    }

    /// out = sum(parts[lo..<hi]) where out may already hold parts[lo].
    private static func reduceInto(_ out: FloatBuffer, _ parts: [FloatBuffer], _ lo: Int, _ hi: Int) {
        if hi - lo == 1 { return }
        let mid = split(lo, hi)
        reduceInto(out, parts, lo, mid)
        let right = parts[mid].clone()
        reduceInto(right, parts, mid, hi)
        add(out.ptr, right.ptr, out.count)
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
