import Foundation
@testable import Numerics
import XCTest

/// Tier 1: `BLAS.PackedWeights` (OpenBLAS's driver replayed over a weight packed once) gives
/// `BLAS.sgemm`'s bits for every row count, and for rows done in blocks cut at multiples of
/// the panel, on shapes with one and several depth and row blocks.
final class PrepackedGEMMTests: XCTestCase {
    override func setUp() { BLAS.mode = .openblas; BLAS.setThreads(1) }

    func testPackedWeightsGiveSgemmsBitsForEveryRowCountAndEveryPanelAlignedBlocking() throws {
        try XCTSkipUnless(BLAS.prepackSupported, "no replay for the \(BLAS.coreName) kernel: sgemm is used")
        var r = Rand(s: 7)
        // (n, k): the standard model's W_hh and W_ih, a layer-2 W_ih, several row and depth blocks.
        for (n, k) in [(512, 128), (512, 40), (512, 256), (1024, 700), (64, 16), (36, 5)] {
            let w = (0..<(n * k)).map { _ in r.next() }
            let packed = try XCTUnwrap(BLAS.PackedWeights(w: w, ldw: k, n: n, k: k, blockedRows: true),
                                       "the replay was refused for \(n)x\(k) on \(BLAS.coreName)")
            for m in [1, 3, 4, 5, 11, 12, 13, 25, 64, 200, 517] {
                let a = (0..<(m * k)).map { _ in r.next() }, c0 = (0..<(m * n)).map { _ in r.next() }
                var viaSgemm = c0, viaReplay = c0, viaBlocks = c0
                BLAS.sgemm(transA: false, transB: true, m: m, n: n, k: k, a: a, lda: k, b: w, ldb: k, beta: 1, c: &viaSgemm, ldc: n)
                a.withUnsafeBufferPointer { A in
                    viaReplay.withUnsafeMutableBufferPointer { C in
                        packed.accumulate(m: m, a: A.baseAddress!, lda: k, c: C.baseAddress!, ldc: n)
                    }
                    // Blocks at multiples of the panel, done last to first (as a reverse direction does).
                    var cuts = [0, m]
                    var at = BLAS.PackedWeights.panel
                    while at < m { cuts.append(at); at += BLAS.PackedWeights.panel * (1 + cuts.count % 3) }
                    cuts.sort()
                    viaBlocks.withUnsafeMutableBufferPointer { C in
                        for i in stride(from: cuts.count - 2, through: 0, by: -1) where cuts[i] < cuts[i + 1] {
                            packed.accumulate(m: cuts[i + 1] - cuts[i], a: A.baseAddress! + cuts[i] * k, lda: k,
                                              c: C.baseAddress! + cuts[i] * n, ldc: n)
                        }
                    }
                }
                XCTAssertEqual(viaReplay.map(\.bitPattern), viaSgemm.map(\.bitPattern), "\(m)x\(n)x\(k): replay")
                XCTAssertEqual(viaBlocks.map(\.bitPattern), viaSgemm.map(\.bitPattern), "\(m)x\(n)x\(k): blocks")
            }
        }
    }

    func testNoReplayWhereItsBitsAreNotShown() {
        let w = [Float](repeating: 0.5, count: 64 * 16)
        BLAS.setThreads(2)
        XCTAssertNil(BLAS.PackedWeights(w: w, ldw: 16, n: 64, k: 16), "two BLAS threads cut the product otherwise")
        BLAS.setThreads(1)
        XCTAssertNil(BLAS.PackedWeights(w: w, ldw: 64, n: 64, k: 16, transposed: false), "the replay packs Wᵀ products only")
        BLAS.prepackAllowed = false
        XCTAssertNil(BLAS.PackedWeights(w: w, ldw: 16, n: 64, k: 16))
        BLAS.prepackAllowed = true
    }
}
