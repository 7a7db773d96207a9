import BiLSTM
import Dispatch
import Numerics

public enum OptimizerKind: String, Codable, Sendable, CaseIterable { case sgd, adam }

public struct OptimizerConfig: Equatable, Codable, Sendable {
    public var kind: OptimizerKind = .adam
    public var lr: Float = 0.01
    public var momentum: Float = 0.9
    public var weightDecay: Float = 0
    public var beta1: Float = 0.9
    public var beta2: Float = 0.999
    public var eps: Float = 1e-8
    public init() {}
}

/// SGD (momentum, weight decay) and Adam with `torch.optim` semantics, over the flat buffer in
/// index order. State is one or two buffers in the parameter layout, and the step count.
public final class Optimizer {
    public let config: OptimizerConfig
    public let state: [FloatBuffer]   // SGD: [momentum]; Adam: [exp_avg, exp_avg_sq]
    public var steps: Int = 0
    /// The learning rate of the next step: `config.lr` unless a schedule sets it.
    public var lr: Float

    public init(_ config: OptimizerConfig, count: Int) {
        self.config = config
        lr = config.lr
        state = (0..<(config.kind == .adam ? 2 : 1)).map { _ in FloatBuffer(count: count) }
    }

    /// Names of the state buffers in checkpoints (`optimizer.<name>.<tensor>`).
    public var stateNames: [String] { config.kind == .adam ? ["exp_avg", "exp_avg_sq"] : ["momentum_buffer"] }

    public func step(params: FloatBuffer, grads: FloatBuffer) {
        step(params: params, grads: grads, scaling: GradientScaling())
    }

    /// One step on `grads` read through `scaling` (divide by the frame count, then the clip
    /// factor): the same roundings as scaling the buffer first, without the extra passes.
    /// The new parameters go to `next` (default: `params`, in place); a separate `next` leaves
    /// `params` as it was, so a copy of the old weights that is still being sent needs no snapshot.
    public func step(params: FloatBuffer, grads: FloatBuffer, scaling: GradientScaling, into next: FloatBuffer? = nil) {
        let next = next ?? params
        precondition(next.count == params.count && grads.count == params.count, "optimizer buffers differ in size")
        steps += 1
        // beta^t by repeated multiplication: no libm pow, same bits on every host.
        var b1t = 1.0, b2t = 1.0
        for _ in 0..<steps { b1t *= Double(config.beta1); b2t *= Double(config.beta2) }
        let n = params.count
        // Every element is updated on its own, so splitting the buffer across the (otherwise idle,
        // at the step barrier) cores gives the same bits as one pass.
        let chunks = n >= Optimizer.parallelMinimum ? 2 : 1
        let chunk = (n / chunks + 7) / 8 * 8
        DispatchQueue.concurrentPerform(iterations: chunks) { k in
            let lo = min(k * chunk, n), hi = k == chunks - 1 ? n : min(lo + chunk, n)
            update(lo..<hi, next: next, params: params, grads: grads, scaling: scaling, bias1: b1t, bias2: b2t)
        }
    }

    /// Below this many parameters one thread is quicker than waking a second.
    static let parallelMinimum = 1 << 16

    private func update(_ range: Range<Int>, next: FloatBuffer, params: FloatBuffer, grads: FloatBuffer, scaling: GradientScaling,
                        bias1 b1t: Double, bias2 b2t: Double) {
        let p = params.ptr, g = grads.ptr, out = next.ptr
        let c = config
        let divisor = scaling.divisor, factor = scaling.factor
        switch c.kind {
        case .sgd:
            let buf = state[0].ptr
            let first = steps == 1
            for i in range {
                var d = g[i] / divisor * factor
                if c.weightDecay != 0 { d = d + c.weightDecay * p[i] }
                if c.momentum != 0 {
                    buf[i] = first ? d : c.momentum * buf[i] + d
                    d = buf[i]
                }
                out[i] = p[i] + (-lr) * d
            }
        case .adam:
            let m = state[0].ptr, v = state[1].ptr
            let stepSize = Float(Double(lr) / (1 - b1t))
            let bc2Sqrt = Float((1 - b2t).squareRoot())
            let w1 = 1 - c.beta1, w2 = 1 - c.beta2
            // Eight lanes at a time: the same IEEE operations per element, so the same bits.
            var i = range.lowerBound
            while i + 8 <= range.upperBound {
                var d = UnsafeRawPointer(g + i).loadUnaligned(as: SIMD8<Float>.self) / divisor * factor
                let pv = UnsafeRawPointer(p + i).loadUnaligned(as: SIMD8<Float>.self)
                if c.weightDecay != 0 { d = d + c.weightDecay * pv }
                var mv = UnsafeRawPointer(m + i).loadUnaligned(as: SIMD8<Float>.self)
                var vv = UnsafeRawPointer(v + i).loadUnaligned(as: SIMD8<Float>.self)
                mv = mv + w1 * (d - mv)
                vv = vv * c.beta2 + w2 * (d * d)
                let denom = vv.squareRoot() / bc2Sqrt + c.eps
                let np = pv + (-stepSize) * (mv / denom)
                UnsafeMutableRawPointer(m + i).storeBytes(of: mv, as: SIMD8<Float>.self)
                UnsafeMutableRawPointer(v + i).storeBytes(of: vv, as: SIMD8<Float>.self)
                UnsafeMutableRawPointer(out + i).storeBytes(of: np, as: SIMD8<Float>.self)
                i += 8
            }
            while i < range.upperBound {
                defer { i += 1 }
                var d = g[i] / divisor * factor
                if c.weightDecay != 0 { d = d + c.weightDecay * p[i] }
                m[i] = m[i] + w1 * (d - m[i])
                v[i] = v[i] * c.beta2 + w2 * (d * d)
                let denom = v[i].squareRoot() / bc2Sqrt + c.eps
                out[i] = p[i] + (-stepSize) * (m[i] / denom)
            }
        }
    }
}

