import ArgumentParser
import BiLSTM
import ClusterProtocol
import Datasets
import FileIO
import Formats
import Foundation
import LockstepLog
import Numerics
import Observe
import Training
import Transport

struct Start: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train: alone with --local, or as the coordinator of a cluster of workers.",
        discussion: """
        At the end it prints the final weights' SHA-256, the checkpoint path and the numerics. \
        For a fixed config and data the hash is the same with --local, with any number of \
        workers or --threads, and after any crash followed by --resume, and with --numerics \
        portable (the default) on any x86-64 or ARM64 CPU with FMA; with --numerics openblas it \
        also depends on the OpenBLAS kernel. A loopback coordinator \
        admits only its own user's workers: it writes a per-run join key (0600) that `worker \
        join` reads by itself; --insecure turns that off. One run owns its --checkpoint-dir.
        """)

    @OptionGroup var training: TrainingOptions
    @OptionGroup var logging: LogOptions
    @Flag(help: "Train in this process: no workers, no sockets. The reference result.")
    var local = false
    @Flag(help: "Continue from the checkpoint in --checkpoint-dir (to the same final bits).")
    var resume = false
    @Flag(help: "Start from scratch even if --checkpoint-dir already holds a checkpoint (it is replaced).")
    var fresh = false
    @Option(help: "ZeroMQ endpoint the coordinator binds (cluster mode; default tcp://127.0.0.1:5555, or with --spawn only the local socket). Port 0 or * picks a free port; the log says which.")
    var bind: String?
    @Option(help: "Start N local worker processes (like torchrun --nproc-per-node). They connect over a Unix socket (mode 0600), exchange weights and gradients through shared memory (/dev/shm), busy-wait at step barriers unless N exceeds the cores, and stop with the coordinator. Without --bind nothing else listens.")
    var spawn: Int?
    @Option(help: "Wait for this many workers before step 1 (default: --spawn, or 1).")
    var minWorkers: Int?
    @Option(help: "Refuse workers beyond this many (default 256).")
    var maxWorkers: Int?
    @Option(help: "CURVE: this coordinator's keypair file (from `coord keygen`). Needs --allow. Required to bind beyond loopback without --insecure.")
    var curveKeys: String?
    @Option(help: "CURVE: allow-list of worker public keys, one 40-character Z85 key per line (# comments).")
    var allow: String?
    @Flag(help: "Allow binding to a non-loopback address without authentication. Anyone who can reach the port can join.")
    var insecure = false
    @Option(help: "Shards computed at once: in this process with --local, in each spawned worker with --spawn. Each runs single-threaded BLAS on a shard of its own, so the result's bits do not depend on it (default 1).")
    var threads: Int?
    @Option(help: "Serve the run's figures in the Prometheus text format at http://--metrics-host:PORT/metrics while it trains (step, loss, learning rate, frames/s, workers alive, shards re-issued, step-time histogram, coordinator time, bytes in and out, validation figures); 0 picks a free port, logged at start.")
    var metricsPort: Int?
    @Option(help: "Address the metrics endpoint listens on (default 127.0.0.1). It has no authentication: another address needs --insecure.")
    var metricsHost: String?
    @Option(help: "With --resume: how many seconds to wait for a previous coordinator of this run (a preempted job still writing its checkpoint) to release the run directory and the port (default 60). Without --resume a run directory in use is refused at once.")
    var wait: Double?

    /// The command's own settings: the command line, else the --config file, else the default.
    struct Settings {
        var local = false, resume = false, fresh = false, insecure = false
        var bind: String? = nil
        var spawn = 0
        var minWorkers: Int? = nil
        var maxWorkers = 256
        var curveKeys: String? = nil, allow: String? = nil
        var wait = 60.0
        var threads = 1
        var metricsPort: Int? = nil
        var metricsHost = "127.0.0.1"
        var logLevel: String? = nil, logFormat: String? = nil
        /// Model options given explicitly (`--init` checks them against its file).
        var explicitModel: Set<String> = []
        /// The --config file, and whether it or the command line names a run mode.
        var configFile: String? = nil
        var modeGiven = false

        /// The run mode as config.toml keys, so `--config DIR/config.toml` reruns the run as it ran.
        var modeLines: [String] {
            if local { return ["local = true"] + (threads > 1 ? ["threads = \(threads)"] : []) }
            var lines: [String] = []
            if spawn > 0 { lines += ["spawn = \(spawn)"] + (threads > 1 ? ["threads = \(threads)"] : []) }
            if let bind { lines.append("bind = \"\(bind)\"") } else if spawn == 0 { lines.append("bind = \"tcp://127.0.0.1:5555\"") }
            if let minWorkers { lines.append("min-workers = \(minWorkers)") }
            return lines
        }
    }

    func resolve() throws -> (RunConfig, Settings) {
        let (run, file) = try training.resolve()
        var s = Settings()
        s.local = try local || file.bool("local") ?? false
        s.resume = try resume || file.bool("resume") ?? false
        s.fresh = try fresh || file.bool("fresh") ?? false
        s.insecure = try insecure || file.bool("insecure") ?? false
        s.bind = try bind ?? file.string("bind")
        s.spawn = try spawn ?? file.int("spawn") ?? 0
        s.minWorkers = try minWorkers ?? file.int("min-workers")
        s.maxWorkers = try maxWorkers ?? file.int("max-workers") ?? 256
        s.curveKeys = try curveKeys ?? file.string("curve-keys")
        s.allow = try allow ?? file.string("allow")
        s.wait = try wait ?? file.double("wait") ?? 60
        s.threads = try threads ?? file.int("threads") ?? 1
        s.metricsPort = try metricsPort ?? file.int("metrics-port")
        s.metricsHost = try metricsHost ?? file.string("metrics-host") ?? "127.0.0.1"
        s.explicitModel = training.explicitModel(file)
        s.configFile = training.config
        s.modeGiven = local || spawn != nil || bind != nil || !file.given.isDisjoint(with: ["local", "spawn", "bind"])
        s.logLevel = try file.string("log-level")
        s.logFormat = try file.string("log-format")
        try LogOptions.check(level: s.logLevel, format: s.logFormat, from: file.path)
        return (run, s)
    }

    /// Every reason these settings cannot run, before any data is read or socket opened.
    static func problems(_ c: RunConfig, _ s: Settings) -> [String] {
        var p = c.problems()
        if s.resume && s.fresh { p.append("--resume and --fresh contradict each other") }
        if let file = s.configFile, !s.modeGiven {
            p.append("\(file) names no run mode (a config.toml of an older Lockstep): give --local (one process), --spawn N (N worker processes here) or --bind tcp://HOST:PORT (workers join). HINT: any of the three ends at the same bits")
        }
        if s.resume && c.initFrom != nil { p.append("--init starts a new run from weights; --resume continues this one from its checkpoint: give one") }
        if !(s.wait >= 0 && s.wait <= 86_400) { p.append("--wait must be in 0...86400 seconds (got \(s.wait))") }
        if !(1...256).contains(s.threads) { p.append("--threads must be in 1...256 (got \(s.threads))") }
        if let port = s.metricsPort, !(0...65535).contains(port) { p.append("--metrics-port must be in 0...65535 (got \(port))") }
        if s.metricsPort != nil {
            let parts = s.metricsHost.split(separator: ".")
            if parts.count != 4 || parts.contains(where: { UInt8($0) == nil }) {
                p.append("--metrics-host must be an IPv4 address, e.g. 127.0.0.1 (got \(s.metricsHost))")
            } else if !s.metricsHost.hasPrefix("127.") && !s.insecure {
                p.append("--metrics-host \(s.metricsHost) serves the run's metrics beyond this machine without authentication. HINT: keep 127.0.0.1 (and scrape through an SSH tunnel), or pass --insecure on a network you trust")
            }
        }
        if s.threads > 1 && !s.local && s.spawn == 0 {
            p.append("--threads is for --local or --spawn; a worker that joins sets its own (worker join --threads)")
        }
        if s.local {
            if s.spawn > 0 || s.minWorkers != nil { p.append("--spawn and --min-workers are for cluster mode; drop --local") }
            return p
        }
        if let bind = s.bind {
            if let why = RouterShell.bindProblem(bind) { p.append(why) } else {
                let host = bind.dropFirst(6).split(separator: ":", omittingEmptySubsequences: false)[0]
                let loopback = host == "localhost" || host.hasPrefix("127.") || host == "[::1]"
                if !loopback && !s.insecure && s.curveKeys == nil {
                    p.append("binding \(bind) exposes the coordinator beyond this machine without authentication. HINT: use CURVE (coord keygen; --curve-keys and --allow), bind tcp://127.0.0.1:PORT, or pass --insecure on a network you trust")
                }
            }
        }
        if (s.curveKeys == nil) != (s.allow == nil) { p.append("--curve-keys and --allow go together") }
        if s.spawn < 0 || s.spawn > 64 { p.append("--spawn must be in 0...64 (got \(s.spawn))") }
        if let m = s.minWorkers, !(1...4096).contains(m) { p.append("--min-workers must be in 1...4096 (got \(m))") }
        if !(1...4096).contains(s.maxWorkers) { p.append("--max-workers must be in 1...4096 (got \(s.maxWorkers))") }
        if s.maxWorkers < max(1, s.spawn, s.minWorkers ?? 1) { p.append("--max-workers is below the workers you ask for") }
        return p
    }

    /// Why `bind` is not a usable tcp://HOST:PORT endpoint, if it is not.
    func validate() throws {
        let c: RunConfig, s: Settings
        do { (c, s) = try resolve() } catch { throw ValidationError("\(error)") }
        let problems = Start.problems(c, s)
        if !problems.isEmpty { throw ValidationError(problems.joined(separator: "\n")) }
    }

    func run() throws {
        keepLargeAllocationsInTheHeap()
        logging.setup(role: "coord")
        do {
            let (config, s) = try resolve()
            if s.logLevel != nil || s.logFormat != nil { logging.setup(role: "coord", fileLevel: s.logLevel, fileFormat: s.logFormat) }
            BLAS.mode = config.numerics
            Interrupt.install()
            // Held to the end of the run: the kernel releases it on any exit.
            let lock = try RunLock(directory: config.checkpointDir, wait: s.resume ? s.wait : 0, log: log)
            defer { withExtendedLifetime(lock) {} }
            let (trainer, heldOut) = try prepare(config, resume: s.resume, fresh: s.fresh, explicit: s.explicitModel)
            BLAS.mode = trainer.run.numerics  // a resumed run's own
            nonisolated(unsafe) let progress = trainer
            LockstepLog.context = { ["step": "\(progress.step)"] }
            if !s.local {
                let wire = WireLimits.problems(run: config, data: trainer.data, model: trainer.model)
                if !wire.isEmpty {
                    throw LockstepError("this run cannot cross the wire to workers: " + wire.joined(separator: "; "),
                                        hint: "change the options named, or train with --local")
                }
            }
            // Shards computed on this host at once: the local threads, or every spawned worker's.
            if s.local || s.spawn > 0 { try trainer.checkShardMemory(threads: s.local ? s.threads : s.spawn * s.threads) }
            try writeRunConfig(trainer.run, mode: s.modeLines)
            if let port = s.metricsPort {
                metricsEndpoint = try MetricsEndpoint(host: s.metricsHost, port: UInt16(port), totalSteps: trainer.totalSteps)
                log("metrics: http://\(s.metricsHost):\(metricsEndpoint!.port)/metrics (Prometheus text format)")
            }
            if s.local {
                try trainLocal(trainer, threads: s.threads)
            } else {
                // --spawn alone listens on its 0600 local socket only.
                let bind = s.bind ?? (s.spawn > 0 ? nil : "tcp://127.0.0.1:5555")
                if let bind, s.insecure && s.curveKeys == nil {
                    log("WARNING: --insecure: \(bind) accepts any worker that can reach it, unauthenticated")
                }
                var curve: (keys: CurveKeypair, allowed: [String])? = nil
                if let curveKeys = s.curveKeys, let allow = s.allow {
                    curve = (try CurveKeypair.read(curveKeys), try CurveKeypair.allowList(allow))
                    log("CURVE on: \(curve!.allowed.count) worker key(s) allowed from \(allow)")
                }
                try trainCluster(trainer, bind: bind.map { $0.replacingOccurrences(of: ":0", with: ":*", options: .anchored.union(.backwards)) },
                                 spawn: s.spawn, threads: s.threads, minWorkers: s.minWorkers ?? max(s.spawn, 1), maxWorkers: s.maxWorkers, curve: curve,
                                 curveKeysPath: s.curveKeys, authenticate: !s.insecure, bindWait: s.resume ? s.wait : 0)
            }
            report(trainer, heldOut: heldOut)
        } catch let stop as Interrupted {
            // A requested stop is not a failure: said at notice level, exit 130 (128 + SIGINT).
            LockstepLog.logger.notice("\(stop)")
            Foundation.exit(130)
        } catch { fail(error) }
    }
}

