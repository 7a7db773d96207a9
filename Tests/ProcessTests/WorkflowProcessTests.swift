import BiLSTM
@testable import Datasets
import FileIO
@testable import Formats
import Foundation
@testable import Training
import XCTest

/// Tier 3: a whole experiment with the real binaries — validation, early stopping, schedules,
/// `--init`, `eval`, `predict`, `config.toml` — and every new number the same bits at any
/// worker count and after resume.
final class WorkflowProcessTests: XCTestCase {
    var h: ProcessHarness!
    override func setUp() { h = ProcessHarness() }
    override func tearDown() { h.finish(testRun) }

    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("BiLSTMTests/Fixtures").path

    /// Train and validation files of the built-in task (d_in 16, 8 classes); `noisyValid` has
    /// its labels shuffled, so its loss stops improving early.
    func files(noisyValid: Bool = false) throws -> (train: String, valid: String) {
        let task = SyntheticTask(sequences: 96, inputSize: 16, classes: 8, minLength: 5, maxLength: 25)
        let train = task.generate(seed: 5), valid = task.generate(seed: 5, firstId: 96, count: 40)
        var examples = valid.examples
        if noisyValid {
            examples = examples.enumerated().map { i, e -> Example in
                let y: [Int32] = e.y.indices.map { t in Int32((Int(e.y[t]) * 5 + t + i) % 8) }
                return Example(id: e.id, x: e.x, y: y)
            }
        }
        let v = Dataset(examples: examples, inputSize: 16, classes: 8, source: "valid")
        let paths = (h.dir + "/train.npz", h.dir + "/valid.npz")
        try Data(train.npzBytes()).write(to: URL(fileURLWithPath: paths.0))
        try Data(v.npzBytes()).write(to: URL(fileURLWithPath: paths.1))
        return paths
    }

    let model = ["--hidden", "16", "--batch-size", "16", "--shard-size", "4", "--dropout", "0.3", "--max-norm", "0.05", "--seed", "5", "--checkpoint-every", "4"]

    @discardableResult
    func run(_ name: String, _ args: [String], expect code: Int32 = 0) throws -> String {
        let p = try h.start("coord", args, name: name)
        XCTAssertEqual(h.wait(p, timeout: 180), code, h.text(h.log(name)))
        return h.text(h.out(name)) + h.text(h.log(name))
    }

    func validLines(_ dir: String) -> [String] { h.metricsLines(dir).filter { $0.contains("\"valid_loss\"") } }

    func testValidationFiguresAreTheSameBitsAtAnyWorkerCountAndAfterResumeAndChangeNoTrainingBit() throws {
        let (train, valid) = try files()
        let base = ["start", "--data", train, "--steps", "18"] + model
        try run("plain", base + ["--local", "--checkpoint-dir", h.dir + "/plain"])
        let withValid = base + ["--valid-data", valid, "--valid-every", "4"]
        try run("local", withValid + ["--local", "--checkpoint-dir", h.dir + "/local"])
        let reference = validLines(h.dir + "/local")
        XCTAssertEqual(reference.count, 5, "steps 4, 8, 12, 16 and the end")
        XCTAssertEqual(h.hash("local"), h.hash("plain"), "a validation set changes no training bit")
        XCTAssertTrue(FileManager.default.fileExists(atPath: h.dir + "/local/best.safetensors"))
        for n in [1, 2, 3] {
            try run("spawn\(n)", withValid + ["--spawn", "\(n)", "--checkpoint-dir", h.dir + "/spawn\(n)"])
            XCTAssertEqual(validLines(h.dir + "/spawn\(n)"), reference, "\(n) workers: the valid_* lines, byte for byte")
            XCTAssertEqual(h.hash("spawn\(n)"), h.hash("plain"))
            if n == 1 {
                // The validation ran on the worker: 18 steps × 4 shards, and 5 validations × 10 shards (40 sequences in 16+16+8).
                let said = h.text(h.dir + "/spawn1/worker-0.log")
                XCTAssertTrue(said.contains("exiting after 122 shard(s)"), said)
            }
            let best = try Checkpoint.load(path: h.dir + "/spawn\(n)/best.safetensors"), ref = try Checkpoint.load(path: h.dir + "/local/best.safetensors")
            XCTAssertEqual(best.params.sha256, ref.params.sha256, "best.safetensors: the same weights")
            XCTAssertEqual(best.step, ref.step)
            XCTAssertEqual(best.metadata["valid_best"], ref.metadata["valid_best"])
        }
        // Killed after a validation, resumed: the same lines.
        let c = try h.start("coord", withValid + ["--bind", "tcp://127.0.0.1:0", "--checkpoint-dir", h.dir + "/killed"], name: "killed")
        let ep = try XCTUnwrap(h.endpoint("killed"))
        let w = try h.start("worker", ["join", ep, "--debug-delay", "0.05"], name: "slow")
        XCTAssertTrue(h.until(120) { self.validLines(self.h.dir + "/killed").count >= 2 })
        h.kill9(c)
        let again = try h.start("coord", withValid + ["--bind", ep, "--checkpoint-dir", h.dir + "/killed", "--resume"], name: "resumed")
        XCTAssertEqual(h.wait(again, timeout: 180), 0, h.text(h.log("resumed")))
        XCTAssertEqual(validLines(h.dir + "/killed"), reference, "after kill -9 and --resume")
        XCTAssertEqual(h.hash("resumed"), h.hash("plain"))
        h.kill9(w)
    }

