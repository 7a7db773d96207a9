import CPortableGEMM
import Foundation
@testable import Numerics
import XCTest

/// Tier 1: Lockstep's portable GEMM gives the same bits on every code path (scalar fmaf,
/// 8-column and 16-column AVX2+FMA tiles, 32-column AVX-512 tiles), for every transpose and shape, and is within
/// rounding of a double-precision reference.
final class PortableGEMMTests: XCTestCase {

    func paths() -> [Int32] {
        [Int32(LOCKSTEP_GEMM_SCALAR.rawValue)]
            + (lockstep_gemm_best_path() >= Int32(LOCKSTEP_GEMM_LANES16.rawValue) && lockstep_gemm_best_path() != Int32(LOCKSTEP_GEMM_NEON.rawValue)
                ? [Int32(LOCKSTEP_GEMM_LANES8.rawValue), Int32(LOCKSTEP_GEMM_LANES16.rawValue)] : [])
            + (PortableGEMMTests.hasAVX512 ? [Int32(LOCKSTEP_GEMM_AVX512.rawValue)] : [])
    }

    /// Whether this CPU runs the AVX-512 tiles (lockstep_gemm returns the path it used).
    static let hasAVX512: Bool = {
        var c: [Float] = [0]
        return lockstep_gemm(0, 0, 1, 1, 1, [1], 1, [1], 1, 0, &c, 1, Int32(LOCKSTEP_GEMM_AVX512.rawValue)) == Int32(LOCKSTEP_GEMM_AVX512.rawValue)
    }()

    func testTheAVX512PathIsThereOrSaysItIsSkipped() throws {
        try XCTSkipUnless(PortableGEMMTests.hasAVX512, "this CPU has no AVX-512F: its tiles are checked on a machine that has (Zen 4 from outside)")
        XCTAssertTrue(paths().contains(Int32(LOCKSTEP_GEMM_AVX512.rawValue)))
    }

    func testEveryPathGivesTheSameBitsForEveryShapeAndTransposeAndMatchesDoubles() throws {
        try XCTSkipIf(paths().count < 2, "this CPU runs the scalar path only")
        var r = Rand(s: 42)
        var worst = 0.0, cases = 0
        let shapes = [(1, 1, 1), (3, 5, 7), (4, 8, 16), (5, 17, 3), (9, 33, 40), (32, 512, 128), (13, 16, 300), (64, 40, 1), (7, 23, 0),
                      (1, 72, 257), (6, 48, 513),
                      // more rows than a packed block (96), column groups, chunks of k, and Aᵀ·B with
                      // m > n (computed as its transpose): every blocking the kernels do
                      (130, 70, 530), (70, 130, 530), (200, 300, 1100)]
        for (m, n, k) in shapes {
            for transA in [false, true] {
                for transB in [false, true] {
                    for accumulate in [false, true] {
                        let a = (0..<max(m * k, 1)).map { _ in r.next() }, b = (0..<max(k * n, 1)).map { _ in r.next() }
                        let c0 = (0..<(m * n)).map { _ in r.next() }
                        let lda = transA ? m : k, ldb = transB ? k : n
                        var results: [[Float]] = []
                        for path in paths() {
                            var c = c0
                            lockstep_gemm(transA ? 1 : 0, transB ? 1 : 0, m, n, k, a, lda, b, ldb, accumulate ? 1 : 0, &c, n, path)
                            results.append(c)
                        }
                        for (p, c) in results.enumerated().dropFirst() {
                            XCTAssertEqual(c.map(\.bitPattern), results[0].map(\.bitPattern), "path \(paths()[p]) vs scalar, \(m)x\(n)x\(k) tA \(transA) tB \(transB)")
                        }
                        for i in 0..<m where m * n * k < 10_000_000 {   // the doubles: a debug-build loop
                            for j in 0..<n {
                                var ref = accumulate ? Double(c0[i * n + j]) : 0
                                var scale = abs(ref)
                                for p in 0..<k {
                                    let x = Double(transA ? a[p * lda + i] : a[i * lda + p]), y = Double(transB ? b[j * ldb + p] : b[p * ldb + j])
                                    ref += x * y
                                    scale += abs(x * y)
                                }
                                worst = max(worst, abs(Double(results[0][i * n + j]) - ref) / max(scale, 1e-30))
                            }
                        }
                        cases += 1
                    }
                }
            }
        }
        print("portable GEMM: \(cases) cases on \(paths().count) paths, bit-identical; worst error against doubles \(worst) of the sum of |terms|")
        XCTAssertLessThan(worst, 1e-6)
    }

