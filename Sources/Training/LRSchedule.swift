import Foundation
import Numerics

public enum LRScheduleKind: String, Codable, Sendable, CaseIterable { case constant, step, cosine, plateau }

/// The learning rate of every step, with the formulas of `torch.optim.lr_scheduler`, stepped
/// once per optimizer step (t = steps done before this one):
///
/// - warmup (`--warmup-steps W`): `LinearLR(start_factor = 1/(W+1), total_iters = W)` chained
///   before the main schedule by `SequentialLR(milestones = [W])`: lr·(t+1)/(W+1) for t < W;
///   the main schedule then counts u = t − W from 0.
/// - `constant`: lr. `step`: `StepLR`, lr·γ^⌊u/step_size⌋. `cosine`: `CosineAnnealingLR` with
///   `T_max` = steps after warmup, `eta_min` = min-lr. `plateau`: `ReduceLROnPlateau(mode=min,
///   factor=γ, patience, threshold=1e-4 rel, cooldown=0, min_lr, eps=1e-8)` on the validation
///   loss, once per validation.
///
/// Everything is double precision with `+ - * /` (and `detCos`), so the rate is the same bits on
/// every host and after resume (the plateau state is in the checkpoint).
public struct LRScheduleConfig: Codable, Equatable, Sendable {
    public var kind: LRScheduleKind = .constant
    public var warmupSteps = 0
    public var stepSize = 100
    public var gamma: Float = 0.1
    public var minLR: Float = 0
    public var plateauPatience = 10
    public init() {}

    public func problems() -> [String] {
        var p: [String] = []
        if warmupSteps < 0 { p.append("--warmup-steps must be >= 0 (got \(warmupSteps))") }
        if stepSize < 1 { p.append("--lr-step-size must be at least 1 (got \(stepSize))") }
        if !(gamma > 0 && gamma <= 1) { p.append("--lr-gamma must be in (0, 1] (got \(gamma))") }
        if !(minLR >= 0 && minLR.isFinite) { p.append("--min-lr must be >= 0 (got \(minLR))") }
        if plateauPatience < 0 { p.append("--plateau-patience must be >= 0 (got \(plateauPatience))") }
        return p
    }
}

/// `ReduceLROnPlateau`'s state.
public struct PlateauState: Equatable, Sendable {
    public var lr: Double
    public var best = Double.infinity
    public var bad = 0
    public init(lr: Double) { self.lr = lr }

    /// One validation loss; returns whether the rate was reduced.
    @discardableResult
    public mutating func observe(_ loss: Double, config c: LRScheduleConfig) -> Bool {
        if loss < best * (1 - 1e-4) {
            best = loss
            bad = 0
        } else {
            bad += 1
        }
        guard bad > c.plateauPatience else { return false }
        bad = 0
        let reduced = max(lr * Double(c.gamma), Double(c.minLR))
        guard lr - reduced > 1e-8 else { return false }
        lr = reduced
        return true
    }
}

public enum LRSchedule {
    /// The rate of the step after `t` steps of a run of `total` steps (`plateau`: its state's).
    public static func rate(step t: Int, total: Int, base: Float, config c: LRScheduleConfig, plateau: PlateauState? = nil) -> Float {
        c.kind == .constant && t >= c.warmupSteps ? base : Float(exactRate(step: t, total: total, base: base, config: c, plateau: plateau))
    }

    /// The same in double precision, before the rounding to the optimizer's float.
    public static func exactRate(step t: Int, total: Int, base: Float, config c: LRScheduleConfig, plateau: PlateauState? = nil) -> Double {
        let lr = Double(base)
        let w = c.warmupSteps
        if t < w { return lr * (1.0 / Double(w + 1) + (1 - 1.0 / Double(w + 1)) * Double(t) / Double(w)) }
        let u = t - w
        switch c.kind {
        case .constant:
            return lr
        case .step:
            var f = lr
            for _ in 0..<(u / c.stepSize) { f *= Double(c.gamma) }
            return f
        case .cosine:
            let tMax = max(total - w, 1)
            let eta = Double(c.minLR)
            return eta + (lr - eta) * (1 + detCos(3.141_592_653_589_793 * Double(min(u, tMax)) / Double(tMax))) / 2
        case .plateau:
            return plateau?.lr ?? lr
        }
    }
}