    func testEarlyStoppingStopsAtTheSameStepAfterAResumeAndTheBestIsTheBestValidation() throws {
        let (train, valid) = try files(noisyValid: true)
        let args = ["start", "--local", "--data", train, "--valid-data", valid, "--valid-every", "2", "--patience", "3", "--lr", "0.05"] + model
        let out = try run("straight", args + ["--steps", "80", "--checkpoint-dir", h.dir + "/straight"])
        let stop = try XCTUnwrap(out.range(of: "early stop at step ").map { Int(out[$0.upperBound...].prefix { $0.isNumber })! }, out)
        XCTAssertLessThan(stop, 80)
        let lines = validLines(h.dir + "/straight")
        XCTAssertTrue(lines.last!.contains("\"stopped\":\"early stop at step \(stop)"), lines.last!)
        XCTAssertEqual(h.metricsLines(h.dir + "/straight").filter { !$0.contains("valid_loss") }.count, stop, "no step after the stop")
        // The best is the validation with the lowest loss, and best.safetensors holds its step.
        let losses = lines.map { line -> (Int, Double) in
            let o = try! JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            return (o["step"] as! Int, o["valid_loss"] as! Double)
        }
        let best = losses.min { $0.1 < $1.1 }!
        XCTAssertTrue(out.contains("best: step \(best.0),"), out)
        let ck = try Checkpoint.load(path: h.dir + "/straight/best.safetensors")
        XCTAssertEqual(ck.step, best.0)
        // Stopped short of the stop, then resumed with the full length: the same stop, the same bits.
        let first = max(2, (stop - 2) / 2 * 2)
        try run("first", args + ["--steps", "\(first)", "--checkpoint-dir", h.dir + "/split"])
        let resumed = try run("rest", args + ["--steps", "80", "--checkpoint-dir", h.dir + "/split", "--resume"])
        XCTAssertTrue(resumed.contains("extending the run: it ended at step \(first), now at step 80"), resumed)
        XCTAssertTrue(resumed.contains("early stop at step \(stop)"), resumed)
        XCTAssertEqual(h.hash("rest"), h.hash("straight"))
        XCTAssertEqual(validLines(h.dir + "/split"), lines)
        // Two workers: the same stop, the same bits.
        var cluster = args
        cluster[1] = "--spawn"
        cluster.insert("2", at: 2)
        let two = try run("two", cluster + ["--steps", "80", "--checkpoint-dir", h.dir + "/two"])
        XCTAssertTrue(two.contains("early stop at step \(stop)"), two)
        XCTAssertEqual(h.hash("two"), h.hash("straight"))
        XCTAssertEqual(validLines(h.dir + "/two"), lines)
    }

    func testASchedulesRatesAreInTheMetricsAndPlateauNeedsValidation() throws {
        let (train, valid) = try files()
        try run("cos", ["start", "--local", "--data", train, "--steps", "12", "--lr-schedule", "cosine", "--warmup-steps", "3",
                        "--lr", "0.0078125", "--checkpoint-dir", h.dir + "/cos"] + model)
        var config = LRScheduleConfig()
        config.kind = .cosine; config.warmupSteps = 3
        let rates = h.metricsLines(h.dir + "/cos").map { line -> Float in
            let o = try! JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            return Float((o["lr"] as! NSNumber).doubleValue)
        }
        XCTAssertEqual(rates, (0..<12).map { LRSchedule.rate(step: $0, total: 12, base: 0.0078125, config: config) })
        XCTAssertEqual(rates[0], 0.0078125 / 4)
        let refused = try run("plateau", ["start", "--local", "--data", train, "--lr-schedule", "plateau", "--checkpoint-dir", h.dir + "/p"], expect: 64)
        XCTAssertTrue(refused.contains("--lr-schedule plateau reads the validation loss: give --valid-data"), refused)
        try run("plateau2", ["start", "--local", "--data", train, "--valid-data", valid, "--valid-every", "1", "--lr-schedule", "plateau",
                             "--plateau-patience", "0", "--lr-gamma", "0.5", "--steps", "10", "--lr", "0.2", "--checkpoint-dir", h.dir + "/p2"] + model)
        // Replay ReduceLROnPlateau on the logged validation losses: every step's rate follows.
        var c = LRScheduleConfig()
        c.kind = .plateau; c.plateauPatience = 0; c.gamma = 0.5
        var plateau = PlateauState(lr: Double(Float(0.2)))
        var reductions = 0
        for line in h.metricsLines(h.dir + "/p2") {
            let o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            if let v = o["valid_loss"] as? Double {
                if plateau.observe(v, config: c) { reductions += 1 }
            } else {
                XCTAssertEqual(Float((o["lr"] as! NSNumber).doubleValue), Float(plateau.lr), line)
            }
        }
        XCTAssertGreaterThan(reductions, 0, "the rate was reduced at least once")
    }

