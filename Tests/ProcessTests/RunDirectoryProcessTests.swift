import Foundation
import Glibc
@testable import Observe
@testable import Training
import XCTest

/// Tier 3: a run directory has one owner, and a full disk stops a run cleanly (real processes).
final class RunDirectoryProcessTests: XCTestCase {
    var h: ProcessHarness!

    override func setUp() { h = ProcessHarness() }
    override func tearDown() { h.finish(testRun) }

    func coord(_ name: String, _ args: [String], steps: Int = 12) throws -> Process {
        try h.start("coord", ["start"] + ProcessHarness.options(steps: steps) + args, name: name)
    }

    func testTwoRunsCannotShareADirectoryAKilledHolderLeavesNoLockAndResumeWaitsForThePreviousOne() throws {
        let dir = h.dir + "/run"
        // A coordinator with no workers holds the directory while it waits.
        let holder = try coord("holder", ["--checkpoint-dir", dir, "--bind", "tcp://127.0.0.1:0"])
        XCTAssertNotNil(h.endpoint("holder"))
        let second = try coord("second", ["--local", "--fresh", "--checkpoint-dir", dir, "--seed", "9"])
        XCTAssertEqual(h.wait(second, timeout: 30), 1)
        let said = h.text(h.log("second"))
        XCTAssertTrue(said.contains("\(dir) is in use by another run: pid \(holder.processIdentifier) on host"), said)
        XCTAssertTrue(said.contains("HINT"), said)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/checkpoint.safetensors"), "the refused run wrote nothing")

        // kill -9 leaves no stale lock: the next run starts at once.
        h.kill9(holder)
        let after = try coord("after", ["--local", "--fresh", "--checkpoint-dir", dir])
        XCTAssertEqual(h.wait(after, timeout: 60), 0, h.text(h.log("after")))
        let ref = try XCTUnwrap(h.hash("after"))

        // A resumed coordinator waits, saying so, for the one it replaces (here stopped with TERM,
        // as a preempted job is), then continues to the same bits.
        let old = try coord("old", ["--checkpoint-dir", dir, "--fresh", "--bind", "tcp://127.0.0.1:0"])
        let ep = try XCTUnwrap(h.endpoint("old"))
        let successor = try coord("successor", ["--checkpoint-dir", dir, "--resume", "--wait", "60", "--bind", ep, "--spawn", "1"])
        XCTAssertTrue(h.until(30) { self.h.text(self.h.log("successor")).contains("waiting up to 60 s for pid \(old.processIdentifier)") },
                      h.text(h.log("successor")))
        XCTAssertTrue(successor.isRunning)
        kill(old.processIdentifier, SIGTERM)
        XCTAssertEqual(h.wait(old, timeout: 30), 130)
        XCTAssertTrue(h.text(h.log("old")).contains("interrupted after step 0"), h.text(h.log("old")))
        XCTAssertEqual(h.wait(successor, timeout: 120), 0, h.text(h.log("successor")))
        XCTAssertEqual(h.hash("successor"), ref)
    }

    func testAFullDiskStopsTheRunCleanlyAndResumeReachesTheSameBits() throws {
        let small = ["--hidden", "4", "--checkpoint-every", "4"]
        let refRun = try coord("ref", ["--local", "--checkpoint-dir", h.dir + "/ref"] + small, steps: 40)
        XCTAssertEqual(h.wait(refRun, timeout: 120), 0, h.text(h.log("ref")))
        let ref = try XCTUnwrap(h.hash("ref"))

        let dir = h.dir + "/full"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        guard mount("tmpfs", dir, "tmpfs", 0, "size=80k") == 0 else { throw XCTSkip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)") }
        defer { _ = umount2(dir, 2) }
        let full = try coord("full", ["--local", "--checkpoint-dir", dir] + small, steps: 40)
        XCTAssertEqual(h.wait(full, timeout: 120), 1, "a clean error, not a crash: " + h.text(h.log("full")))
        let said = h.text(h.log("full"))
        XCTAssertTrue(said.contains("No space left on device") && said.contains("HINT"), said)
        XCTAssertFalse(said.contains("Fatal error"), said)
        let ck = try Checkpoint.load(path: dir + "/checkpoint.safetensors")
        XCTAssertTrue(ck.verified && ck.step > 0 && ck.step < 40, "the last checkpoint is intact (step \(ck.step))")

        // Once there is room, --resume continues to the same bits.
        XCTAssertEqual(mount("tmpfs", dir, "tmpfs", UInt(MS_REMOUNT), "size=4m"), 0)
        let resumed = try coord("resumed", ["--local", "--resume", "--checkpoint-dir", dir] + small, steps: 40)
        XCTAssertEqual(h.wait(resumed, timeout: 120), 0, h.text(h.log("resumed")))
        XCTAssertEqual(h.hash("resumed"), ref)
        XCTAssertEqual(h.metricsLines(dir).count, 40, "each step once")
    }

    func testMetricsOnAFullDiskIsAnErrorWithTheFix() throws {
        let dir = h.dir + "/metrics"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        guard mount("tmpfs", dir, "tmpfs", 0, "size=8k") == 0 else { throw XCTSkip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)") }
        defer { _ = umount2(dir, 2) }
        let log = try MetricsLog(directory: dir, resumeStep: nil)
        var report = StepReport(step: 1, epoch: 0, loss: 1, frames: 10, gradNorm: 1, clipped: false, seconds: 1)
        var error: Error?
        for s in 1...1000 where error == nil {
            report.step = s
            do { try log.write(report) } catch let e { error = e }
        }
        let e = try XCTUnwrap(error, "8 KiB cannot hold 1000 lines")
        XCTAssertTrue("\(e)".contains("cannot append to \(dir)/metrics.jsonl: No space left on device") && "\(e)".contains("--resume"), "\(e)")
        let text = try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8)
        XCTAssertTrue(text.hasSuffix("}\n"), "no torn last line")
    }
}