    /// `BLAS.PackedWeights` in portable mode (W packed once, as a recurrence does): the bits of the
    /// unpacked product on every path, for A·Wᵀ and A·W, every row count, and rows done in blocks
    /// of any size in any order.
    func testPackedWeightsGiveTheUnpackedBitsOnEveryPathForAnyRowBlocks() throws {
        let saved = (BLAS.mode, BLAS.portablePath)
        defer { BLAS.mode = saved.0; BLAS.portablePath = saved.1 }
        BLAS.mode = .portable
        var r = Rand(s: 11)
        for path in paths() {
            BLAS.portablePath = path
            for (n, k, transposed) in [(512, 128, true), (128, 512, false), (512, 40, true), (37, 300, true), (64, 9, false), (5, 3, true)] {
                let w = (0..<(n * k)).map { _ in r.next() }
                let ldw = transposed ? k : n
                let packed = try XCTUnwrap(BLAS.PackedWeights(w: w, ldw: ldw, n: n, k: k, transposed: transposed))
                for m in [1, 4, 5, 13, 32, 77] {
                    let a = (0..<(m * k)).map { _ in r.next() }, c0 = (0..<(m * n)).map { _ in r.next() }
                    var direct = c0, viaPacked = c0, viaBlocks = c0
                    lockstep_gemm(0, transposed ? 1 : 0, m, n, k, a, k, w, ldw, 1, &direct, n, path)
                    a.withUnsafeBufferPointer { A in
                        viaPacked.withUnsafeMutableBufferPointer { C in packed.accumulate(m: m, a: A.baseAddress!, lda: k, c: C.baseAddress!, ldc: n) }
                        viaBlocks.withUnsafeMutableBufferPointer { C in
                            var hi = m
                            while hi > 0 {  // last rows first, blocks of 1, 2, 3, … rows
                                let lo = max(0, hi - (1 + hi % 3))
                                packed.accumulate(m: hi - lo, a: A.baseAddress! + lo * k, lda: k, c: C.baseAddress! + lo * n, ldc: n)
                                hi = lo
                            }
                        }
                    }
                    XCTAssertEqual(viaPacked.map(\.bitPattern), direct.map(\.bitPattern), "path \(path) \(m)x\(n)x\(k) transposed \(transposed)")
                    XCTAssertEqual(viaBlocks.map(\.bitPattern), direct.map(\.bitPattern), "path \(path) \(m)x\(n)x\(k) in blocks")
                }
            }
        }
    }

    /// The chain is the one written: a 1x1 product is fma over k in order, from zero.
    func testOneElementIsAChainOfFusedMultiplyAddsInOrder() {
        let a: [Float] = [1e8, 1, -1e8], b: [Float] = [1, 1e-8, 1]
        var c: [Float] = [0]
        for path in paths() {
            lockstep_gemm(0, 0, 1, 1, 3, a, 3, b, 1, 0, &c, 1, path)
            var acc: Float = 0
            for p in 0..<3 { acc = fmaf(a[p], b[p], acc) }
            XCTAssertEqual(c[0].bitPattern, acc.bitPattern, "path \(path)")
        }
    }
}

/// The Swift SHA-256 that stands in where OpenSSL gives no context gives OpenSSL's digests.
final class SHA256FallbackTests: XCTestCase {
    func testTheSwiftFallbackGivesTheSameDigestsAsOpenSSL() {
        var seed: UInt64 = 7
        for n in [0, 1, 55, 56, 63, 64, 65, 127, 128, 1000, 4099] {
            let bytes = (0..<n).map { _ -> UInt8 in seed = seed &* 6364136223846793005 &+ 1; return UInt8(truncatingIfNeeded: seed >> 33) }
            var fallback = SwiftSHA256()
            // In two pieces, to cross the pending-block path.
            bytes.withUnsafeBytes { b in
                fallback.update(UnsafeRawBufferPointer(rebasing: b[0..<(n / 3)]))
                fallback.update(UnsafeRawBufferPointer(rebasing: b[(n / 3)...]))
            }
            XCTAssertEqual(fallback.finalize().hexString, SHA256.hex(bytes), "\(n) bytes")
        }
    }
}
