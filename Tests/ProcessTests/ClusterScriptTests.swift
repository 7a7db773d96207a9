import Foundation
import XCTest

/// Tier 3 (real processes): the local test cluster's scripts, `cluster/up`, `status` and `down`,
/// run by bash on the built binaries. `down` must stop exactly the pids `up` started, never a
/// process that merely has the same name or a recycled pid number.
final class ClusterScriptTests: XCTestCase {
    var h: ProcessHarness!
    /// Run directories of `cluster/up`: the harness does not know their pids, so `down` cleans up.
    var runs: [String] = []
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    override func setUp() { h = ProcessHarness() }
    override func tearDown() {
        for run in runs { _ = try? script("down", [run]) }
        h.finish(testRun)
    }

    /// Runs `cluster/NAME ARGS…` to its end with LOCKSTEP_BIN pointing at the built binaries.
    func script(_ name: String, _ args: [String], timeout: Double = 60, in cwd: String? = nil) throws -> (status: Int32, output: String) {
        let p = Process()
        if let cwd { p.currentDirectoryURL = URL(fileURLWithPath: cwd) }
        p.executableURL = URL(fileURLWithPath: "/bin/bash")
        p.arguments = [root + "/cluster/" + name] + args
        var env = ProcessInfo.processInfo.environment
        env["LOCKSTEP_BIN"] = h.bin
        p.environment = env
        let path = h.dir + "/\(name)-\(UUID().uuidString).txt"
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        p.standardOutput = FileHandle(forWritingAtPath: path)
        p.standardError = FileHandle(forWritingAtPath: path)
        try p.run()
        // Not `h.wait`: Foundation learns of an exit by EOF on a socket the child inherits, so a
        // script whose background children kept it would never be seen to end (`up` closes it).
        guard h.until(timeout, { !p.isRunning }) else {
            XCTFail("cluster/\(name) \(args.joined(separator: " ")) did not end within \(timeout) s: \(h.text(path))")
            return (-1, h.text(path))
        }
        return (p.terminationStatus, h.text(path))
    }

    /// The pids recorded in a run directory, coordinator first.
    func recordedPids(_ run: String) -> [Int32] {
        h.text(run + "/pids").split(separator: "\n").compactMap { $0.split(separator: " ").first.flatMap { Int32($0) } }
    }