    /// A validation file that does not fit the training data is refused before any step.
    func testAValidationSetThatDoesNotFitIsRefusedNamingTheFileAndTheFix() throws {
        let (train, _) = try files()
        let narrow = try run("narrow", ["start", "--local", "--data", train, "--valid-data", WorkflowProcessTests.fixtures + "/bi2.data.npz",
                                        "--checkpoint-dir", h.dir + "/n"], expect: 1)
        XCTAssertTrue(narrow.contains("--valid-data") && narrow.contains("x has d_in = 5 but the training data") && narrow.contains("HINT"), narrow)
        let task = SyntheticTask(sequences: 8, inputSize: 16, classes: 8, minLength: 5, maxLength: 9)
        let v = task.generate(seed: 9)
        let relabelled = Dataset(examples: v.examples.map { Example(id: $0.id, x: $0.x, y: $0.y.map { _ in 9 }) }, inputSize: 16, classes: 10, source: "v")
        try Data(relabelled.npzBytes()).write(to: URL(fileURLWithPath: h.dir + "/wide.npz"))
        let wide = try run("wide", ["start", "--local", "--data", train, "--valid-data", h.dir + "/wide.npz", "--checkpoint-dir", h.dir + "/w"], expect: 1)
        XCTAssertTrue(wide.contains("has label 9; labels on valid frames must be in -1...7") && wide.contains("8 classes"), wide)
        XCTAssertFalse(FileManager.default.fileExists(atPath: h.dir + "/w/checkpoint.safetensors"))
    }

    /// `--init` from a PyTorch state_dict (both names: stacked and split) gives PyTorch's loss at step 1.
    func testInitFromAPyTorchStateDictGivesPyTorchsFirstStepLossAndContradictionsAreNamed() throws {
        for name in ["bi2", "split2"] {
            let f = WorkflowProcessTests.fixtures + "/\(name)"
            let expected = try Safetensors.read(f + ".expected.safetensors").tensors["loss"]!.floats[0]
            let out = try run("init-\(name)", ["start", "--local", "--data", f + ".data.npz", "--init", f + ".weights.safetensors", "--steps", "1",
                                               "--batch-size", "8", "--shard-size", "8", "--dropout", "0", "--checkpoint-dir", h.dir + "/init-\(name)"])
            XCTAssertTrue(out.contains("init: weights from"), out)
            let line = try XCTUnwrap(h.metricsLines(h.dir + "/init-\(name)").first)
            let o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            let loss = try XCTUnwrap(o["loss"] as? Double)
            print("--init \(name): step-1 loss \(loss), PyTorch \(expected), diff \(abs(loss - Double(expected)))")
            XCTAssertEqual(loss, Double(expected), accuracy: 2e-6)
        }
        let f = WorkflowProcessTests.fixtures + "/bi2"
        let wrong = try run("init-wrong", ["start", "--local", "--data", f + ".data.npz", "--init", f + ".weights.safetensors", "--hidden", "32",
                                           "--checkpoint-dir", h.dir + "/wrong"], expect: 1)
        XCTAssertTrue(wrong.contains("--hidden 32: tensor layer1.weight_hh_l0 has shape [24, 6], a hidden size of 6; this run asks for [128, 32]"), wrong)
        // An option given at its default value contradicts the file just the same (the outside report: --hidden 64).
        let atDefault = try run("init-default", ["start", "--local", "--data", f + ".data.npz", "--init", f + ".weights.safetensors", "--hidden", "64",
                                                 "--layers", "2", "--checkpoint-dir", h.dir + "/wrong-default"], expect: 1)
        XCTAssertTrue(atDefault.contains("--hidden 64: tensor layer1.weight_hh_l0 has shape [24, 6]"), atDefault)
        let otherData = try run("init-data", ["start", "--local", "--data", WorkflowProcessTests.fixtures + "/bi3.data.npz", "--init", f + ".weights.safetensors",
                                              "--checkpoint-dir", h.dir + "/wd"], expect: 1)
        XCTAssertTrue(otherData.contains("tensor layer1.weight_ih_l0 has shape [24, 5] (d_in 5) but"), otherData)
        let both = try run("init-resume", ["start", "--local", "--init", f + ".weights.safetensors", "--resume", "--checkpoint-dir", h.dir + "/r"], expect: 64)
        XCTAssertTrue(both.contains("--init starts a new run from weights; --resume continues this one"), both)
        // Fine-tuning a run's best weights, then resuming the fine-tune without --init.
        try run("ft", ["start", "--local", "--data", f + ".data.npz", "--init", f + ".weights.safetensors", "--steps", "3", "--batch-size", "2",
                       "--shard-size", "1", "--checkpoint-dir", h.dir + "/ft"])
        try run("ft-more", ["start", "--local", "--data", f + ".data.npz", "--steps", "5", "--batch-size", "2", "--shard-size", "1",
                            "--checkpoint-dir", h.dir + "/ft", "--resume"])
        try run("ft-straight", ["start", "--local", "--data", f + ".data.npz", "--init", f + ".weights.safetensors", "--steps", "5", "--batch-size", "2",
                                "--shard-size", "1", "--checkpoint-dir", h.dir + "/ft2"])
        XCTAssertEqual(h.hash("ft-more"), h.hash("ft-straight"), "a fine-tune resumes to the same bits")
    }

