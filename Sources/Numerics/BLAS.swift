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

    /// A weight matrix packed once for many products `C += A · Wᵀ` (W [n x k]) or, not
    /// `transposed`, `C += A · W` (W [k x n]): a recurrence's every time step.
    ///
    /// Portable mode: packed in the layout Lockstep's kernels read (`lockstep_gemm_pack_b`); the
    /// chains are the same, so the bits are `sgemm`'s by construction, for any row blocks.
    /// OpenBLAS mode (`transposed` only): OpenBLAS's own kernel and copy routines replayed in its
    /// driver's order (CPortableGEMM/prepacked_gemm.c); nil where that cannot be shown: BLAS
    /// threads above 1, a kernel the replay does not know, `LOCKSTEP_PREPACK=off`, or a shape
    /// whose products differed from `cblas_sgemm`'s in the bit-for-bit check run once per shape
    /// in this process. nil too when memory is short; callers then use `sgemm`.
    public final class PackedWeights {
        private let packed: UnsafeMutablePointer<Float>
        private let w: UnsafePointer<Float>, ldw: Int  // for row counts beyond the replay's panel, and the portable n mod 8 columns
        private let portable: Bool, transposed: Bool
        public let n: Int, k: Int

        /// Rows that may be cut into blocks at multiples of `panel` and still get the bits of one
        /// product over all rows, when built with `blockedRows` (checked like the rest).
        public static let panel = 12

        public init?(w: UnsafePointer<Float>, ldw: Int, n: Int, k: Int, blockedRows: Bool = false, transposed: Bool = true) {
            guard n > 0, k > 0, BLAS.prepackAllowed else { return nil }
            self.n = n; self.k = k; self.w = w; self.ldw = ldw; self.transposed = transposed
            if BLAS.mode == .portable {
                guard let packed = PackedWeights.allocate(count: lockstep_gemm_packed_size(n, k)) else { return nil }
                self.packed = packed
                portable = true
                lockstep_gemm_pack_b(transposed ? 1 : 0, n, k, w, ldw, packed, BLAS.portablePath)
                return
            }
            guard transposed, BLAS.prepackEnabled, BLAS.threads == 1, BLAS.prepackVerified(n: n, k: k, blockedRows: blockedRows),
                  let packed = PackedWeights.allocate(count: lockstep_prepack_size(n, k)) else { return nil }
            self.packed = packed
            portable = false
            lockstep_prepack_w(w, ldw, n, k, packed)
        }

        deinit { free(packed) }

        /// A 4 KiB-aligned buffer for the packed W; nil when memory is short (then `sgemm` packs as it goes).
        fileprivate static func allocate(count: Int) -> UnsafeMutablePointer<Float>? {
            var raw: UnsafeMutableRawPointer? = nil
            let status = posix_memalign(&raw, 4096, count * MemoryLayout<Float>.size)
            guard status == 0, let raw else { return nil }
            return raw.bindMemory(to: Float.self, capacity: count)
        }

        /// Row-major C[m x n] += A[m x k] · Wᵀ (or · W).
        @inline(__always)
        public func accumulate(m: Int, a: UnsafePointer<Float>, lda: Int, c: UnsafeMutablePointer<Float>, ldc: Int) {
            if m == 0 { return }
            if portable {
                lockstep_gemm_packed(0, m, n, k, a, lda, packed, w, ldw, transposed ? 1 : 0, 1, c, ldc, BLAS.portablePath)
            } else if lockstep_prepacked_gemm(m, n, k, a, lda, packed, c, ldc) == 0 {
                BLAS.sgemm(transA: false, transB: true, m: m, n: n, k: k, a: a, lda: lda, b: w, ldb: ldw, beta: 1, c: c, ldc: ldc)
            }
        }
    }

    /// Whether this OpenBLAS kernel has a replay (`LOCKSTEP_PREPACK=off` says no: a benchmark hook).
    public static let prepackSupported: Bool =
        ProcessInfo.processInfo.environment["LOCKSTEP_PREPACK"] != "off" && lockstep_prepacked_available(coreName) == 1
    /// A test hook: false makes every `PackedWeights` nil, so callers take `sgemm`.
    nonisolated(unsafe) public static var prepackAllowed = true
    private static var prepackEnabled: Bool { prepackSupported && prepackAllowed }
    private static let prepackLock = NSLock()
    nonisolated(unsafe) private static var prepackChecked: [Int: Bool] = [:]

    /// Whether the replay gives `cblas_sgemm`'s bits for W [n x k]: every row count up to 64
    /// (the driver cuts rows in panels of 12, then 4, then the rest) and two beyond, on
    /// random values, compared bit for bit; with `blockedRows`, also 131 rows done in blocks
    /// cut at multiples of `panel`, against one product. Run once per shape per process.
    static func prepackVerified(n: Int, k: Int, blockedRows: Bool) -> Bool {
        prepackLock.lock(); defer { prepackLock.unlock() }
        let key = (n &* 65_536 &+ k) &* 2 &+ (blockedRows ? 1 : 0)
        if let known = prepackChecked[key] { return known }
        var state = UInt64(truncatingIfNeeded: n &* 31 &+ k) | 1
        func next() -> Float {  // values in [-1, 1) of every magnitude the 24 bits give
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Float(Int32(truncatingIfNeeded: state >> 32)) / 2_147_483_648
        }
        let maxRows = 131
        let w = (0..<(n * k)).map { _ in next() }
        let a = (0..<(maxRows * k)).map { _ in next() }
        let c0 = (0..<(maxRows * n)).map { _ in next() }
        guard let packed = PackedWeights.allocate(count: lockstep_prepack_size(n, k)) else { return false }  // not cached: may succeed later
        defer { free(packed) }
        var ok = true
        w.withUnsafeBufferPointer { W in a.withUnsafeBufferPointer { A in
            lockstep_prepack_w(W.baseAddress!, k, n, k, packed)
            // Each case: the rows of one product, then the blocks the replay does them in.
            var cases = (Array(1...64) + [100, maxRows]).map { (rows: $0, blocks: [0 ..< $0]) }
            if blockedRows {
                let p = PackedWeights.panel
                cases.append((maxRows, [0 ..< p, p ..< 3 * p, 3 * p ..< 8 * p, 8 * p ..< maxRows]))
                cases.append((8 * p + 5, [8 * p ..< 8 * p + 5, 2 * p ..< 8 * p, 0 ..< 2 * p]))
            }
            for (m, blocks) in cases where ok {
                var viaBLAS = c0, viaReplay = c0
                viaBLAS.withUnsafeMutableBufferPointer { C in
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(n), Int32(k), 1,
                                A.baseAddress!, Int32(k), W.baseAddress!, Int32(k), 1, C.baseAddress!, Int32(n))
                }
                viaReplay.withUnsafeMutableBufferPointer { C in
                    for b in blocks where ok {
                        ok = lockstep_prepacked_gemm(b.count, n, k, A.baseAddress! + b.lowerBound * k, k, packed,
                                                     C.baseAddress! + b.lowerBound * n, n) == 1
                    }
                }
                ok = ok && viaBLAS.withUnsafeBytes { x in viaReplay.withUnsafeBytes { y in x.elementsEqual(y) } }
            }
        } }
        prepackChecked[key] = ok
        return ok
    }

    /// This process's numerics mode: set once, before any product (a worker takes the run's from its welcome).
    nonisolated(unsafe) public static var mode = NumericsMode.portable

    /// The portable kernels' code path: the widest this CPU runs, or the one named by
    /// `LOCKSTEP_GEMM_PATH` (scalar, lanes8, lanes16, avx512 on x86-64; neon, neon8 on ARM64): a test hook;
    /// every path gives the same bits (a path this CPU lacks runs the scalar chain).
    nonisolated(unsafe) public static var portablePath: Int32 = {
        switch ProcessInfo.processInfo.environment["LOCKSTEP_GEMM_PATH"] {
        case "scalar": return Int32(LOCKSTEP_GEMM_SCALAR.rawValue)
        case "lanes8": return Int32(LOCKSTEP_GEMM_LANES8.rawValue)
        case "lanes16": return Int32(LOCKSTEP_GEMM_LANES16.rawValue)
        case "avx512": return Int32(LOCKSTEP_GEMM_AVX512.rawValue)
        case "neon": return Int32(LOCKSTEP_GEMM_NEON.rawValue)
        case "neon8": return Int32(LOCKSTEP_GEMM_NEON8.rawValue)
        default: return lockstep_gemm_best_path()
        }
    }()

    /// The portable path's name, as printed with a hash.
    public static var portablePathName: String {
        switch portablePath {
        case Int32(LOCKSTEP_GEMM_LANES16.rawValue): "AVX2+FMA 16-column tiles"
        case Int32(LOCKSTEP_GEMM_LANES8.rawValue): "AVX2+FMA 8-column tiles"
        case Int32(LOCKSTEP_GEMM_AVX512.rawValue): "AVX-512 32-column tiles"
        case Int32(LOCKSTEP_GEMM_NEON.rawValue): "NEON 16-column tiles"
        case Int32(LOCKSTEP_GEMM_NEON8.rawValue): "NEON 8-column tiles"
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