/// Loads the data and builds (or resumes) the trainer, refusing to clobber a checkpoint.
func prepare(_ original: RunConfig, resume: Bool, fresh: Bool, explicit: Set<String> = []) throws -> (Trainer, Dataset?) {
    var config = original
    var initial: Checkpoint? = nil
    if let path = config.initFrom {
        let ck = try Checkpoint.load(path: path)
        config = try adopt(ck, from: path, into: config, explicit: explicit)
        initial = ck
    }
    let path = (config.checkpointDir as NSString).appendingPathComponent("checkpoint.safetensors")
    var checkpoint: Checkpoint? = nil
    if FileManager.default.fileExists(atPath: path) {
        if resume {
            checkpoint = try Checkpoint.load(path: path)
            if !checkpoint!.verified { log("WARNING: \(path) predates checksums (format 1): it is used unverified") }
            // A run resumes in its own numerics unless told otherwise (runs from before portable became the default).
            let identity = checkpoint!.metadata["config_identity"] ?? ""
            let recordedMode: NumericsMode = identity.split(separator: ";").contains("numerics=portable") ? .portable : .openblas
            if !explicit.contains("numerics"), checkpoint!.metadata["config_identity"] != nil, recordedMode != config.numerics {
                log("resuming in the checkpoint's numerics: \(recordedMode.rawValue)")
                config.numerics = recordedMode
            }
            // A run started with --init took its shape from that file: it resumes with the checkpoint's.
            let recorded = (checkpoint!.metadata["config_identity"] ?? "").split(separator: ";").first { $0.hasPrefix("init=") }
            if let recorded {
                config = try adopt(checkpoint!, from: path, into: config, explicit: explicit)
                config.initHash = String(recorded.dropFirst(5))
            }
        } else if !fresh {
            throw LockstepError("\(path) already holds a checkpoint",
                                hint: "pass --resume to continue it, --fresh to replace it, or another --checkpoint-dir")
        }
    } else if resume {
        log("no checkpoint in \(config.checkpointDir): starting from step 0")
    }
    var data = try config.loadData()
    var validation: Dataset? = nil
    if config.validSplit != nil { (data, validation) = try config.split(data) }
    if let ck = initial {
        let tensor = ck.model.arch == .split ? "layer1.0.weight_ih_l0" : "layer1.weight_ih_l0"
        guard data.inputSize == ck.model.inputSize else {
            throw LockstepError("--init \(config.initFrom!): tensor \(tensor) has shape [\(4 * ck.model.hidden), \(ck.model.inputSize)] (d_in \(ck.model.inputSize)) but \(data.source) has d_in \(data.inputSize)",
                                hint: "train on data with the features the weights were trained on")
        }
        guard data.classes == ck.model.classes else {
            throw LockstepError("--init \(config.initFrom!): tensor layer2.0.weight has shape [\(ck.model.classes), \(ck.model.headInput)] (\(ck.model.classes) classes) but this run has \(data.classes)",
                                hint: "drop --classes, or fine-tune a model with as many classes")
        }
    }
    if let v = config.validData {
        let what = "this run's model (\(data.classes) classes, from \(data.source))"
        let labels = Dataset.Labels.forModel(what, missingHint: "a validation set needs labels y")
        // A packed set is read on demand where its content hash stays the .npz's (same classes).
        if DataManifest.isPacked(v), let m = try? DataManifest.load(DataManifest.directory(v)), m.classes == data.classes {
            validation = try PackedData.open(v, classes: data.classes, labels: labels, cacheMB: nil)
        } else {
            validation = try Dataset.load(npz: v, classes: data.classes, labels: labels)
        }
        if validation!.store == nil, !validation!.examples.contains(where: { $0.y.contains { $0 >= 0 } }) {
            throw LockstepError("--valid-data \(v): no frame has a label (every y on a valid frame is -1): its loss would be NaN",
                                hint: "validate on labelled data")
        }
        guard validation!.inputSize == data.inputSize else {
            throw LockstepError("--valid-data \(v): x has d_in = \(validation!.inputSize) but the training data \(data.source) has \(data.inputSize)",
                                hint: "validate on data with the same features as the training data")
        }
    }
    let trainer = try Trainer(run: config, data: data, resumeFrom: checkpoint, initWeights: initial, validation: validation)
    // Every check passed: only now does --fresh move the previous run's files out of the way.
    if fresh, FileManager.default.fileExists(atPath: path) {
        log("--fresh: the previous run's files are now in \(try archivePreviousRun(config.checkpointDir))")
    }
    if let checkpoint, let was = Int(checkpoint.metadata["total_steps"] ?? ""), was != trainer.totalSteps {
        log("extending the run: it ended at step \(was), now at step \(trainer.totalSteps) (resuming at step \(trainer.step))")
        let before = LRSchedule.rate(step: trainer.step, total: was, base: config.optimizer.lr, config: config.schedule, plateau: trainer.tracking.plateau)
        if before != trainer.learningRate {
            log("the learning rate at step \(trainer.step + 1) was \(before) under the schedule to step \(was); it follows the schedule to step \(trainer.totalSteps) from here: \(trainer.learningRate) (the steps before keep their rates; config.toml records both)")
        }
    }
    let heldOut = config.data == nil
        ? config.synthetic.generate(seed: config.seed, firstId: config.synthetic.sequences, count: max(64, config.synthetic.sequences / 8))
        : nil
    let m = trainer.model
    log("data: \(data.source)\(data.store == nil ? "" : " (packed, read on demand)"), \(data.count) sequences, \(data.frames) frames, d_in \(data.inputSize), \(data.classes) classes")
    if let validation {
        log("validation: \(validation.source)\(validation.store == nil ? "" : " (packed, read on demand)"), \(validation.count) sequences, \(validation.frames) frames, "
            + (config.validEvery > 0 ? "every \(config.validEvery) steps" : "every epoch (\(trainer.schedule.batchesPerEpoch) steps)")
            + " and at the end; best by \(config.select.rawValue)" + (config.patience > 0 ? ", patience \(config.patience)" : ""))
    }
    if let i = config.initFrom { log("init: weights from \(i) (SHA-256 \(config.initHash!.prefix(16))…), fresh optimizer") }
    log("model: \(m.arch.rawValue) \(m.bidirectional ? "bi" : "uni")LSTM, \(m.layers) layers, hidden \(m.hidden), dropout \(m.dropout), \(trainer.layout.count) parameters")
    let sched = config.schedule.kind == .constant && config.schedule.warmupSteps == 0 ? "" :
        " (\(config.schedule.kind.rawValue) schedule" + (config.schedule.warmupSteps > 0 ? ", warmup \(config.schedule.warmupSteps)" : "") + ")"
    log("training: steps \(trainer.step)→\(trainer.totalSteps), batch \(config.batchSize), shard \(config.shardSize), \(config.optimizer.kind.rawValue) lr \(config.optimizer.lr)\(sched), max-norm \(config.maxNorm), seed \(config.seed)")
    if let why = trainer.tracking.stopped { log("this run already stopped: \(why)") }
    return (trainer, heldOut)
}

