import Foundation
import Training
import XCTest

/// Tier 3: the commands as a user runs them: `coord grad`, TOML configs, refusals before work.
final class CommandLineTests: XCTestCase {
    var h: ProcessHarness!
    override func setUp() { h = ProcessHarness() }
    override func tearDown() { h.cleanUp() }

    var fixtures: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("BiLSTMTests/Fixtures").path
    }

    func testGradOnAPyTorchCheckpointMatchesPyTorch() throws {
        let out = h.dir + "/g.safetensors"
        let p = try h.start("coord", ["grad", "--checkpoint", fixtures + "/bi2.weights.safetensors", "--data", fixtures + "/bi2.data.npz", "--out", out], name: "grad")
        XCTAssertEqual(h.wait(p, timeout: 60), 0, h.text(h.log("grad")))
        let got = try Safetensors.read(out), want = try Safetensors.read(fixtures + "/bi2.expected.safetensors")
        XCTAssertEqual(Set(got.tensors.keys), Set(want.tensors.keys))
        for (name, t) in want.tensors {
            let g = got.tensors[name]!.floats
            let worst = zip(g, t.floats).map { abs($0 - $1) }.max() ?? 0
            XCTAssertLessThanOrEqual(worst, 2e-5, name)
        }
    }

    func testTomlConfigWithCommandLineOverride() throws {
        let toml = h.dir + "/run.toml"
        try """
        steps = 3
        batch-size = 12
        shard-size = 4
        hidden = 8
        optimizer = "sgd"
        lr = 0.05
        [synthetic]
        sequences = 40
        input-size = 9
        classes = 3
        min-length = 2
        max-length = 12
        """.write(toFile: toml, atomically: true, encoding: .utf8)
        let p = try h.start("coord", ["start", "--local", "--config", toml, "--batch-size", "8", "--checkpoint-dir", h.dir + "/run"], name: "toml")
        XCTAssertEqual(h.wait(p, timeout: 60), 0, h.text(h.log("toml")))
        let log = h.text(h.log("toml"))
        XCTAssertTrue(log.contains("40 sequences") && log.contains("d_in 9, 3 classes"), log)
        XCTAssertTrue(log.contains("steps 0→3, batch 8, shard 4, sgd lr 0.05"), "TOML values, with --batch-size overriding: \(log)")
        XCTAssertNotNil(h.hash("toml"))
    }

    func testBadConfigsAreRefusedBeforeAnyWork() throws {
        let toml = h.dir + "/bad.toml"
        try "batch-sise = 3\n".write(toFile: toml, atomically: true, encoding: .utf8)
        let cases: [([String], Int32, [String])] = [
            (["start", "--local", "--shard-size", "0"], 64, ["--shard-size must be at least 1"]),
            (["start", "--local", "--dropout", "1.5", "--lr=-1"], 64, ["dropout must be in [0, 1)", "--lr must be a positive number"]),
            (["start", "--local", "--config", toml], 64, ["unknown key 'batch-sise'", "HINT"]),
            (["start", "--local", "--data", h.dir + "/none.npz"], 1, ["cannot read the data file", "HINT"]),
            (["start", "--spawn", "2", "--local"], 64, ["--spawn and --min-workers are for cluster mode"]),
        ]
        for (i, (args, code, expect)) in cases.enumerated() {
            let p = try h.start("coord", args + ["--checkpoint-dir", h.dir + "/c\(i)"], name: "bad\(i)")
            XCTAssertEqual(h.wait(p, timeout: 60), code, args.joined(separator: " "))
            let said = h.text(h.log("bad\(i)"))
            for e in expect { XCTAssertTrue(said.contains(e), "\(args): expected '\(e)' in: \(said)") }
            XCTAssertFalse(FileManager.default.fileExists(atPath: h.dir + "/c\(i)/checkpoint.safetensors"), "no work was done")
        }
    }

    func testBadWorkerOptionsAreRefusedBeforeItConnects() throws {
        let cases: [([String], [String])] = [
            (["join", "ipc:///tmp/none.sock", "--barrier-spin-ms=-1"], ["--barrier-spin-ms must be in 0...1000"]),
            (["join", "127.0.0.1:5555", "--threads", "0"], ["--threads must be in 1...256"]),
            (["join", "127.0.0.1:nope"], ["cannot read the address", "HINT"]),
        ]
        for (i, (args, expect)) in cases.enumerated() {
            let p = try h.start("worker", args, name: "badw\(i)")
            XCTAssertEqual(h.wait(p, timeout: 30), 64, args.joined(separator: " "))
            let said = h.text(h.log("badw\(i)"))
            for e in expect { XCTAssertTrue(said.contains(e), "\(args): expected '\(e)' in: \(said)") }
            XCTAssertFalse(said.contains("connecting"), "refused before connecting: \(said)")
        }
    }

    func testAnExistingCheckpointIsNotOverwrittenWithoutResumeOrFresh() throws {
        let args = ["start", "--local", "--steps", "2", "--synthetic-sequences", "16", "--hidden", "4", "--checkpoint-dir", h.dir + "/k"]
        XCTAssertEqual(h.wait(try h.start("coord", args, name: "first"), timeout: 60), 0)
        let again = try h.start("coord", args, name: "second")
        XCTAssertEqual(h.wait(again, timeout: 60), 1)
        XCTAssertTrue(h.text(h.log("second")).contains("--resume"), h.text(h.log("second")))
    }
}
