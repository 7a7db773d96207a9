import Foundation
import Formats
@testable import Observe
@testable import Training
import XCTest

/// Tier 2 (in-process, files): the TensorBoard event files decode to the metrics' numbers, with
/// TFRecord framing and checksums, and a resumed run has no step twice.
final class TensorBoardTests: XCTestCase {
    var dir = ""
    override func setUp() {
        dir = NSTemporaryDirectory() + "lockstep-tb-\(UUID().uuidString)"
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func report(_ step: Int) -> StepReport {
        var r = StepReport(step: step, epoch: 0, loss: 1.0 / Double(step), frames: 100 * step, gradNorm: Float(step) / 3,
                           clipped: step % 2 == 0, seconds: 0.01 * Double(step))
        r.lr = 0.001 * Float(step)
        r.workersAlive = 2
        r.coordinatorSeconds = 0.0025
        return r
    }

    func events() -> [TensorBoardEvents.Event] {
        TensorBoardLog.files(in: dir + "/tb").flatMap { file in
            TensorBoardEvents.records([UInt8](FileManager.default.contents(atPath: file)!)).compactMap { TensorBoardEvents.Event($0.payload) }
        }
    }

    func testEveryStepsScalarsAreTheMetricsAndAResumeDuplicatesNoStep() throws {
        do {
            let log = try MetricsLog(directory: dir, resumeStep: 0)
            for s in 1...5 { try log.write(report(s)) }
            var sums = EvalSums(classes: 2)
            sums.lossSum = 3; sums.frames = 4; sums.correct = 3; sums.confusion = [0: 2, 3: 1, 1: 1]
            try log.write(ValidationReport(step: 5, epoch: 0, sums: sums, best: 0.75, bestStep: 5, improved: true, stopped: nil, lrReduced: nil, select: .loss))
        }
        var got = events()
        XCTAssertEqual(got.first?.fileVersion, "brain.Event:2")
        let steps = got.filter { $0.scalars["train/loss"] != nil }
        XCTAssertEqual(steps.map(\.step), [1, 2, 3, 4, 5])
        for e in steps {
            for (tag, value) in report(e.step).scalars { XCTAssertEqual(e.scalars[tag], Float(value), "\(tag) at step \(e.step)") }
        }
        // Confusion [[2, 1], [0, 1]] (true 0: 2 right, 1 as 1; true 1: right): F1 0.8 and 2/3.
        XCTAssertEqual(got.last?.scalars, ["valid/loss": 0.75, "valid/accuracy": 0.75, "valid/macro_f1": Float((0.8 + 2.0 / 3) / 2),
                                           "valid/f1/class_0": 0.8, "valid/f1/class_1": Float(2.0 / 3)])
        // Resumed from step 3 (steps 4 and 5 are done again), with a torn record at the end.
        let first = TensorBoardLog.files(in: dir + "/tb")[0]
        let h = FileHandle(forWritingAtPath: first)!; h.seekToEndOfFile(); h.write(Data([9, 9, 9])); h.closeFile()
        do {
            let log = try MetricsLog(directory: dir, resumeStep: 3)
            for s in 4...6 { try log.write(report(s)) }
        }
        got = events()
        XCTAssertEqual(TensorBoardLog.files(in: dir + "/tb").count, 2)
        XCTAssertEqual(got.filter { $0.scalars["train/loss"] != nil }.map(\.step), [1, 2, 3, 4, 5, 6], "each step once")
        XCTAssertFalse(got.contains { $0.scalars["valid/loss"] != nil }, "the validation after step 5 was cut with it")
        // A new run in the directory starts a new record.
        _ = try MetricsLog(directory: dir, resumeStep: 0)
        XCTAssertEqual(events().filter { !$0.scalars.isEmpty }.count, 0)
    }
}
