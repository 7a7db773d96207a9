import Foundation
@testable import Observe
@testable import Training
import XCTest

/// Tier 2 (in-process, files): a resumed run cuts `metrics.jsonl` and the TensorBoard files at
/// the lengths its checkpoint recorded, keeping every earlier byte; it checks everything before
/// it changes anything; it never writes through a link.
final class MetricsResumeTests: XCTestCase {
    var dir = ""
    override func setUp() {
        dir = NSTemporaryDirectory() + "lockstep-resume-\(UUID().uuidString)"
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    var path: String { dir + "/metrics.jsonl" }
    func report(_ s: Int) -> StepReport { StepReport(step: s, epoch: 0, loss: 1 / Double(s), frames: 10, gradNorm: 1, clipped: false, seconds: 0.1) }
    func append(_ bytes: [UInt8]) { let h = FileHandle(forWritingAtPath: path)!; h.seekToEndOfFile(); h.write(Data(bytes)); h.closeFile() }
    var bytes: [UInt8] { [UInt8](FileManager.default.contents(atPath: path) ?? Data()) }

    /// Steps 1-3, a line that does not parse among them, the lengths a checkpoint at step 3
    /// records, then steps 4-5 and garbage past them.
    func history() throws -> (recorded: [String: String], kept: [UInt8]) {
        let log = try MetricsLog(directory: dir, resumeStep: nil)
        try log.write(report(1))
        append(Array("not json, but history\n".utf8))
        for s in 2...3 { try log.write(report(s)) }
        let recorded = log.recorded()
        let kept = bytes
        for s in 4...5 { try log.write(report(s)) }
        append([0xff, 0x0a] + Array("{\"step\": garbage\n".utf8))
        return (recorded, kept)
    }

    func testResumeCutsAtTheRecordedLengthAndKeepsEveryEarlierByte() throws {
        let (recorded, kept) = try history()
        XCTAssertEqual(recorded["metrics_bytes"], String(kept.count))
        let log = try MetricsLog(directory: dir, resumeStep: 3, recorded: recorded)
        XCTAssertEqual(bytes, kept, "the steps after the checkpoint go, every byte before it stays")
        try log.write(report(4))
        XCTAssertEqual(Array(bytes.prefix(kept.count)), kept)
        XCTAssertTrue(String(decoding: bytes, as: UTF8.self).contains("not json, but history"))
    }

    func testAnOlderCheckpointCutsByStepAndKeepsLinesThatDoNotParse() throws {
        let (_, kept) = try history()
        _ = try MetricsLog(directory: dir, resumeStep: 3, recorded: [:])
        XCTAssertEqual(bytes, kept, "cut before the first line of a later step; the unparsed line kept")
    }

    func testAHistoryCutShortOrATbThatIsAFileIsRefusedBeforeAnyChange() throws {
        let (recorded, _) = try history()
        let before = bytes
        var short = recorded; short["metrics_bytes"] = String(before.count + 100)
        XCTAssertThrowsError(try MetricsLog(directory: dir, resumeStep: 3, recorded: short)) { XCTAssertTrue("\($0)".contains("cut short"), "\($0)") }
        XCTAssertEqual(bytes, before, "nothing changed")
        try FileManager.default.removeItem(atPath: dir + "/tb")
        try "not a directory".write(toFile: dir + "/tb", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try MetricsLog(directory: dir, resumeStep: 3, recorded: recorded)) { XCTAssertTrue("\($0)".contains("tb is not a directory"), "\($0)") }
        XCTAssertEqual(bytes, before, "metrics.jsonl untouched when tb/ is wrong")
    }

    func testRunFilesAreNeverWrittenThroughALink() throws {
        let victim = dir + "/victim"
        try "precious".write(toFile: victim, atomically: true, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: path, withDestinationPath: victim)
        XCTAssertThrowsError(try MetricsLog(directory: dir, resumeStep: nil)) { XCTAssertTrue("\($0)".contains("not a regular file"), "\($0)") }
        try FileManager.default.removeItem(atPath: path)
        try FileManager.default.createDirectory(atPath: dir + "/tb", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: dir + "/tb/events.out.tfevents.0000000001.h.1.0", withDestinationPath: victim)
        XCTAssertThrowsError(try MetricsLog(directory: dir, resumeStep: 2, recorded: [:])) { XCTAssertTrue("\($0)".contains("not a regular file"), "\($0)") }
        XCTAssertEqual(try String(contentsOfFile: victim, encoding: .utf8), "precious")
    }

    func testTerminalTextIsEscaped() {
        XCTAssertEqual(terminalSafe("stop\u{1b}]0;owned\u{7}"), "stop\\u{1b}]0;owned\\u{7}")
        XCTAssertEqual(terminalSafe(String(repeating: "a", count: 500), limit: 3), "aaa… (cut)")
    }
}

/// Tier 1 (pure): a validation's metrics line carries per-class precision, recall and F1, the
/// macro-F1 and the confusion counts, all from the tree-summed counts.
final class ValidationLineTests: XCTestCase {
    func testTheLineHasPerClassFiguresMacroF1AndTheConfusion() throws {
        var sums = EvalSums(classes: 3)
        // true 0: 3 frames (2 right, 1 as 1); true 1: 1 frame (right); true 2: 2 frames (both as 0).
        sums.confusion = [0: 2, 1: 1, 4: 1, 6: 2]
        sums.frames = 6; sums.correct = 3; sums.lossSum = 3
        let per = sums.perClass
        XCTAssertEqual(per.precision(0)!, 0.5, accuracy: 1e-12)      // 2 of the 4 predicted 0
        XCTAssertEqual(per.recall(0)!, 2.0 / 3, accuracy: 1e-12)
        XCTAssertEqual(per.f1(1)!, 2 * 0.5 * 1 / 1.5, accuracy: 1e-12)
        XCTAssertNil(per.f1(2), "never predicted")
        // Macro over classes 0, 1, 2 (class 2 occurs: its F1 counts 0), as scikit-learn.
        XCTAssertEqual(per.macroF1, ((2 * 0.5 * (2.0 / 3)) / (0.5 + 2.0 / 3) + 2.0 / 3 + 0) / 3, accuracy: 1e-12)
        let r = ValidationReport(step: 4, epoch: 0, sums: sums, best: per.macroF1, bestStep: 4, improved: true, stopped: nil, lrReduced: nil, select: .f1)
        let o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(try r.json.utf8)) as? [String: Any])
        XCTAssertEqual(o["valid_confusion"] as? [[Int]], [[2, 1, 0], [0, 1, 0], [2, 0, 0]])
        XCTAssertEqual((o["valid_precision"] as? [Any])?.count, 3)
        XCTAssertTrue((o["valid_f1"] as? [Any])?[2] is NSNull, "an undefined F1 is null")
        XCTAssertEqual(o["valid_macro_f1"] as? Double ?? -1, per.macroF1, accuracy: 1e-15)
        XCTAssertNotNil(o["valid_best_macro-f1"], "the best figure is named by --select")
    }
}