/// The run's model shape taken from `--init` weights; an option that contradicts the file is an
/// error naming the tensor and both shapes.
/// The run's model shape from a file of weights; an option the user gave explicitly (`explicit`,
/// even at its default value) that contradicts the file is refused, naming the tensor.
func adopt(_ ck: Checkpoint, from path: String, into original: RunConfig, explicit: Set<String>) throws -> RunConfig {
    var c = original
    let defaults = RunConfig()
    let m = ck.model
    func given(_ key: String, _ differsFromDefault: Bool) -> Bool { explicit.contains(key) || differsFromDefault }
    let prefix = m.arch == .split ? "layer1.0." : "layer1."
    var problems: [String] = []
    if given("hidden", c.hidden != defaults.hidden) && c.hidden != m.hidden {
        problems.append("--hidden \(c.hidden): tensor \(prefix)weight_hh_l0 has shape [\(4 * m.hidden), \(m.hidden)], a hidden size of \(m.hidden); this run asks for [\(4 * c.hidden), \(c.hidden)]")
    }
    if given("layers", c.layers != defaults.layers) && c.layers != m.layers {
        problems.append("--layers \(c.layers): the file has \(prefix)weight_ih_l0…l\(m.layers - 1), \(m.layers) layers")
    }
    if given("arch", c.arch != defaults.arch) && c.arch != m.arch { problems.append("--arch \(c.arch.rawValue): the file's tensors are the \(m.arch.rawValue) arch (\(prefix)…)") }
    if given("unidirectional", c.bidirectional != defaults.bidirectional) && c.bidirectional != m.bidirectional {
        problems.append("--unidirectional: the file has reverse-direction tensors (\(prefix)weight_ih_l0_reverse)")
    }
    if let k = c.classes, k != m.classes { problems.append("--classes \(k): tensor layer2.0.weight has shape [\(m.classes), \(m.headInput)], \(m.classes) classes") }
    if !problems.isEmpty {
        throw LockstepError("--init \(path): " + problems.joined(separator: "; "),
                            hint: "drop those options: the model's shape comes from the file")
    }
    c.hidden = m.hidden
    c.layers = m.layers
    c.arch = m.arch
    c.bidirectional = m.bidirectional
    c.classes = m.classes
    c.initHash = ck.params.sha256
    return c
}

