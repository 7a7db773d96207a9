import Numerics
import Training
import XCTest

/// Tier 2 (in-process): the coordinator's fused step (divide, clip, optimizer in one pass, split
/// across threads) gives exactly the bits of the plain per-element formulas.
final class OptimizerTests: XCTestCase {
    /// 100,003 values: above the two-thread threshold, and not a multiple of 8 (scalar tail).
    func values(_ n: Int, seed: UInt64, scale: Float) -> [Float] {
        (0..<n).map { i in
            let r = Philox.block(key: seed, counter: SIMD4(UInt32(i), 0, 0, 0))
            return (Float(r[0] >> 8) / Float(1 << 24) - 0.5) * scale
        }
    }

    func testFusedScalingAndThreadsGiveTheBitsOfTheScalarFormulas() {
        let n = 100_003
        let p0 = values(n, seed: 1, scale: 0.2), sums = values(n, seed: 2, scale: 40)
        let divisor: Float = 357, factor: Float = 0.8125
        for kind in [OptimizerKind.adam, .sgd] {
            var c = OptimizerConfig()
            c.kind = kind
            c.weightDecay = 0.01
            let opt = Optimizer(c, count: n)
            let p = FloatBuffer(p0)
            // Reference: scale the buffer first (as clip_grad_norm_ does), then torch.optim's formulas, one element at a time.
            var rp = p0, m = [Float](repeating: 0, count: n), v = m
            var b1t = 1.0, b2t = 1.0
            for step in 1...3 {
                opt.step(params: p, grads: FloatBuffer(sums), scaling: GradientScaling(divisor: divisor, factor: factor))
                b1t *= Double(c.beta1); b2t *= Double(c.beta2)
                for i in 0..<n {
                    var d = sums[i] / divisor
                    d = d * factor
                    d = d + c.weightDecay * rp[i]
                    switch kind {
                    case .adam:
                        m[i] = m[i] + (1 - c.beta1) * (d - m[i])
                        v[i] = v[i] * c.beta2 + (1 - c.beta2) * (d * d)
                        let denom = v[i].squareRoot() / Float((1 - b2t).squareRoot()) + c.eps
                        rp[i] = rp[i] + (-Float(Double(c.lr) / (1 - b1t))) * (m[i] / denom)
                    case .sgd:
                        m[i] = step == 1 ? d : c.momentum * m[i] + d
                        rp[i] = rp[i] + (-c.lr) * m[i]
                    }
                }
                let got = p.array
                let firstDiff = (0..<n).first { got[$0].bitPattern != rp[$0].bitPattern }
                XCTAssertNil(firstDiff, "\(kind) step \(step): element \(firstDiff ?? -1) differs from the scalar formula")
            }
        }
    }

    func testWritingToAnotherBufferGivesTheSameBitsAndLeavesTheOldWeights() {
        let n = 100_003
        let p0 = values(n, seed: 6, scale: 0.2), g = values(n, seed: 7, scale: 3)
        for kind in [OptimizerKind.adam, .sgd] {
            var c = OptimizerConfig()
            c.kind = kind
            let inPlace = FloatBuffer(p0), old = FloatBuffer(p0), next = FloatBuffer(count: n)
            let o1 = Optimizer(c, count: n), o2 = Optimizer(c, count: n)
            for _ in 0..<2 {
                o1.step(params: inPlace, grads: FloatBuffer(g), scaling: GradientScaling(divisor: 3, factor: 0.5))
                o2.step(params: old, grads: FloatBuffer(g), scaling: GradientScaling(divisor: 3, factor: 0.5), into: next)
                XCTAssertEqual(next.sha256, inPlace.sha256, "\(kind)")
                XCTAssertNotEqual(old.sha256, next.sha256, "\(kind): the old weights are untouched")
                old.copy(from: next)
            }
            XCTAssertEqual(o1.state.map(\.sha256), o2.state.map(\.sha256), "\(kind): the same optimizer state")
        }
    }

    func testIdentityScalingLeavesTheGradientAlone() {
        let g = values(1003, seed: 3, scale: 1)
        let a = FloatBuffer(values(1003, seed: 4, scale: 1)), b = FloatBuffer(a.array)
        let o1 = Optimizer(OptimizerConfig(), count: 1003), o2 = Optimizer(OptimizerConfig(), count: 1003)
        o1.step(params: a, grads: FloatBuffer(g))
        o2.step(params: b, grads: FloatBuffer(g), scaling: GradientScaling(divisor: 1, factor: 1))
        XCTAssertEqual(a.sha256, b.sha256)
    }

    func testNormOfTheDividedSumMatchesADoubleSumAndDecidesClipping() {
        let sums = values(100_003, seed: 5, scale: 40)
        let divisor: Float = 123
        var exact = 0.0
        for s in sums { let q = Double(s / divisor); exact += q * q }
        let norm = Clip.norm(FloatBuffer(sums), divisor: divisor)
        XCTAssertEqual(Double(norm), exact.squareRoot(), accuracy: exact.squareRoot() * 1e-6)
        XCTAssertEqual(Clip.norm(FloatBuffer(sums), divisor: divisor).bitPattern, norm.bitPattern, "a fixed order")
        let (n2, f, clipped) = Clip.factor(FloatBuffer(sums), divisor: divisor, maxNorm: norm / 2)
        XCTAssertTrue(clipped)
        XCTAssertEqual(n2, norm)
        XCTAssertEqual(f, (norm / 2) / (norm + 1e-6))
        XCTAssertEqual(Clip.factor(FloatBuffer(sums), divisor: divisor, maxNorm: norm * 2).factor, 1)
        XCTAssertEqual(Clip.factor(FloatBuffer(sums), divisor: divisor, maxNorm: 0).factor, 1, "max-norm 0 turns clipping off")
    }

    /// The documented order, written out one element at a time: lane `i mod 8` sums in index
    /// order, lanes combined as ((0+4)+(2+6)) + ((1+5)+(3+7)), then the tail in order. Feeding it
    /// in blocks (as the coordinator's reduce does) must not change a bit.
    func testNormFollowsTheLaneOrderWhetherFedWholeOrInBlocks() {
        let n = 100_003
        let sums = values(n, seed: 8, scale: 40)
        let divisor: Float = 77
        var lane = [Double](repeating: 0, count: 8)
        let body = n / 8 * 8
        for i in 0..<body { let q = Double(sums[i] / divisor); lane[i % 8] += q * q }
        var s = ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]))
        for i in body..<n { let q = Double(sums[i] / divisor); s += q * q }
        let buffer = FloatBuffer(sums)
        XCTAssertEqual(Clip.norm(buffer, divisor: divisor).bitPattern, Float(s.squareRoot()).bitPattern)
        for block in [8, 4096, 16384] {
            var acc = NormAccumulator(divisor: divisor)
            var i = 0
            while i < n { acc.add(buffer.ptr + i, min(block, n - i)); i += block }
            XCTAssertEqual(acc.sumOfSquares.bitPattern, s.bitPattern, "blocks of \(block)")
        }
    }
}
