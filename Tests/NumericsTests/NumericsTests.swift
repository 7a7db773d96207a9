import Foundation
import Numerics
import XCTest

/// Tier 1 (pure, microseconds): the deterministic building blocks.
final class NumericsTests: XCTestCase {
    func testPhiloxKnownAnswers() {
        // Random123's kat_vectors for philox4x32_10.
        XCTAssertEqual(Philox.block(key: 0, counter: SIMD4(0, 0, 0, 0)), SIMD4(0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8))
        XCTAssertEqual(Philox.block(key: 0xFFFF_FFFF_FFFF_FFFF, counter: SIMD4(repeating: 0xFFFF_FFFF)),
                       SIMD4(0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd))
        XCTAssertEqual(Philox.block(key: 0x299f_31d0_a409_3822, counter: SIMD4(0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344)),
                       SIMD4(0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1))
    }

    func testExpLogTanhSigmoidAccuracy() {
        var worstExp: Float = 0, worstLog: Float = 0, worstTanh: Float = 0, worstSig: Float = 0
        var x: Float = -80
        while x < 80 {
            let e = Foundation.exp(Double(x))
            worstExp = max(worstExp, Float(abs(Double(detExp(x)) - e) / e))
            let t = Foundation.tanh(Double(x))
            worstTanh = max(worstTanh, Float(abs(Double(detTanh(x)) - t)))
            let s = 1 / (1 + Foundation.exp(-Double(x)))
            worstSig = max(worstSig, Float(abs(Double(detSigmoid(x)) - s)))
            x += 0.0137
        }
        var y: Float = 1e-30
        while y < 1e30 {
            let l = Foundation.log(Double(y))
            worstLog = max(worstLog, Float(abs(Double(detLog(y)) - l) / max(1, abs(l))))
            y *= 1.37
        }
        XCTAssertLessThan(worstExp, 3e-7, "detExp relative error")
        XCTAssertLessThan(worstLog, 3e-7, "detLog error")
        XCTAssertLessThan(worstTanh, 2e-7, "detTanh absolute error")
        XCTAssertLessThan(worstSig, 2e-7, "detSigmoid absolute error")
        XCTAssertEqual(detTanh(1e-5), 1e-5, accuracy: 1e-12, "tanh near zero keeps relative accuracy")
        XCTAssertEqual(detExp(-200), detExp(-87), "clamped below")
        XCTAssertTrue(detExp(200).isFinite)
    }

