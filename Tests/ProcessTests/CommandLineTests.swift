@testable import Formats
import Foundation
@testable import Training
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
        let negative = h.dir + "/negative.toml"
        try "seed = -3\n".write(toFile: negative, atomically: true, encoding: .utf8)
        let latin1 = h.dir + "/latin1.toml"
        try Data([0x23, 0x20, 0xe9, 0x0a, 0x73, 0x74, 0x65, 0x70, 0x73, 0x20, 0x3d, 0x20, 0x33, 0x0a]).write(to: URL(fileURLWithPath: latin1))
        // Found by scripts/fuzz: the C++ parser behind TOMLKit aborted on this instead of reporting it.
        let braces = h.dir + "/braces.toml"
        try "steps = 3\nbatch-size = [1, }\n".write(toFile: braces, atomically: true, encoding: .utf8)
        let both = h.dir + "/both.toml"
        try "steps = 3\nepochs = 2\n".write(toFile: both, atomically: true, encoding: .utf8)
        let labels = h.dir + "/labels.npz"
        var y = [Int64](repeating: 0, count: 6); y[4] = 1_000_000_000
        let x = [Float](repeating: 0.5, count: 12)
        _ = FileManager.default.createFile(atPath: labels, contents: Data(ZipArchive.write([
            ("x.npy", NPYArray.encode(descr: "<f4", shape: [2, 3, 2], data: x.withUnsafeBytes { Array($0) })),
            ("lengths.npy", NPYArray.encode(descr: "<i8", shape: [2], data: [Int64(3), 3].withUnsafeBytes { Array($0) })),
            ("y.npy", NPYArray.encode(descr: "<i8", shape: [2, 3], data: y.withUnsafeBytes { Array($0) }))])))
        let cases: [([String], Int32, [String])] = [
            (["start", "--local", "--shard-size", "0"], 64, ["--shard-size must be at least 1"]),
            (["start", "--local", "--dropout", "1.5", "--lr=-1"], 64, ["dropout must be in [0, 1)", "--lr must be a positive number"]),
            (["start", "--local", "--config", toml], 64, ["unknown key 'batch-sise'", "HINT"]),
            (["start", "--local", "--data", h.dir + "/none.npz"], 1, ["cannot read the data file", "HINT"]),
            (["start", "--spawn", "2", "--local"], 64, ["--spawn and --min-workers are for cluster mode"]),
            (["start", "--local", "--classes", "1000000000"], 64, ["--classes must be in 2...65536"]),
            (["start", "--local", "--config", negative], 64, ["key 'seed' must be a non-negative integer (got -3)"]),
            (["start", "--local", "--config", latin1], 64, ["is not UTF-8 text (invalid byte 0xe9 at offset 2)", "HINT"]),
            (["start", "--local", "--config", both], 64, ["give steps or epochs, not both"]),
            (["start", "--local", "--config", braces], 64, ["line 2: arrays and inline tables are not used in a Lockstep config"]),
            (["start", "--local", "--steps", "3", "--epochs", "2"], 64, ["give --steps or --epochs, not both"]),
            (["start", "--bind", "tcp://localhost:"], 64, ["--bind tcp://localhost: has no port", "HINT"]),
            (["start", "--bind", "tcp://127.0.0.1:99999"], 64, ["port '99999' is not a number in 0...65535"]),
            (["start", "--local", "--data", labels], 1, ["sequence 1, frame 1 has label 1000000000", "limit of 65536 classes"]),
        ]
        for (i, (args, code, expect)) in cases.enumerated() {
            let p = try h.start("coord", args + ["--checkpoint-dir", h.dir + "/c\(i)"], name: "bad\(i)")
            XCTAssertEqual(h.wait(p, timeout: 60), code, args.joined(separator: " "))
            let said = h.text(h.log("bad\(i)"))
            for e in expect { XCTAssertTrue(said.contains(e), "\(args): expected '\(e)' in: \(said)") }
            XCTAssertFalse(FileManager.default.fileExists(atPath: h.dir + "/c\(i)/checkpoint.safetensors"), "no work was done")
        }
    }

    func testARunWhoseLargestShardCannotFitIsRefusedBeforeItWritesItsDirectory() throws {
        // 16 sequences of 30,000 frames a shard, two at once, under a 4 GB address-space limit.
        let dir = h.dir + "/toolong"
        let p = try h.start(path: "/usr/bin/prlimit", ["--as=4000000000", h.bin + "/coord", "start", "--local", "--threads", "2",
                                                       "--synthetic-sequences", "32", "--min-length", "30000", "--max-length", "30000",
                                                       "--batch-size", "32", "--shard-size", "16", "--steps", "2", "--checkpoint-dir", dir],
                            name: "toolong")
        XCTAssertEqual(h.wait(p, timeout: 120), 1)
        let said = h.text(h.log("toolong"))
        XCTAssertTrue(said.contains("a shard of the 16 longest sequences (480000 frames) needs"), said)
        XCTAssertTrue(said.contains("for 2 shard(s) computed at once on this host") && said.contains("HINT: lower --shard-size or --threads"), said)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/config.toml"), "refused before the run directory was written")
    }

    func testEveryLongOptionOfStartIsAConfigKey() throws {
        let toml = h.dir + "/all.toml"
        try """
        local = true
        fresh = true
        steps = 2
        synthetic-sequences = 24
        hidden = 4
        keep-last = 1
        checkpoint-dir = "\(h.dir)/all"
        """.write(toFile: toml, atomically: true, encoding: .utf8)
        for i in 0..<2 {  // twice: `fresh = true` replaces the first run's checkpoint
            let p = try h.start("coord", ["start", "--config", toml], name: "all\(i)")
            XCTAssertEqual(h.wait(p, timeout: 60), 0, h.text(h.log("all\(i)")))
            XCTAssertFalse(h.text(h.log("all\(i)")).contains("listening"), "local = true trains in this process")
            // Its stderr is a file: progress comes as plain lines, never the terminal's live line.
            XCTAssertFalse(h.text(h.log("all\(i)")).contains("\r") || h.text(h.log("all\(i)")).contains("\u{1B}"), "no live progress line in a log file")
        }
        XCTAssertEqual(h.hash("all0"), h.hash("all1"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: h.dir + "/all/checkpoint-step-00000002.safetensors"))
        // The cluster keys too: spawn alone listens on its local socket only.
        let cluster = h.dir + "/cluster.toml"
        try "spawn = 1\nfresh = true\nsteps = 2\nsynthetic-sequences = 24\nhidden = 4\nmax-workers = 3\nwait = 5\ncheckpoint-dir = \"\(h.dir)/cl\"\n"
            .write(toFile: cluster, atomically: true, encoding: .utf8)
        let c = try h.start("coord", ["start", "--config", cluster], name: "cl")
        XCTAssertEqual(h.wait(c, timeout: 60), 0, h.text(h.log("cl")))
        XCTAssertEqual(h.hash("cl"), h.hash("all0"))
        XCTAssertTrue(h.text(h.log("cl")).contains("listening on ipc://"), h.text(h.log("cl")))
        XCTAssertFalse(h.text(h.log("cl")).contains("tcp://"), "no TCP port without --bind: " + h.text(h.log("cl")))
    }

    func testGradRefusesToWriteOverItsCheckpoint() throws {
        let ck = h.dir + "/ck.safetensors"
        try FileManager.default.copyItem(atPath: fixtures + "/bi2.weights.safetensors", toPath: ck)
        let p = try h.start("coord", ["grad", "--checkpoint", ck, "--data", fixtures + "/bi2.data.npz", "--out", h.dir + "/./ck.safetensors"], name: "same")
        XCTAssertEqual(h.wait(p, timeout: 30), 64)
        XCTAssertTrue(h.text(h.log("same")).contains("is the --checkpoint itself"), h.text(h.log("same")))
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: ck)), try Data(contentsOf: URL(fileURLWithPath: fixtures + "/bi2.weights.safetensors")))
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