/// The Prometheus endpoint of this run (`--metrics-port`), if any.
nonisolated(unsafe) var metricsEndpoint: MetricsEndpoint?

/// The run's metrics log (`metrics.jsonl`, `tb/`), feeding the metrics endpoint when there is one.
func openMetrics(_ trainer: Trainer) throws -> MetricsLog {
    let metrics = try MetricsLog(directory: trainer.run.checkpointDir, resumeStep: trainer.step, recorded: trainer.resumedMetadata)
    for note in metrics.notes { log(note) }
    trainer.checkpointExtras = { [unowned metrics] in metrics.recorded() }
    if let endpoint = metricsEndpoint {
        metrics.onStep = { endpoint.observe($0) }
        metrics.onValidation = { endpoint.observe($0) }
    }
    return metrics
}

/// `config.toml` in the run directory: the resolved options, so the run can be repeated from it.
func writeRunConfig(_ run: RunConfig, mode: [String]) throws {
    try FileManager.default.createDirectory(atPath: run.checkpointDir, withIntermediateDirectories: true)
    try AtomicFile.write(Array(run.toml(mode: mode).utf8), to: (run.checkpointDir as NSString).appendingPathComponent("config.toml"))
}

func trainLocal(_ trainer: Trainer, threads: Int = 1) throws {
    BLAS.setThreads(1)
    let pool = ShardComputerPool(model: trainer.model, seed: trainer.run.seed, count: threads, classWeights: trainer.run.classWeights)
    pool.reserve(rows: trainer.largestShardFrames)
    let metrics = try openMetrics(trainer)
    let progress = ProgressLine(total: trainer.totalSteps, from: trainer.step)
    let validator = trainer.validation.map { _ in ShardComputerPool(model: trainer.model, seed: 0, count: threads) }
    func validate() throws -> String {
        // A few shards per thread at a time: a packed validation set is read as it is used.
        var parts: [EvalSums] = []
        let count = trainer.validationShards.count, chunk = 4 * threads
        for first in stride(from: 0, to: count, by: chunk) {
            let shards = try (first..<min(count, first + chunk)).map { try trainer.validationShard($0) }
            parts += validator!.evaluateAll(params: trainer.params, shards: shards)
        }
        return try trainer.finishValidation(parts, metrics: metrics, log: log).text
    }
    if trainer.validationPending { _ = try validate() }
    while !trainer.done {
        if Interrupt.requested {
            try trainer.saveCheckpoint()
            throw Interrupted("interrupted after step \(trainer.step): checkpoint written to \(trainer.checkpointPath)",
                              resume: "the same command plus --resume (it continues to the same bits)")
        }
        let started = Date()
        let step = trainer.step
        let shards = try trainer.shards(forStep: step).map { try $0.map { try trainer.data.example($0) } }
        let done = pool.computeAll(params: trainer.params, shards: shards, step: step, gradientCount: trainer.layout.count)
        var report = try trainer.apply(parts: done.map { ($0.grad, $0.result) }, seconds: Date().timeIntervalSince(started))
        report.setShardSeconds(done.map(\.seconds))
        try metrics.write(report)
        let valid = trainer.validationDue ? try validate() : ""
        progress.update(step: report.step, loss: report.loss, framesPerSecond: Double(report.frames) / max(report.seconds, 1e-9), extra: valid)
        if trainer.run.checkpointEvery > 0 && trainer.step % trainer.run.checkpointEvery == 0 && !trainer.done {
            try trainer.saveCheckpoint()
        }
    }
    try trainer.saveCheckpoint()
}