/// The gradient norm's sum of squares of `g / divisor`, in Double: eight lane sums (element `i`
/// goes to lane `i mod 8`) added in a fixed tree, then the last `count mod 8` elements in order.
/// A fixed order with no serial dependency chain. It may be fed block by block (every block but
/// the last a multiple of 8 floats) with the same bits as one call over the whole buffer.
public struct NormAccumulator {
    public let divisor: Float
    private var lo = SIMD4<Double>(), hi = SIMD4<Double>()
    private var tail: [Float] = []

    public init(divisor: Float = 1) { self.divisor = divisor }

    public mutating func add(_ p: UnsafePointer<Float>, _ n: Int) {
        var i = 0
        while i + 8 <= n {
            let q = UnsafeRawPointer(p + i).loadUnaligned(as: SIMD8<Float>.self) / divisor
            let a = SIMD4<Double>(SIMD4<Float>(q[0], q[1], q[2], q[3])), b = SIMD4<Double>(SIMD4<Float>(q[4], q[5], q[6], q[7]))
            lo += a * a
            hi += b * b
            i += 8
        }
        while i < n { tail.append(p[i]); i += 1 }
    }

    /// Non-finite exactly when some element is: a finite float squared cannot overflow a Double sum.
    public var sumOfSquares: Double {
        let lanes = lo + hi
        var s = (lanes[0] + lanes[2]) + (lanes[1] + lanes[3])
        for x in tail { let v = Double(x / divisor); s += v * v }
        return s
    }

    public var norm: Float { Float(sumOfSquares.squareRoot()) }
}

/// How the optimizer reads the reduced gradient sum: `g / divisor · factor`. Dividing by 1 and
/// multiplying by 1 are exact, so the identity scaling leaves the gradient's bits alone.
public struct GradientScaling: Sendable {
    public var divisor: Float = 1
    public var factor: Float = 1
    public init(divisor: Float = 1, factor: Float = 1) { self.divisor = divisor; self.factor = factor }
}

public enum Clip {
    /// The L2 norm of `g / divisor` (see `NormAccumulator` for the order).
    public static func norm(_ g: FloatBuffer, divisor: Float = 1) -> Float {
        var acc = NormAccumulator(divisor: divisor)
        acc.add(g.ptr, g.count)
        return acc.norm
    }

    /// `torch.nn.utils.clip_grad_norm_`'s factor for `g / divisor`: `maxNorm / (norm + 1e-6)` when
    /// that is below 1, else 1 (no clipping). Returns the norm before clipping too.
    public static func factor(_ g: FloatBuffer, divisor: Float = 1, maxNorm: Float) -> (norm: Float, factor: Float, clipped: Bool) {
        factor(norm: norm(g, divisor: divisor), maxNorm: maxNorm)
    }

    /// The same from a norm already computed.
    public static func factor(norm total: Float, maxNorm: Float) -> (norm: Float, factor: Float, clipped: Bool) {
        let coef = maxNorm / (total + 1e-6)
        guard maxNorm > 0, coef < 1 else { return (total, 1, false) }
        return (total, coef, true)
    }

    /// Clips `g` in place like `torch.nn.utils.clip_grad_norm_`. Returns the norm before clipping
    /// and whether it clipped.
    @discardableResult
    public static func clip(_ g: FloatBuffer, maxNorm: Float) -> (norm: Float, clipped: Bool) {
        let (total, coef, clipped) = factor(g, maxNorm: maxNorm)
        if clipped { for i in 0..<g.count { g.ptr[i] *= coef } }
        return (total, clipped)
    }
}
