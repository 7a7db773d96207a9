import ArgumentParser
import Foundation
import BiLSTM
import Numerics
import Training

struct Start: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train: alone with --local, or as the coordinator of a cluster of workers.",
        discussion: """
        At the end it prints the final weights' SHA-256 and the checkpoint path. For a fixed
        config and data the hash is the same with --local, with any number of workers, and
        after any crash followed by --resume.
        """)

    @OptionGroup var training: TrainingOptions
    @Flag(help: "Train in this process: no workers, no sockets. The reference result.")
    var local = false
    @Flag(help: "Continue from the checkpoint in --checkpoint-dir (to the same final bits).")
    var resume = false
    @Flag(help: "Start from scratch even if --checkpoint-dir already holds a checkpoint (it is replaced).")
    var fresh = false

    func validate() throws {
        let c = try training.runConfig()
        let problems = c.problems()
        if !problems.isEmpty { throw ValidationError(problems.joined(separator: "\n")) }
        if resume && fresh { throw ValidationError("--resume and --fresh contradict each other") }
    }

    func run() throws {
        do {
            let config = try training.runConfig()
            let (trainer, heldOut) = try prepare(config, resume: resume, fresh: fresh)
            try trainLocal(trainer)
            report(trainer, heldOut: heldOut)
        } catch { fail(error) }
    }
}

/// Loads the data and builds (or resumes) the trainer, refusing to clobber a checkpoint.
func prepare(_ config: RunConfig, resume: Bool, fresh: Bool) throws -> (Trainer, Dataset?) {
    let data = try config.loadData()
    let path = (config.checkpointDir as NSString).appendingPathComponent("checkpoint.safetensors")
    var checkpoint: Checkpoint? = nil
    if FileManager.default.fileExists(atPath: path) {
        if resume {
            checkpoint = try Checkpoint.load(path: path)
        } else if !fresh {
            throw LockstepError("\(path) already holds a checkpoint",
                                hint: "pass --resume to continue it, --fresh to replace it, or another --checkpoint-dir")
        }
    } else if resume {
        log("no checkpoint in \(config.checkpointDir): starting from step 0")
    }
    let trainer = try Trainer(run: config, data: data, resumeFrom: checkpoint)
    let heldOut = config.data == nil
        ? config.synthetic.generate(seed: config.seed, firstId: config.synthetic.sequences, count: max(64, config.synthetic.sequences / 8))
        : nil
    let m = trainer.model
    log("data: \(data.source), \(data.examples.count) sequences, \(data.frames) frames, d_in \(data.inputSize), \(data.classes) classes")
    log("model: \(m.arch.rawValue) \(m.bidirectional ? "bi" : "uni")LSTM, \(m.layers) layers, hidden \(m.hidden), dropout \(m.dropout), \(trainer.layout.count) parameters")
    log("training: steps \(trainer.step)→\(trainer.totalSteps), batch \(config.batchSize), shard \(config.shardSize), \(config.optimizer.kind.rawValue) lr \(config.optimizer.lr), max-norm \(config.maxNorm), seed \(config.seed)")
    return (trainer, heldOut)
}

func trainLocal(_ trainer: Trainer) throws {
    BLAS.setThreads(1)
    let computer = ShardComputer(model: trainer.model, seed: trainer.run.seed)
    let metrics = MetricsLog(directory: trainer.run.checkpointDir, resumeStep: trainer.step)
    let progress = Progress(total: trainer.totalSteps)
    while !trainer.done {
        let started = Date()
        let step = trainer.step
        let parts = trainer.shards(forStep: step).map { shard -> (grad: FloatBuffer, result: BatchResult) in
            let grad = FloatBuffer(count: trainer.layout.count)
            let r = computer.compute(params: trainer.params, examples: shard.map { trainer.data.examples[$0] }, step: step, into: grad)
            return (grad, r)
        }
        let report = trainer.apply(parts: parts, seconds: Date().timeIntervalSince(started))
        metrics.write(report)
        progress.update(step: report.step, loss: report.loss, framesPerSecond: Double(report.frames) / max(report.seconds, 1e-9))
        if trainer.run.checkpointEvery > 0 && trainer.step % trainer.run.checkpointEvery == 0 && !trainer.done {
            try trainer.saveCheckpoint()
        }
    }
    try trainer.saveCheckpoint()
}

func report(_ trainer: Trainer, heldOut: Dataset?) {
    if let heldOut {
        print(String(format: "accuracy (held-out synthetic, %d sequences): %.2f%%", heldOut.examples.count, 100 * trainer.accuracy(on: heldOut)))
    } else {
        print(String(format: "accuracy (training data): %.2f%%", 100 * trainer.accuracy(on: trainer.data)))
    }
    print("checkpoint: \(trainer.checkpointPath)")
    print("final weights sha256: \(trainer.weightsHash)")
}

func log(_ s: String) { FileHandle.standardError.write(Data((s + "\n").utf8)) }
