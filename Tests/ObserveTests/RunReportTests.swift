import Foundation
@testable import Observe
@testable import Training
import XCTest

/// Tier 1: the report plots the metrics' own numbers, and its page is self-contained.
final class RunReportTests: XCTestCase {
    func testTheChartsAreTheMetricsNumbersAndThePageNeedsNoNetwork() throws {
        var lines: [String] = []
        for s in 1...6 {
            var r = StepReport(step: s, epoch: 0, loss: 2.0 / Double(s), frames: 1000, gradNorm: Float(s), clipped: s > 4, seconds: 0.1)
            r.lr = 0.01 / Float(s); r.workersAlive = s < 3 ? 1 : 2; r.reissued = s == 3 ? 1 : 0
            r.shardSecondsMax = 0.02; r.shardSecondsMean = 0.015
            r.workerSeconds = ["worker pid 7": 0.03, "worker pid 9": s < 4 ? 0.04 : 0.05]
            lines.append(try r.json)
            if s % 3 == 0 {
                var sums = EvalSums(classes: 2)
                sums.lossSum = Double(s); sums.frames = 10; sums.correct = s; sums.confusion = [0: s, 1: 10 - s]
                lines.append(try ValidationReport(step: s, epoch: 0, sums: sums, best: 0.3, bestStep: s, improved: true, stopped: nil,
                                                  lrReduced: nil, select: .loss).json)
            }
        }
        let report = RunReport(metricsLines: lines + ["not json"])
        XCTAssertEqual(report.steps, 6)
        XCTAssertEqual(report.validations, 2)
        let byTitle = Dictionary(uniqueKeysWithValues: report.charts.map { ($0.title, $0) })
        let loss = try XCTUnwrap(byTitle["Loss (mean NLL per frame)"])
        XCTAssertEqual(loss.series[0].points.map(\.y), (1...6).map { 2.0 / Double($0) })
        XCTAssertEqual(loss.series[1].points.map(\.x), [3, 6])
        XCTAssertEqual(loss.series[1].points.map(\.y), [0.3, 0.6])
        XCTAssertEqual(byTitle["Validation accuracy and macro-F1 (frames)"]?.series[0].points.map(\.y), [0.3, 0.6])
        XCTAssertEqual(byTitle["Learning rate"]?.series[0].points.map { Float($0.y) }, (1...6).map { Float(0.01) / Float($0) })
        let grad = try XCTUnwrap(byTitle["Gradient norm (before clipping)"])
        XCTAssertEqual(grad.marks.map(\.x), [5, 6], "clipped steps are marked")
        XCTAssertEqual(byTitle["Workers alive and shards re-issued"]?.series[1].points.map(\.y), [0, 0, 1, 0, 0, 0])
        XCTAssertEqual(byTitle["Shard compute time (as the workers measured it)"]?.series[0].points.map(\.y), Array(repeating: 20, count: 6))
        let perWorker = try XCTUnwrap(byTitle["Compute time per worker (sum of its shards in the step)"])
        XCTAssertEqual(perWorker.series.map(\.name), ["worker pid 7", "worker pid 9"])
        XCTAssertEqual(perWorker.series[1].points.map(\.y), [40, 40, 40, 50, 50, 50])
        let html = report.html(run: "runs/x", config: "lr = 0.01\n<b>", hash: String(repeating: "a", count: 64), numerics: "OpenBLAS 0.3.21 Zen kernel", step: 6)
        XCTAssertEqual(html.components(separatedBy: "<svg").count - 1, report.charts.count + 1, "the charts and the confusion heat map")
        XCTAssertTrue(html.contains("data-points=\"6\""))
        XCTAssertEqual(html.components(separatedBy: "data-mark=\"1\"").count - 1, 2)
        XCTAssertTrue(html.contains("&lt;b&gt;"), "the config is escaped")
        for remote in ["http://", "https://", "<script", "src="] where remote != "http://" {
            XCTAssertFalse(html.contains(remote), remote)
        }
        XCTAssertFalse(html.replacingOccurrences(of: "http://www.w3.org/2000/svg", with: "").contains("http"), "no network")
    }

    /// Ticks are round numbers that cover the range; the smoothing is TensorBoard's debiased EMA.
    func testTicksAndSmoothing() {
        XCTAssertEqual(RunReport.ticks(0, 1), [0, 0.2, 0.4, 0.6000000000000001, 0.8, 1])
        XCTAssertEqual(RunReport.ticks(3, 297, count: 6), [50, 100, 150, 200, 250])
        XCTAssertEqual(RunReport.ticks(1.95, 2.31).count, 4)
        let s = RunReport.smoothed([(1, 4), (2, 2), (3, 2)])
        XCTAssertEqual(s[0].y, 4, "the first point is itself, not pulled to 0")
        XCTAssertEqual(s[1].y, (0.09 * 4 + 0.1 * 2) / 0.19, accuracy: 1e-12)
    }

    /// A run with validations: the raw training loss beside its smoothed curve, validation points
    /// dotted, the best step marked on the loss and accuracy charts, and the best validation's
    /// confusion heat map and per-class table, with the last line wrapped.
    func testTheBestValidationIsMarkedAndShownWithItsConfusionAndPerClassFigures() throws {
        var lines: [String] = []
        for s in 1...30 {
            var r = StepReport(step: s, epoch: 0, loss: 2 + sin(Double(s)), frames: 100, gradNorm: 1, clipped: false, seconds: 0.1)
            r.lr = 0.01
            lines.append(try r.json)
            if s % 10 == 0 {
                var sums = EvalSums(classes: 3)
                sums.lossSum = Double(40 - s); sums.frames = 20
                sums.confusion = s == 20 ? [0: 8, 1: 2, 4: 5, 5: 1, 8: 4] : [0: 10, 4: 5, 8: 5]
                sums.correct = s == 20 ? 17 : 20
                lines.append(try ValidationReport(step: s, epoch: 0, sums: sums, best: 0.7, bestStep: 20, improved: s == 20, stopped: nil,
                                                  lrReduced: nil, select: .f1).json)
            }
        }
        let report = RunReport(metricsLines: lines)
        let loss = try XCTUnwrap(report.charts.first)
        XCTAssertEqual(loss.series.map(\.name), ["train", "train, smoothed (0.9)", "validation"])
        XCTAssertTrue(loss.series[0].faint && loss.series[2].dots)
        XCTAssertEqual(loss.vline?.x, 20)
        let best = try XCTUnwrap(report.best)
        XCTAssertEqual(best.step, 20)
        XCTAssertEqual(best.select, "macro-f1")
        XCTAssertEqual(best.confusion, [[8, 2, 0], [0, 5, 1], [0, 0, 4]])
        XCTAssertEqual(best.recall[0]!, 0.8, accuracy: 1e-12)
        let html = report.html(run: "r", config: nil, hash: nil, numerics: "")
        XCTAssertTrue(html.contains("Best validation: step 20"))
        XCTAssertEqual(html.components(separatedBy: "data-best=\"20\"").count - 1, 2, "the loss and accuracy charts")
        XCTAssertEqual(html.components(separatedBy: "data-cell=").count - 1, 9)
        XCTAssertTrue(html.contains("<td>0</td><td>10</td><td>8</td><td>100.0%</td><td>80.0%</td><td>88.9%</td>"), html)
        XCTAssertEqual(html.components(separatedBy: "data-dot=\"validation\"").count - 1, 3)
        XCTAssertTrue(html.contains("name=\"viewport\"") && html.contains("white-space:pre-wrap"))
        XCTAssertTrue(html.contains("class=\"ytick\"") && html.contains("class=\"xtick\""))
    }
}