    func testSHA256KnownAnswers() {
        XCTAssertEqual(SHA256.hex(Array("".utf8)), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(SHA256.hex(Array("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(SHA256.hex(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        var h = SHA256()
        for _ in 0..<1000 { h.update(Array(repeating: UInt8(ascii: "a"), count: 1000)) }
        XCTAssertEqual(h.finalize().hexString, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    func testTreeShapeDependsOnlyOnCountAndAlignedSubtreesAreSubtrees() {
        XCTAssertEqual(TreeSum.split(0, 2), 1)
        XCTAssertEqual(TreeSum.split(0, 5), 4)
        XCTAssertEqual(TreeSum.split(0, 8), 4)
        XCTAssertEqual(TreeSum.split(4, 7), 6)
        // Float addition is not associative: the tree must be the one documented.
        let parts = [1e8, 1, -1e8, 1].map { FloatBuffer([Float($0)]) }
        XCTAssertEqual(TreeSum.reduce(parts)[0], (Float(1e8) + 1) + (Float(-1e8) + 1))
        XCTAssertEqual(TreeSum.reduce([1e16, 1, -1e16, 1, 5]), ((1e16 + 1) + (-1e16 + 1)) + 5)
    }

    func testBLASMatchesNaiveProduct() {
        let a = FloatBuffer((0..<6).map { Float($0) }), b = FloatBuffer((0..<12).map { Float($0) * 0.5 })
        let c = FloatBuffer(count: 8)
        BLAS.setThreads(1)
        BLAS.sgemm(transA: false, transB: false, m: 2, n: 4, k: 3, a: a.ptr, lda: 3, b: b.ptr, ldb: 4, beta: 0, c: c.ptr, ldc: 4)
        for i in 0..<2 { for j in 0..<4 {
            var s: Float = 0
            for k in 0..<3 { s += a[i * 3 + k] * b[k * 4 + j] }
            XCTAssertEqual(c[i * 4 + j], s)
        } }
        XCTAssertFalse(BLAS.coreName.isEmpty)
    }
}

final class SIMDParityTests: XCTestCase {
    /// The fused loops use the 8-lane functions and the tails the scalar ones: they must agree bit for bit.
    func testEightLaneFunctionsEqualScalarBitForBit() {
        var x: Float = -100
        while x < 100 {
            let v = SIMD8<Float>((0..<8).map { x + Float($0) * 0.001 })
            let e = detExp(v), s = detSigmoid(v), t = detTanh(v)
            for k in 0..<8 {
                XCTAssertEqual(e[k].bitPattern, detExp(v[k]).bitPattern, "exp(\(v[k]))")
                XCTAssertEqual(s[k].bitPattern, detSigmoid(v[k]).bitPattern, "sigmoid(\(v[k]))")
                XCTAssertEqual(t[k].bitPattern, detTanh(v[k]).bitPattern, "tanh(\(v[k]))")
            }
            x += 0.0917
        }
    }

    /// `detExp`'s clamp is the standard library's `pointwiseMin(pointwiseMax(x, lo), hi)`,
    /// which it replaced for speed, on every value that matters: NaN, ±0, ±inf, the bounds.
    func testClampEqualsTheStandardLibrarysMinOfMaxBitForBit() {
        var xs: [Float] = [.nan, -.nan, 0, -0.0, .infinity, -.infinity, -87, 88, Float(-87).nextDown, Float(-87).nextUp,
                           Float(88).nextUp, Float(88).nextDown, .leastNonzeroMagnitude, .greatestFiniteMagnitude]
        var x: Float = -200
        while x < 200 { xs.append(x); x += 0.37 }
        for lo in stride(from: 0, to: xs.count, by: 8) {
            let v = SIMD8<Float>((0..<8).map { xs[min(lo + $0, xs.count - 1)] })
            let ours = detClamp(v, -87, 88), std = pointwiseMin(pointwiseMax(v, SIMD8(repeating: -87)), SIMD8(repeating: 88))
            for k in 0..<8 { XCTAssertEqual(ours[k].bitPattern, std[k].bitPattern, "clamp(\(v[k]))") }
        }
    }
}

final class TreeSumInPlaceTests: XCTestCase {
    /// A worker's pre-added aligned block stands for its subtree: the tree over such blocks and
    /// single shards gives the bits of the tree over all the single shards, for every count and
    /// every power-of-two block size; a block that is not a subtree is not one.
    func testPreAddedAlignedBlocksGiveTheSingleShardTreesBits() {
        var r = Rand(s: 3)
        for n in 2...19 {
            let parts = (0..<n).map { _ in FloatBuffer((0..<6).map { _ in r.next() * 1e4 }) }
            let losses = parts.map { Double($0[0]) * 1.1 }
            let whole = TreeSum.reduce(parts), wholeLoss = TreeSum.reduce(losses)
            for b in [2, 4, 8] where b <= n {
                // Blocks of b from the start where the tree has them, single shards elsewhere.
                var grads: [FloatBuffer] = [], ls: [Double] = [], spans: [Int] = []
                var at = 0
                while at < n {
                    let end = min(at + b, n)
                    if end - at >= 2, TreeSum.isSubtree(at, end, of: n) {
                        grads.append(TreeSum.reduceInPlace(parts[at..<end].map { $0.clone() }))
                        ls.append(TreeSum.reduce(Array(losses[at..<end])))
                        spans.append(end - at)
                        at = end
                    } else {
                        grads.append(parts[at]); ls.append(losses[at]); spans.append(1); at += 1
                    }
                }
                XCTAssertTrue(spans.contains { $0 > 1 }, "n \(n), b \(b): some block is a subtree")
                XCTAssertEqual(TreeSum.reduce(grads, spans: spans) { _, _ in }.array.map(\.bitPattern), whole.array.map(\.bitPattern), "n \(n), b \(b)")
                XCTAssertEqual(TreeSum.reduce(ls, spans: spans).bitPattern, wholeLoss.bitPattern, "n \(n), b \(b)")
            }
        }
        XCTAssertTrue(TreeSum.isSubtree(4, 6, of: 6))
        XCTAssertTrue(TreeSum.isSubtree(4, 7, of: 7))
        XCTAssertFalse(TreeSum.isSubtree(2, 6, of: 8), "not aligned")
        XCTAssertFalse(TreeSum.isSubtree(3, 5, of: 8))
        XCTAssertTrue(TreeSum.isSubtree(0, 8, of: 8))
    }

    func testInPlaceReductionGivesTheSameBitsAsTheCopyingOne() {
        for n in 1...9 {
            let parts = (0..<n).map { k in FloatBuffer((0..<5).map { Float(k * 7 + $0) * 1e7 + 0.1 * Float(k) }) }
            let copied = TreeSum.reduce(parts)
            XCTAssertEqual(parts[0][1], 1e7 + 0, "reduce leaves its inputs alone")
            XCTAssertEqual(TreeSum.reduceInPlace(parts).array.map(\.bitPattern), copied.array.map(\.bitPattern), "n=\(n)")
        }
    }

    /// The coordinator's reduce hands each finished block of the sum to the norm: the blocks must
    /// cover the sum in order, and the parts must survive (to name a bad shard).
    func testBlockwiseReductionSeesTheWholeSumInOrderAndKeepsTheParts() {
        let count = TreeSum.block * 2 + 13
        for n in [1, 2, 3, 5] {
            let parts: [FloatBuffer] = (0..<n).map { k in
                FloatBuffer((0..<count).map { (i: Int) -> Float in Float((i * 31 + k * 17) % 1000) * 1e5 + 0.1 * Float(k) })
            }
            let before = parts.map { $0.sha256 }
            let expected = TreeSum.reduceInPlace(parts.map { $0.clone() })
            var seen: [Float] = []
            var blocks = 0
            let sum = TreeSum.reduce(parts) { p, m in
                XCTAssertTrue(m == TreeSum.block || seen.count + m == count, "every block but the last is full")
                seen += UnsafeBufferPointer(start: p, count: m)
                blocks += 1
            }
            XCTAssertEqual(blocks, 3, "n=\(n)")
            XCTAssertEqual(sum.sha256, expected.sha256, "n=\(n): the same bits as the in-place tree")
            XCTAssertEqual(seen.map { $0.bitPattern }, expected.array.map { $0.bitPattern }, "n=\(n): the blocks are the sum, in order")
            XCTAssertEqual(parts.map { $0.sha256 }, before, "n=\(n): the parts are left alone")
        }
    }
}