func trainCluster(_ trainer: Trainer, bind: String?, spawn: Int, threads: Int = 1, minWorkers: Int, maxWorkers: Int,
                  curve: (keys: CurveKeypair, allowed: [String])? = nil, curveKeysPath: String? = nil,
                  authenticate: Bool = true, bindWait: Double = 0) throws {
    BLAS.setThreads(1)
    let context = ZMQContext(ioThreads: 2)
    let server = try CoordinatorServer(trainer: trainer, context: context, bind: bind, minWorkers: minWorkers,
                                       maxWorkers: maxWorkers, curve: curve, authenticate: authenticate,
                                       bindWait: bindWait, log: { log($0) })
    defer { server.close() }
    var children: [Process] = []
    defer {
        // Spawned workers got `stop` (an interrupted run sends none: end them now); give them a
        // moment, then end only those pids.
        if Interrupt.requested { for c in children where c.isRunning { kill(c.processIdentifier, SIGTERM) } }
        let deadline = Date().addingTimeInterval(3)
        while children.contains(where: \.isRunning) && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        for c in children where c.isRunning { kill(c.processIdentifier, SIGKILL) }
    }
    if spawn > 0 {
        server.spawnedWorkers = true
        let exe = URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0])
        let workerExe = exe.deletingLastPathComponent().appendingPathComponent("worker")
        guard FileManager.default.isExecutableFile(atPath: workerExe.path) else {
            throw LockstepError("cannot spawn workers: \(workerExe.path) is missing", hint: "build the package (swift build) so worker sits beside coord")
        }
        var endpoint = server.endpoint.replacingOccurrences(of: "0.0.0.0", with: "127.0.0.1")
        do { endpoint = try server.bindLocal() } catch {
            guard bind != nil else {
                throw LockstepError("cannot listen on a local socket for the spawned workers: \(error)",
                                    hint: "make the temporary directory (\(NSTemporaryDirectory())) writable, or give --bind tcp://127.0.0.1:0")
            }
            log("no local socket (\(error)): spawned workers use \(endpoint)")
        }
        // Workers' logs go beside the checkpoint, so the directory must exist before they start.
        try? FileManager.default.createDirectory(atPath: trainer.run.checkpointDir, withIntermediateDirectories: true)
        for i in 0..<spawn {
            let p = Process()
            p.executableURL = workerExe
            p.arguments = ["join", endpoint, "--parent-pid", String(getpid()), "--threads", String(threads),
                           "--log-format", LockstepLog.format.rawValue, "--log-level", LockstepLog.level.rawValue]
            // A worker busy-waiting at the barrier would take a core from one still computing.
            if spawn * threads > ProcessInfo.processInfo.activeProcessorCount { p.arguments! += ["--barrier-spin-ms", "0"] }
            if !authenticate && curve == nil { p.arguments! += ["--insecure"] }
            // Packed data on this host: the spawned workers read it themselves.
            if DataManifest.isPacked(trainer.data.source) { p.arguments! += ["--data-root", trainer.data.source] }
            if let curve, let curveKeysPath {
                // Local children share the coordinator's keypair; it must be on the allow-list too.
                guard curve.allowed.contains(curve.keys.publicKey) else {
                    throw LockstepError("--spawn with CURVE: the coordinator's own public key is not on the allow-list",
                                        hint: "add the line from the coordinator's .pub file to the --allow file")
                }
                p.arguments! += ["--curve-keys", curveKeysPath, "--server-key", curve.keys.publicKey]
            } else if let join = server.joinKey {
                // The local socket shares the TCP endpoint's CURVE: spawned workers use the run's key.
                p.arguments! += ["--join-key", join.path]
            }
            let logPath = (trainer.run.checkpointDir as NSString).appendingPathComponent("worker-\(i).log")
            let logFile = FileHandle(fileDescriptor: try SafeFile.openForAppend(logPath, truncate: true, what: "the spawned worker's log"),
                                     closeOnDealloc: true)
            p.standardError = logFile
            p.standardOutput = FileHandle.nullDevice
            try p.run()
            children.append(p)
            log("spawned worker \(i) (pid \(p.processIdentifier)) on \(endpoint), log \(logPath)")
        }
    }
    let metrics = try openMetrics(trainer)
    do {
        try server.run(metrics: metrics, progress: ProgressLine(total: trainer.totalSteps, from: trainer.step))
    } catch {
        // A fatal error ends the workers' run too; an interrupted one leaves them to rejoin on --resume.
        if !Interrupt.requested { server.stopWorkers() }
        throw error
    }
    if server.rejected > 0 { log("rejected \(server.rejected) malformed message(s) during the run") }
}