    /// A process runs (not only its zombie, which nobody may reap once `up` has exited).
    func running(_ pid: Int32) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        let state = stat[stat.index(close, offsetBy: 2)]
        return state != "Z" && state != "X"
    }

    /// A relative run directory and --data are the caller's, not the repository's.
    func testUpReadsRelativePathsFromTheCallersDirectory() throws {
        let here = h.dir + "/caller"
        try FileManager.default.createDirectory(atPath: here + "/data", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: root + "/Tests/BiLSTMTests/Fixtures/bi2.data.npz", toPath: here + "/data/train.npz")
        runs.append(here + "/rel")
        let up = try script("up", ["1", "rel", "--data", "data/train.npz", "--steps", "400", "--batch-size", "2", "--shard-size", "1",
                                   "--hidden", "4", "--layers", "1"], in: here)
        XCTAssertEqual(up.status, 0, up.output)
        XCTAssertTrue(FileManager.default.fileExists(atPath: here + "/rel/coord.log"), up.output)
        XCTAssertTrue(h.text(here + "/rel/coord.log").contains("data: data/train.npz"), h.text(here + "/rel/coord.log"))
        XCTAssertTrue(up.output.contains("tail -f rel/coord.log") || up.output.contains("has ended"), up.output)
        XCTAssertEqual(try script("down", ["rel"], in: here).status, 0)
    }

    func testUpReachesTheLocalBitsThroughADownAndAResumeAndDownStopsOnlyItsOwnPids() throws {
        let opts = ProcessHarness.options(steps: 60)
        let config = root + "/cluster/local.toml"
        let ref = try h.start("coord", ["start", "--local", "--config", config, "--checkpoint-dir", h.dir + "/ref"] + opts, name: "ref")
        XCTAssertEqual(h.wait(ref, timeout: 120), 0, h.text(h.log("ref")))
        let refHash = try XCTUnwrap(h.hash("ref"))
        // Another `worker` process, not the cluster's: it retries a closed port until killed.
        let decoy = try h.start("worker", ["join", "tcp://127.0.0.1:1"], name: "decoy")

        let run = h.dir + "/cluster"
        runs.append(run)
        let up = try script("up", ["2", run] + opts + ["--", "--debug-delay", "0.05"])
        XCTAssertEqual(up.status, 0, up.output)
        let pids = recordedPids(run)
        XCTAssertEqual(pids.count, 3, h.text(run + "/pids"))
        XCTAssertTrue(up.output.contains("coordinator pid \(pids[0]) "), up.output)
        for (i, pid) in pids.dropFirst().enumerated() { XCTAssertTrue(up.output.contains("worker \(i + 1) pid \(pid) "), up.output) }
        XCTAssertTrue(h.until(90) { self.h.metricsLines(run).count >= 5 }, h.text(run + "/coord.log"))

        let status = try script("status", [run])
        XCTAssertEqual(status.status, 0)
        for pid in pids { XCTAssertTrue(status.output.contains("\(pid) "), status.output) }
        XCTAssertTrue(status.output.contains("coord start") && status.output.contains("worker join"), status.output)
        // A readable summary, not a JSON line: step/total, loss, workers, ETA.
        XCTAssertNotNil(status.output.range(of: #"step \d+/60  loss \d\.\d{4}  \d+ frames/s  workers 2"#, options: .regularExpression), status.output)
        XCTAssertFalse(status.output.contains("{\"step\""), status.output)

        // The decoy's pid with another start time stands for a pid number the kernel gave to a
        // new process after one of ours exited.
        let handle = try XCTUnwrap(FileHandle(forWritingAtPath: run + "/pids"))
        handle.seekToEndOfFile()
        handle.write(Data("\(decoy.processIdentifier) 1\n".utf8))
        handle.closeFile()
        let down = try script("down", [run])
        XCTAssertEqual(down.status, 0, down.output)
        XCTAssertTrue(down.output.contains("pid \(decoy.processIdentifier) now belongs to another process"), down.output)
        for pid in pids { XCTAssertTrue(h.until(10) { !self.running(pid) }, "pid \(pid) still runs after cluster/down") }
        XCTAssertTrue(decoy.isRunning, "cluster/down stopped a process it did not start")
        XCTAssertTrue(h.text(run + "/coord.log").contains("interrupted after step"), "the run must have been stopped mid-way")
        XCTAssertFalse(FileManager.default.fileExists(atPath: run + "/pids"))

        // The same command plus --resume continues the stopped run to the bits of --local.
        let again = try script("up", ["2", run] + opts + ["--resume"])
        XCTAssertEqual(again.status, 0, again.output)
        XCTAssertTrue(h.until(120) { self.h.text(run + "/coord.out").contains("final weights sha256") }, h.text(run + "/coord.log"))
        XCTAssertTrue(h.text(run + "/coord.out").contains("final weights sha256: \(refHash)"), h.text(run + "/coord.out"))
        XCTAssertEqual(h.metricsLines(run).count, 60, "each step once in metrics.jsonl across the stop")
        let finished = recordedPids(run)
        XCTAssertTrue(h.until(30) { finished.allSatisfy { !self.running($0) } }, "workers exit when the run ends")
        let after = try script("status", [run])
        XCTAssertEqual(after.output.components(separatedBy: "(exited)").count - 1, 3, after.output)
        XCTAssertTrue(after.output.contains(refHash), after.output)

        // Resuming a run that has ended finishes at once, and no worker is left waiting for it.
        let ended = try script("up", ["2", run] + opts + ["--resume"])
        XCTAssertEqual(ended.status, 0, ended.output)
        XCTAssertTrue(ended.output.contains("has ended: final weights sha256: \(refHash)"), ended.output)
        XCTAssertFalse(FileManager.default.fileExists(atPath: run + "/pids"), "its workers were stopped")
        XCTAssertTrue(decoy.isRunning)
        h.kill9(decoy)
    }

    func testUpRefusesABadWorkerCountAndReportsAWorkerThatCannotStart() throws {
        for name in ["up", "status", "down"] {
            let help = try script(name, ["--help"])
            XCTAssertEqual(help.status, 0)
            XCTAssertTrue(help.output.contains("Usage: cluster/\(name)"), help.output)
        }
        let zero = try script("up", ["0", h.dir + "/zero"])
        XCTAssertEqual(zero.status, 2)
        XCTAssertTrue(zero.output.contains("the worker count must be a whole number") && zero.output.contains("HINT:"), zero.output)
        XCTAssertFalse(FileManager.default.fileExists(atPath: h.dir + "/zero/pids"), "nothing started")

        let run = h.dir + "/badworker"
        runs.append(run)
        let bad = try script("up", ["1", run] + ProcessHarness.options(steps: 4) + ["--", "--threads", "0"])
        XCTAssertEqual(bad.status, 1, bad.output)
        XCTAssertTrue(bad.output.contains("worker 1 (pid") && bad.output.contains("--threads must be"), bad.output)
        // The coordinator waits for its worker; down stops it.
        let pids = recordedPids(run)
        XCTAssertEqual(pids.count, 2)
        XCTAssertTrue(running(pids[0]))
        XCTAssertEqual(try script("down", [run]).status, 0)
        XCTAssertTrue(h.until(10) { !self.running(pids[0]) })

        let badCoord = try script("up", ["1", h.dir + "/badcoord", "--no-such-option"])
        XCTAssertEqual(badCoord.status, 1)
        XCTAssertTrue(badCoord.output.contains("the coordinator exited") && badCoord.output.contains("--no-such-option"), badCoord.output)
    }

    /// scripts/load-in-pytorch looks for an interpreter with PyTorch and says how to get one
    /// when there is none (here: a PATH whose first python3 cannot import anything).
    func testLoadInPyTorchSaysHowToGetAnInterpreterWithTorch() throws {
        let fake = h.dir + "/fakebin"
        try FileManager.default.createDirectory(atPath: fake, withIntermediateDirectories: true)
        for name in ["python3", "python3.12", "python3.11", "python3.10", "python"] {
            try "#!/bin/sh\nexit 1\n".write(toFile: fake + "/" + name, atomically: true, encoding: .utf8)
            chmod(fake + "/" + name, 0o755)
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/bash")
        p.arguments = [root + "/scripts/load-in-pytorch", "/nonexistent.safetensors", "/nonexistent.npz"]
        p.environment = ["PATH": fake + ":/usr/bin:/bin", "HOME": h.dir]
        let out = h.dir + "/lip.txt"
        _ = FileManager.default.createFile(atPath: out, contents: nil)
        p.standardError = FileHandle(forWritingAtPath: out)
        p.standardOutput = FileHandle(forWritingAtPath: out)
        try p.run()
        p.waitUntilExit()
        let said = h.text(out)
        XCTAssertEqual(p.terminationStatus, 1, said)
        XCTAssertTrue(said.contains("no Python here imports torch") && said.contains("HINT: python3 -m pip install torch"), said)
    }
}
