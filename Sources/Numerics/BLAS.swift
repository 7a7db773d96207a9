import COpenBLAS
import CPortableGEMM
import Foundation

/// How matrix products are computed. `openblas`: OpenBLAS's kernel for this CPU (fast; its bits
/// depend on the kernel). `portable`: Lockstep's own GEMM, every element one chain of fused
/// multiply-adds in k order, so the bits are the same on any CPU with FMA (x86-64 AVX2+FMA,
/// ARM64) and on every code path of the kernels.
public enum NumericsMode: String, Codable, Sendable, CaseIterable { case openblas, portable }

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
        if mode == .portable {
            precondition(alpha == 1 && (beta == 0 || beta == 1), "the portable GEMM computes C = op(A)·op(B) (+ C)")
            lockstep_gemm(transA ? 1 : 0, transB ? 1 : 0, m, n, k, a, lda, b, ldb, beta == 1 ? 1 : 0, c, ldc, portablePath)
            return
        }
        if k == 0 {
            for r in 0..<m { for j in 0..<n { c[r * ldc + j] = beta == 0 ? 0 : beta * c[r * ldc + j] } }
            return
        }
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// This process's numerics mode: set once, before any product (a worker takes the run's from its welcome).
    nonisolated(unsafe) public static var mode = NumericsMode.openblas

    /// The portable kernels' code path: the widest this CPU runs, or the one named by
    /// `LOCKSTEP_GEMM_PATH` (scalar, lanes8, lanes16): a test hook; every path gives the same bits.
    nonisolated(unsafe) public static var portablePath: Int32 = {
        switch ProcessInfo.processInfo.environment["LOCKSTEP_GEMM_PATH"] {
        case "scalar": return Int32(LOCKSTEP_GEMM_SCALAR.rawValue)
        case "lanes8": return Int32(LOCKSTEP_GEMM_LANES8.rawValue)
        case "lanes16": return Int32(LOCKSTEP_GEMM_LANES16.rawValue)
        default: return lockstep_gemm_best_path()
        }
    }()

    /// The portable path's name, as printed with a hash.
    public static var portablePathName: String {
        switch portablePath {
        case Int32(LOCKSTEP_GEMM_LANES16.rawValue): "AVX2+FMA 16-column tiles"
        case Int32(LOCKSTEP_GEMM_LANES8.rawValue): "AVX2+FMA 8-column tiles"
        default: "scalar fmaf"
        }
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