func report(_ trainer: Trainer, heldOut: Dataset?) {
    if let why = trainer.tracking.stopped { print(why) }
    if trainer.validation != nil, let b = trainer.tracking.bestStep {
        print(String(format: "best: step %d, valid_%@ %.6f: %@", b, trainer.run.select.rawValue, trainer.tracking.best, trainer.bestPath))
    }
    if let heldOut {
        print(String(format: "accuracy (held-out synthetic, %d sequences): %.2f%%", heldOut.examples.count, 100 * trainer.accuracy(on: heldOut)))
    } else if let store = trainer.data.store {
        // Packed data is read on demand: a pass over all of it here would read what workers read.
        log("data: this process read \(store.shardsRead) of \(store.manifest.shards.count) shards of \(store.dir)"
            + " (\(store.reads.files) sequences from the files, \(store.reads.cached) from its cache)"
            + String(format: "; peak RSS %.0f MB", Double(Memory.peakResident) / 1e6)
            + " (training accuracy not computed: `coord eval --checkpoint \(trainer.checkpointPath) --data \(store.dir)` gives it)")
    } else {
        print(String(format: "accuracy (training data): %.2f%%", 100 * trainer.accuracy(on: trainer.data)))
    }
    print("checkpoint: \(trainer.checkpointPath)")
    print("final weights sha256: \(trainer.weightsHash)")
    // A reader on another CPU can tell whether their hash should match.
    print("numerics: \(Trainer.numerics)")
}

