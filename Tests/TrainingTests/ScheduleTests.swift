import Foundation
import Numerics
@testable import Training
import XCTest

/// Tier 1 (pure): learning-rate schedules against the rates torch.optim.lr_scheduler gave
/// (Fixtures/schedules.json, from scripts/python/make_schedule_fixture.py).
final class ScheduleTests: XCTestCase {
    struct Case: Decodable {
        let name: String, lr_schedule: String, lr: Double, steps: Int, warmup_steps: Int, lr_step_size: Int
        let lr_gamma: Double, min_lr: Double
        let plateau_patience: Int?, valid_every: Int?, valid_losses: [Double]?
        let rates: [Double]
    }

    func testEveryScheduleGivesPyTorchsRatesStepByStep() throws {
        let url = try XCTUnwrap(Bundle.module.url(forResource: "Fixtures/schedules", withExtension: "json"))
        let cases = try JSONDecoder().decode([String: [Case]].self, from: Data(contentsOf: url).replacingTorchVersion())["cases"]!
        XCTAssertEqual(cases.count, 6)
        var report: [String] = []
        for k in cases {
            var c = LRScheduleConfig()
            c.kind = try XCTUnwrap(LRScheduleKind(rawValue: k.lr_schedule))
            c.warmupSteps = k.warmup_steps
            c.stepSize = k.lr_step_size
            c.gamma = Float(k.lr_gamma)
            c.minLR = Float(k.min_lr)
            c.plateauPatience = k.plateau_patience ?? 10
            XCTAssertTrue(c.problems().isEmpty, "\(k.name): \(c.problems())")
            let base = Float(k.lr)
            XCTAssertEqual(Double(base), k.lr, "the fixture's rates are float32 values")
            var plateau = PlateauState(lr: Double(base))
            var worst = 0.0
            for t in 0..<k.steps {
                let ours = LRSchedule.exactRate(step: t, total: k.steps, base: base, config: c, plateau: plateau)
                let theirs = k.rates[t]
                let rel = abs(ours - theirs) / theirs
                worst = max(worst, rel)
                XCTAssertLessThan(rel, 1e-12, "\(k.name) step \(t): ours \(ours), PyTorch \(theirs)")
                XCTAssertEqual(LRSchedule.rate(step: t, total: k.steps, base: base, config: c, plateau: plateau), Float(ours))
                if let every = k.valid_every, (t + 1) % every == 0 { plateau.observe(k.valid_losses![(t + 1) / every - 1], config: c) }
            }
            report.append(String(format: "%@ max rel diff %.1e", k.name, worst))
        }
        print("schedules against PyTorch: " + report.joined(separator: "; "))
    }

    func testConstantWithoutWarmupIsTheOptimizersOwnRateBitForBit() {
        let c = LRScheduleConfig()
        for t in [0, 1, 99, 10_000] { XCTAssertEqual(LRSchedule.rate(step: t, total: 100, base: 0.0123, config: c), 0.0123) }
    }

    func testDeterministicCosineIsWithinAnUlpOfLibm() {
        var worst = 0.0
        for i in 0...10_000 {
            let x = Double.pi * Double(i) / 10_000
            worst = max(worst, abs(detCos(x) - cos(x)))
        }
        XCTAssertLessThan(worst, 5e-16)
    }

    func testPlateauReducesAfterPatienceAndNotBelowTheFloor() {
        var c = LRScheduleConfig()
        c.kind = .plateau; c.gamma = 0.5; c.plateauPatience = 1; c.minLR = 0.375
        var p = PlateauState(lr: 1)
        XCTAssertFalse(p.observe(1.0, config: c))
        XCTAssertFalse(p.observe(1.0, config: c), "one bad validation is within patience")
        XCTAssertTrue(p.observe(1.0, config: c))
        XCTAssertEqual(p.lr, 0.5)
        _ = p.observe(1.0, config: c); _ = p.observe(1.0, config: c)
        XCTAssertEqual(p.lr, 0.375, "never below --min-lr")
        XCTAssertFalse(p.observe(0.5, config: c), "an improvement resets the count")
    }
}

private extension Data {
    /// The fixture's top level also names the torch version, a string: keep only the cases.
    func replacingTorchVersion() throws -> Data {
        let o = try JSONSerialization.jsonObject(with: self) as! [String: Any]
        return try JSONSerialization.data(withJSONObject: ["cases": o["cases"]!])
    }
}