    /// eval and predict over many batches equal `coord grad` over the whole file as one batch.
    func testEvalAndPredictInManyBatchesEqualOneBatchGrad() throws {
        let f = WorkflowProcessTests.fixtures + "/bi3"
        let ck = f + ".weights.safetensors", data = f + ".data.npz"
        try run("grad", ["grad", "--checkpoint", ck, "--data", data, "--out", h.dir + "/g.safetensors"])
        let g = try Safetensors.read(h.dir + "/g.safetensors")
        let gradLogp = g.tensors["logprobs"]!, width = gradLogp.shape[1], C = gradLogp.shape[2]
        try run("predict", ["predict", "--checkpoint", ck, "--data", data, "--out", h.dir + "/p.npz", "--logprobs", "--batch-size", "2", "--threads", "2"])
        let set = try Dataset.load(npz: data, classes: 3)
        let p = try NPZ.read(h.dir + "/p.npz")
        let pred = p["pred"]!, logp = p["logprobs"]!
        XCTAssertEqual(pred.shape, [set.examples.count, set.paddedLength], "as wide as the input's Lmax")
        var worst: Float = 0
        for (i, e) in set.examples.enumerated() {
            for t in 0..<set.paddedLength {
                guard t < e.length else { XCTAssertEqual(pred.ints[i * set.paddedLength + t], -1); continue }
                let ours = (0..<C).map { logp.floats[(i * set.paddedLength + t) * C + $0] }
                let theirs = (0..<C).map { gradLogp.floats[(i * width + t) * C + $0] }
                worst = max(worst, zip(ours, theirs).map { abs($0 - $1) }.max()!)
                XCTAssertEqual(pred.ints[i * set.paddedLength + t], ours.indices.max { ours[$0] < ours[$1] }!)
            }
        }
        print("predict (batches of 2) against grad (one batch): max |Δ logprob| = \(worst)")
        XCTAssertLessThan(worst, 1e-6)
        let json = try run("eval", ["eval", "--checkpoint", ck, "--data", data, "--batch-size", "2", "--json"])
        let o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(h.text(h.out("eval")).utf8)) as? [String: Any], json)
        XCTAssertEqual(o["loss"] as! Double, Double(g.tensors["loss"]!.floats[0]), accuracy: 1e-6)
        XCTAssertEqual(o["frames"] as? Int, set.examples.reduce(0) { $0 + $1.y.filter { $0 >= 0 }.count })
        let table = try run("eval-text", ["eval", "--checkpoint", ck, "--data", data, "--threads", "3", "--batch-size", "1"])
        for s in ["frames", "accuracy", "precision", "recall", "F1", "confusion (rows: true class, columns: predicted)"] { XCTAssertTrue(table.contains(s), table) }
        // Bad input, each refused naming the file and the fix.
        var unlabelled = set.npzBytes()
        unlabelled = try NPZ.without("y", unlabelled)
        try Data(unlabelled).write(to: URL(fileURLWithPath: h.dir + "/nolabels.npz"))
        let noY = try run("eval-noy", ["eval", "--checkpoint", ck, "--data", h.dir + "/nolabels.npz"], expect: 1)
        XCTAssertTrue(noY.contains("array 'y' is missing") && noY.contains("coord predict"), noY)
        try run("predict-noy", ["predict", "--checkpoint", ck, "--data", h.dir + "/nolabels.npz", "--out", h.dir + "/p2.npz"])
        let wide = try run("eval-other", ["eval", "--checkpoint", WorkflowProcessTests.fixtures + "/bi2.weights.safetensors", "--data", data], expect: 1)
        XCTAssertTrue(wide.contains("d_in = 3 features per frame but the model in") || wide.contains("has 4 classes"), wide)
        let labels = try run("eval-labels", ["eval", "--checkpoint", ck, "--data", WorkflowProcessTests.fixtures + "/bi2.data.npz"], expect: 1)
        XCTAssertTrue(labels.contains("labels on valid frames must be in -1...2") && labels.contains("has 3 classes"), labels)
        let clobber = try run("predict-clobber", ["predict", "--checkpoint", ck, "--data", data, "--out", data], expect: 64)
        XCTAssertTrue(clobber.contains("is the --data file itself"), clobber)
    }

    /// Ctrl-C leaves the workers reconnecting: the resumed coordinator gets them back by itself.
    func testAnInterruptedCoordinatorLeavesItsWorkersToRejoinTheResumedOne() throws {
        let ref = try h.reference(steps: 24)
        let args = ["start", "--checkpoint-dir", h.dir + "/int"] + ProcessHarness.options(steps: 24)
        let c = try h.start("coord", args + ["--bind", "tcp://127.0.0.1:0"], name: "int")
        let ep = try XCTUnwrap(h.endpoint("int"))
        let w = try h.start("worker", ["join", ep, "--debug-delay", "0.05"], name: "w")
        XCTAssertTrue(h.until(60) { self.h.metricsLines(self.h.dir + "/int").count >= 6 })
        kill(c.processIdentifier, SIGINT)
        XCTAssertEqual(h.wait(c, timeout: 30), 130, "a requested stop is not a failure")
        let said = h.text(h.log("int"))
        XCTAssertTrue(said.contains("the 1 worker(s) that joined keep reconnecting and rejoin it by themselves"), said)
        XCTAssertTrue(h.until(5) { self.h.text(self.h.log("w")).contains("reconnecting") }, h.text(h.log("w")))
        XCTAssertTrue(w.isRunning, "the worker was not told to stop")
        let again = try h.start("coord", args + ["--bind", ep, "--resume"], name: "int2")
        XCTAssertEqual(h.wait(again, timeout: 120), 0, h.text(h.log("int2")))
        XCTAssertEqual(h.hash("int2"), ref)
        XCTAssertFalse(h.text(h.log("int2")).contains("refused a connection"), "the rejoining worker is not reported as an intruder: \(h.text(h.log("int2")))")
        XCTAssertEqual(h.wait(w, timeout: 30), 0, "stopped by the resumed coordinator at the end")
    }

    /// `--metrics-port`: scraped during a real cluster run, it shows the step the metrics log has.
    /// `coord status` of an `--epochs` run shows its total (from the metrics lines) and then "done".
    func testStatusOfAnEpochsRunShowsItsTotal() throws {
        let opts = Array(ProcessHarness.options(steps: 1).dropFirst(2))   // the same options without --steps
        let run = try h.start("coord", ["start", "--local", "--epochs", "2", "--checkpoint-dir", h.dir + "/ep"] + opts, name: "ep")
        XCTAssertEqual(h.wait(run, timeout: 120), 0, h.text(h.log("ep")))
        let status = try h.start("coord", ["status", h.dir + "/ep"], name: "status")
        XCTAssertEqual(h.wait(status, timeout: 30), 0)
        let line = h.text(h.out("status"))
        // 96 sequences in batches of 16: 6 steps an epoch, 12 in all.
        XCTAssertTrue(line.hasPrefix("step 12/12 ") && line.contains("done"), line)
    }

    /// `--valid-split F`: the held-out sequences are a function of their id and the seed, so the
    /// run has one hash and the same validation lines locally, with 2 workers, after kill -9 and
    /// --resume, and on the packed copy of the data; the split is part of the config. On the
    /// built-in task, with `--class-weights auto` too (the skewed task's test is below).
    func testAValidationSplitIsTheSameSetEverywhere() throws {
        let (train, _) = try files()
        let packed = h.dir + "/split-packed"
        try run("split-pack", ["data", "pack", train, "--out", packed])
        let base = ["start", "--steps", "12", "--valid-split", "0.25", "--valid-every", "4", "--class-weights", "auto"] + model
        try run("split-local", base + ["--data", train, "--local", "--checkpoint-dir", h.dir + "/split-local"])
        let reference = validLines(h.dir + "/split-local")
        XCTAssertEqual(reference.count, 3, "steps 4, 8 and 12")
        let toml = h.text(h.dir + "/split-local/config.toml")
        XCTAssertTrue(toml.contains("valid-split = 0.25"), toml)
        try run("split-spawn", base + ["--data", train, "--spawn", "2", "--checkpoint-dir", h.dir + "/split-spawn"])
        XCTAssertEqual(validLines(h.dir + "/split-spawn"), reference)
        XCTAssertEqual(h.hash("split-spawn"), h.hash("split-local"))
        try run("split-packed-run", base + ["--data", packed, "--local", "--checkpoint-dir", h.dir + "/split-packed-run"])
        XCTAssertEqual(h.hash("split-packed-run"), h.hash("split-local"), "the .npz or its packed copy: the same split")
        let c = try h.start("coord", base + ["--data", train, "--bind", "tcp://127.0.0.1:0", "--checkpoint-dir", h.dir + "/split-killed"], name: "split-killed")
        let ep = try XCTUnwrap(h.endpoint("split-killed"))
        let w = try h.start("worker", ["join", ep, "--debug-delay", "0.05"], name: "split-w")
        XCTAssertTrue(h.until(120) { self.validLines(self.h.dir + "/split-killed").count >= 1 })
        h.kill9(c)
        let again = try h.start("coord", base + ["--data", train, "--bind", ep, "--checkpoint-dir", h.dir + "/split-killed", "--resume"], name: "split-resumed")
        XCTAssertEqual(h.wait(again, timeout: 180), 0, h.text(h.log("split-resumed")))
        XCTAssertEqual(validLines(h.dir + "/split-killed"), reference, "after kill -9 and --resume")
        XCTAssertEqual(h.hash("split-resumed"), h.hash("split-local"))
        h.kill9(w)
        // Another fraction is another run; dropping it on resume is refused by name.
        let refused = try run("split-changed", ["start", "--steps", "14", "--valid-every", "4"] + model
                                  + ["--data", train, "--local", "--resume", "--checkpoint-dir", h.dir + "/split-local"], expect: 1)
        XCTAssertTrue(refused.contains("--valid-split"), refused)
    }

    /// `--class-weights` with `--valid-split` on skewed data (75% of frames in class 0): one hash
    /// locally, with 2 workers and after kill -9 and --resume; `auto` is written out as the
    /// weights it found, so config.toml repeats the run; dropping the weights on resume is refused.
    func testClassWeightsAndASplitGiveOneHashEverywhereOnSkewedData() throws {
        let task = SyntheticTask(sequences: 96, inputSize: 16, classes: 8, minLength: 5, maxLength: 25)
        let skewed = task.generate(seed: 5).examples.map { e in Example(id: e.id, x: e.x, y: e.y.map { $0 < 6 ? 0 : $0 - 5 }) }
        let train = h.dir + "/skewed.npz"
        try Data(Dataset(examples: skewed, inputSize: 16, classes: 3, source: "skewed").npzBytes()).write(to: URL(fileURLWithPath: train))
        let base = ["start", "--data", train, "--steps", "12", "--valid-split", "0.25", "--valid-every", "4", "--select", "macro-f1"] + model
        let weighted = base + ["--class-weights", "auto"]
        try run("cw-plain", base + ["--local", "--checkpoint-dir", h.dir + "/cw-plain"])
        try run("cw-local", weighted + ["--local", "--checkpoint-dir", h.dir + "/cw-local"])
        XCTAssertNotEqual(h.hash("cw-local"), h.hash("cw-plain"), "the weights are part of the math")
        let reference = validLines(h.dir + "/cw-local")
        XCTAssertEqual(reference.count, 3)
        let toml = h.text(h.dir + "/cw-local/config.toml")
        let line = try XCTUnwrap(toml.split(separator: "\n").first { $0.hasPrefix("class-weights = ") }, toml)
        // 72 training sequences: class 0 has most frames, so the smallest weight.
        let weights = line.dropFirst("class-weights = \"".count).dropLast().split(separator: ",").compactMap { Float(String($0)) }
        XCTAssertEqual(weights.count, 3, String(line))
        XCTAssertTrue(weights[0] < 1 && weights[1] > 1 && weights[2] > 1, String(line))
        try run("cw-spawn", weighted + ["--spawn", "2", "--checkpoint-dir", h.dir + "/cw-spawn"])
        XCTAssertEqual(h.hash("cw-spawn"), h.hash("cw-local"))
        XCTAssertEqual(validLines(h.dir + "/cw-spawn"), reference)
        try run("cw-rerun", ["start", "--config", h.dir + "/cw-local/config.toml", "--local", "--checkpoint-dir", h.dir + "/cw-rerun"])
        XCTAssertEqual(h.hash("cw-rerun"), h.hash("cw-local"), "config.toml repeats the run")
        let c = try h.start("coord", weighted + ["--bind", "tcp://127.0.0.1:0", "--checkpoint-dir", h.dir + "/cw-killed"], name: "cw-killed")
        let ep = try XCTUnwrap(h.endpoint("cw-killed"))
        let w = try h.start("worker", ["join", ep, "--debug-delay", "0.05"], name: "cw-w")
        XCTAssertTrue(h.until(120) { self.validLines(self.h.dir + "/cw-killed").count >= 1 })
        h.kill9(c)
        let again = try h.start("coord", weighted + ["--bind", ep, "--checkpoint-dir", h.dir + "/cw-killed", "--resume"], name: "cw-resumed")
        XCTAssertEqual(h.wait(again, timeout: 180), 0, h.text(h.log("cw-resumed")))
        XCTAssertEqual(h.hash("cw-resumed"), h.hash("cw-local"))
        XCTAssertEqual(validLines(h.dir + "/cw-killed"), reference)
        h.kill9(w)
        let refused = try run("cw-dropped", base + ["--steps", "14", "--local", "--resume", "--checkpoint-dir", h.dir + "/cw-local"], expect: 1)
        XCTAssertTrue(refused.contains("--class-weights"), refused)
        let wrong = try run("cw-wrong", base + ["--class-weights", "1,2", "--local", "--checkpoint-dir", h.dir + "/cw-wrong"], expect: 1)
        XCTAssertTrue(wrong.contains("--class-weights: 2 weights for 3 classes"), wrong)
    }

    /// `coord export` writes an ONNX file that names the weights it holds, and refuses to write
    /// over its checkpoint, a device or a link. (scripts/check-onnx runs such files in ONNX Runtime.)
    func testExportWritesAnOnnxModelAndRefusesABadOut() throws {
        try run("ex-train", ["start", "--local", "--steps", "2", "--hidden", "8", "--arch", "split", "--checkpoint-dir", h.dir + "/ex"])
        let ck = h.dir + "/ex/checkpoint.safetensors", out = h.dir + "/ex/model.onnx"
        let said = try run("ex", ["export", "--checkpoint", ck, "--out", out])
        XCTAssertTrue(said.contains("ONNX opset 17") && said.contains("logprobs float32 [N, T, 8]"), said)
        XCTAssertTrue(said.contains("weights sha256: \(try Checkpoint.load(path: ck).params.sha256)"), said)
        let bytes = try XCTUnwrap(FileManager.default.contents(atPath: out))
        XCTAssertGreaterThan(bytes.count, 1000)
        XCTAssertTrue(String(decoding: bytes, as: UTF8.self).contains("lockstep"), "the producer is named")
        let same = try run("ex-self", ["export", "--checkpoint", ck, "--out", ck], expect: 64)
        XCTAssertTrue(same.contains("is the --checkpoint file itself"), same)
        let device = try run("ex-dev", ["export", "--checkpoint", ck, "--out", "/dev/null"], expect: 1)
        XCTAssertTrue(device.contains("/dev/null"), device)
        try FileManager.default.createSymbolicLink(atPath: h.dir + "/ex/link.onnx", withDestinationPath: h.dir + "/ex/elsewhere")
        let link = try run("ex-link", ["export", "--checkpoint", ck, "--out", h.dir + "/ex/link.onnx"], expect: 1)
        XCTAssertTrue(link.contains("link"), link)
        XCTAssertFalse(FileManager.default.fileExists(atPath: h.dir + "/ex/elsewhere"))
    }

    func testThePrometheusEndpointServesTheRunsFiguresWhileItTrains() throws {
        let c = try h.start("coord", ["start", "--bind", "tcp://127.0.0.1:0", "--metrics-port", "0", "--checkpoint-dir", h.dir + "/prom"]
                                + ProcessHarness.options(steps: 40), name: "prom")
        let ep = try XCTUnwrap(h.endpoint("prom"))
        _ = try h.start("worker", ["join", ep, "--debug-delay", "0.05"], name: "w")
        var url = ""
        XCTAssertTrue(h.until(30) {
            url = self.h.text(self.h.log("prom")).components(separatedBy: "metrics: http://").dropFirst().first?.prefix { $0 != " " }.description ?? ""
            return !url.isEmpty
        })
        let port = try XCTUnwrap(url.split(separator: ":").last?.split(separator: "/").first.map(String.init))
        XCTAssertTrue(h.until(60) { self.h.metricsLines(self.h.dir + "/prom").count >= 4 })
        let fd = h.rawConnect("tcp://127.0.0.1:\(port)")
        XCTAssertGreaterThanOrEqual(fd, 0)
        let request = Array("GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".utf8)
        _ = request.withUnsafeBytes { Foundation.write(fd, $0.baseAddress, $0.count) }
        var response = [UInt8](), buffer = [UInt8](repeating: 0, count: 65536)
        while case let n = buffer.withUnsafeMutableBytes({ Foundation.read(fd, $0.baseAddress, $0.count) }), n > 0 { response += buffer[0..<n] }
        close(fd)
        let text = String(decoding: response, as: UTF8.self)
        XCTAssertTrue(text.hasPrefix("HTTP/1.1 200"), text)
        func value(_ name: String) -> Double? {
            text.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ")[1]) }
        }
        let step = try XCTUnwrap(value("lockstep_step"), text)
        XCTAssertGreaterThanOrEqual(step, 4)
        XCTAssertEqual(value("lockstep_total_steps"), 40)
        XCTAssertEqual(value("lockstep_workers_alive"), 1)
        XCTAssertNotNil(value("lockstep_step_seconds_count"))
        let o = try XCTUnwrap(h.metricsLines(h.dir + "/prom").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            .first { $0["step"] as? Int == Int(step) && $0["loss"] != nil })
        XCTAssertEqual(value("lockstep_loss"), o["loss"] as? Double, "the loss of the step it reports")
        XCTAssertEqual(h.wait(c, timeout: 120), 0, h.text(h.log("prom")))
        let exposed = try run("prom-open", ["start", "--local", "--metrics-port", "0", "--metrics-host", "0.0.0.0", "--checkpoint-dir", h.dir + "/open"], expect: 64)
        XCTAssertTrue(exposed.contains("without authentication"), exposed)
    }

    /// `--log-format json`: every stderr line of coord and worker is an object with its role, pid,
    /// level and message, the step where known, the worker id, and an error's HINT.
    func testStructuredLogsAreOneObjectALineWithRolePidStepAndHint() throws {
        func objects(_ name: String) throws -> [[String: Any]] {
            try h.text(h.log(name)).split(separator: "\n").map { line in
                try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "not JSON: \(line)")
            }
        }
        let c = try h.start("coord", ["start", "--bind", "tcp://127.0.0.1:0", "--log-format", "json", "--checkpoint-dir", h.dir + "/json"]
                                + ProcessHarness.options(steps: 8), name: "json")
        let ep = try XCTUnwrap(h.endpoint("json"))
        let w = try h.start("worker", ["join", ep, "--log-format", "json"], name: "wjson")
        XCTAssertEqual(h.wait(c, timeout: 120), 0, h.text(h.log("json")))
        XCTAssertEqual(h.wait(w, timeout: 30), 0)
        let coord = try objects("json"), worker = try objects("wjson")
        XCTAssertGreaterThan(coord.count, 5)
        for o in coord {
            XCTAssertEqual(o["role"] as? String, "coord")
            XCTAssertEqual(o["pid"] as? Int, Int(c.processIdentifier))
            XCTAssertNotNil(o["level"] as? String); XCTAssertNotNil(o["message"] as? String); XCTAssertNotNil(o["ts"] as? String)
        }
        XCTAssertTrue(coord.contains { ($0["message"] as? String)?.hasPrefix("step 8/8") == true && $0["step"] as? Int == 8 }, "\(coord)")
        XCTAssertTrue(coord.contains { ($0["message"] as? String)?.contains("joined") == true && $0["step"] != nil })
        for o in worker {
            XCTAssertEqual(o["role"] as? String, "worker")
            XCTAssertEqual(o["pid"] as? Int, Int(w.processIdentifier))
        }
        XCTAssertTrue(worker.contains { ($0["worker"] as? String)?.isEmpty == false && ($0["message"] as? String)?.contains("joined run") == true })
        // An error keeps its HINT; --log-level warning leaves only warnings and errors.
        let failed = try h.start("coord", ["start", "--local", "--log-format", "json", "--log-level", "warning", "--checkpoint-dir", h.dir + "/json"]
                                     + ProcessHarness.options(steps: 8), name: "jerr")
        XCTAssertEqual(h.wait(failed, timeout: 60), 1)
        let err = try objects("jerr")
        XCTAssertEqual(err.count, 1, "\(err)")
        XCTAssertEqual(err.first?["level"] as? String, "error")
        XCTAssertTrue((err.first?["message"] as? String)?.contains("already holds a checkpoint") == true, "\(err)")
        XCTAssertTrue((err.first?["hint"] as? String)?.contains("--resume") == true, "\(err)")
        // The text form: role and pid in front, the step once known.
        let text = try h.start("coord", ["start", "--local", "--checkpoint-dir", h.dir + "/text"] + ProcessHarness.options(steps: 4), name: "text")
        XCTAssertEqual(h.wait(text, timeout: 60), 0)
        XCTAssertTrue(h.text(h.log("text")).contains("[coord \(text.processIdentifier)] data: synthetic"), h.text(h.log("text")))
    }

    /// The outside report: config.toml stored no run mode (a rerun waited for workers on TCP), and
    /// after an extension it described a fresh run of the new length (another hash). It records
    /// the mode and every earlier horizon of the schedule; a config without a mode is refused.
    func testTheConfigOfAnExtendedRunRepeatsItAndAConfigWithoutAModeIsRefused() throws {
        let (train, _) = try files()
        let base = ["--data", train, "--lr-schedule", "cosine", "--warmup-steps", "2", "--checkpoint-dir", h.dir + "/ext"] + model
        try run("ext1", ["start", "--local", "--epochs", "2"] + base)
        let said = try run("ext2", ["start", "--local", "--resume", "--epochs", "4"] + base)
        XCTAssertTrue(said.contains("extending the run") && said.contains("it follows the schedule to step"), said)
        let toml = h.text(h.dir + "/ext/config.toml")
        XCTAssertTrue(toml.contains("local = true") && toml.contains("schedule-segments = "), toml)
        // A rerun from the file alone, no mode given: local, to the extended run's bits.
        try run("ext-again", ["start", "--config", h.dir + "/ext/config.toml", "--checkpoint-dir", h.dir + "/ext-again"])
        XCTAssertEqual(h.hash("ext-again"), h.hash("ext2"))
        XCTAssertNotNil(h.hash("ext2"))
        // A config that names no mode: refused with the three choices, before anything runs.
        try toml.split(separator: "\n").filter { !$0.hasPrefix("local") }.joined(separator: "\n").write(toFile: h.dir + "/nomode.toml", atomically: true, encoding: .utf8)
        let refused = try run("nomode", ["start", "--config", h.dir + "/nomode.toml", "--checkpoint-dir", h.dir + "/nomode"], expect: 64)
        XCTAssertTrue(refused.contains("names no run mode") && refused.contains("--local") && refused.contains("--spawn N") && refused.contains("--bind"), refused)
    }

    func testTheRunsConfigTomlReproducesItsHashAndResumeNamesEachDifference() throws {
        let (train, valid) = try files()
        try run("orig", ["start", "--local", "--data", train, "--valid-data", valid, "--steps", "9", "--lr-schedule", "step", "--lr-step-size", "4",
                         "--checkpoint-dir", h.dir + "/orig"] + model)
        let toml = h.text(h.dir + "/orig/config.toml")
        XCTAssertTrue(toml.contains("lr-schedule = \"step\"") && toml.contains("valid-data = "), toml)
        try run("again", ["start", "--local", "--config", h.dir + "/orig/config.toml", "--checkpoint-dir", h.dir + "/again"])
        XCTAssertEqual(h.hash("again"), h.hash("orig"))
        XCTAssertNotNil(h.hash("orig"))
        // Flags are keys too.
        try "local = true\nsteps = 2\nunidirectional = true\ncheckpoint-dir = \"\(h.dir)/flags\"\n".write(toFile: h.dir + "/flags.toml", atomically: true, encoding: .utf8)
        let flags = try run("flags", ["start", "--config", h.dir + "/flags.toml", "--synthetic-sequences", "64"])
        XCTAssertTrue(flags.contains("uniLSTM"), flags)
        // Resume: longer is allowed; anything else is refused naming each key with both values.
        let refused = try run("changed", ["start", "--local", "--data", train, "--valid-data", valid, "--steps", "12", "--lr-schedule", "cosine",
                                          "--checkpoint-dir", h.dir + "/orig", "--resume", "--lr", "0.5"] + model, expect: 1)
        for s in ["--lr: the checkpoint has 0.01, this run 0.5", "--lr-schedule: the checkpoint has step, this run cosine", "--lr-step-size: the checkpoint has 4, this run (none)"] {
            XCTAssertTrue(refused.contains(s), refused)
        }
    }
}