func log(_ s: String) { LockstepLog.line(s) }

/// Moves a previous run's files (checkpoints, best weights, metrics, TensorBoard events, worker
/// logs, config, report) into `DIR/previous-N/`, so a new run never mixes with them, even when it
/// fails before its first checkpoint. Returns that directory.
func archivePreviousRun(_ dir: String) throws -> String {
    let fm = FileManager.default
    var n = 1
    while fm.fileExists(atPath: "\(dir)/previous-\(n)") { n += 1 }
    let dest = "\(dir)/previous-\(n)"
    let names = (try? fm.contentsOfDirectory(atPath: dir)) ?? []
    let ours = names.filter { name in
        name == "metrics.jsonl" || name == "tb" || name == "config.toml" || name == "report.html" || name == "best.safetensors"
            || (name.hasPrefix("checkpoint") && name.hasSuffix(".safetensors")) || (name.hasPrefix("worker-") && name.hasSuffix(".log"))
    }
    do {
        try fm.createDirectory(atPath: dest, withIntermediateDirectories: false)
        for name in ours where rename("\(dir)/\(name)", "\(dest)/\(name)") != 0 {
            throw LockstepError("cannot move \(dir)/\(name) to \(dest): \(String(cString: strerror(errno)))", hint: "check the permissions of \(dir)")
        }
    } catch let e as LockstepError { throw e } catch {
        throw LockstepError("cannot make \(dest): \(error.localizedDescription)", hint: "check the permissions of \(dir)")
    }
    return dest
}
