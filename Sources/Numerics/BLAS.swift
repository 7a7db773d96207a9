import COpenBLAS

/// Row-major single-precision GEMM: `C = alpha · op(A) · op(B) + beta · C`, `op(A)` is m×k.
///
/// OpenBLAS gives the same bits at any thread count but different bits on different CPU
/// kernels, which is why workers report `BLAS.coreName` with their numerics fingerprint.
public enum BLAS {
    @inline(__always)
    public static func sgemm(
        transA: Bool, transB: Bool, m: Int, n: Int, k: Int,
        alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, ldb: Int,
        beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        if m == 0 || n == 0 { return }
        if k == 0 {
            for r in 0..<m { for j in 0..<n { c[r * ldc + j] = beta == 0 ? 0 : beta * c[r * ldc + j] } }
            return
        }
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// Threads OpenBLAS may use in this process (processes are the unit of parallelism: default 1).
    public static func setThreads(_ n: Int) { openblas_set_num_threads(Int32(n)) }

    /// Threads OpenBLAS uses now.
    public static var threads: Int { Int(openblas_get_num_threads()) }

    /// The library and its version, e.g. "OpenBLAS 0.3.21" (the build options, which name the
    /// kernel too, are left out: the kernel is `coreName`).
    public static var libraryVersion: String {
        guard let p = openblas_get_config() else { return "unknown" }
        return String(cString: p).split(separator: " ").prefix(2).joined(separator: " ")
    }

    /// The OpenBLAS kernel chosen for this CPU, e.g. "Haswell" (overridable by OPENBLAS_CORETYPE).
    public static var coreName: String {
        guard let p = openblas_get_corename() else { return "unknown" }
        return String(cString: p)
    }
}