/// The arrays of an `.npz` (stored members), for checking what `predict` wrote.
enum NPZ {
    struct Array { let shape: [Int]; let floats: [Float]; let ints: [Int] }
    static func read(_ path: String) throws -> [String: Array] {
        let zip = try ZipArchive(bytes: try Bytes.map(path: path), path: path, memory: Memory.budget)
        var out: [String: Array] = [:]
        for e in zip.entries {
            let (bytes, owner) = try zip.read(e)
            let a = try NPYArray.parse(bytes, owner: owner, file: path, array: e.name)
            let name = String(e.name.dropLast(4))
            out[name] = a.descr == "<f4" ? Array(shape: a.shape, floats: try a.floats(file: path, array: name), ints: [])
                                          : Array(shape: a.shape, floats: [], ints: try a.ints(file: path, array: name))
        }
        return out
    }

    /// The same `.npz` without one member.
    static func without(_ member: String, _ npz: [UInt8]) throws -> [UInt8] {
        let zip = try npz.withUnsafeBytes { try ZipArchive(bytes: Bytes.copy(Swift.Array($0)), path: "npz", memory: Memory.budget) }
        let kept = try zip.entries.filter { $0.name != member + ".npy" }.map { e -> (name: String, bytes: [UInt8]) in
            (e.name, Swift.Array(try zip.read(e).bytes))
        }
        return ZipArchive.write(kept)
    }
}
