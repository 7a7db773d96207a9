import BiLSTM
import CZMQ
import ClusterProtocol
import Formats
import Foundation
import Numerics
import Observe
import Training

/// The coordinator's IO shell: one ROUTER socket, the pure `CoordinatorCore`, and the `Trainer`.
/// It decodes (and rejects) messages, feeds the core, carries out its directives, and when a
/// step's shards are all in, reduces in the fixed tree, clips, steps and checkpoints.
public final class CoordinatorServer {
    /// Workers this coordinator spawned (`--spawn`): an interrupt stops them, so the hint differs.
    public var spawnedWorkers = false
    public let trainer: Trainer
    /// The socket workers join, its authentication and its decoding.
    let router: RouterShell
    var core: CoordinatorCore
    var limits = WireLimits()
    public var endpoint: String { router.endpoint }
    public var rejected: Int { router.rejected }
    var stepDone = false
    let log: (String) -> Void

    /// `curve`, `authenticate`, `bind` and `bindWait` as for `RouterShell` (a `--spawn` run
    /// binds no TCP endpoint and listens on its local socket alone, `bindLocal`).
    public init(trainer: Trainer, context: ZMQContext, bind: String?, minWorkers: Int, maxWorkers: Int,
                curve: (keys: CurveKeypair, allowed: [String])? = nil, authenticate: Bool = true, bindWait: Double = 0,
                log: @escaping (String) -> Void) throws {
        self.trainer = trainer
        self.log = log
        // Bound memory whatever peers send: the largest legal message is a gradient.
        router = try RouterShell(context: context, bind: bind, maxMessageBytes: trainer.layout.count * 4 + (1 << 16), curve: curve,
                                 authenticate: authenticate, bindWait: bindWait, log: log)
        limits.parameterCount = trainer.layout.count
        limits.inputSize = trainer.model.inputSize
        let runId = UInt64(strtoull(String(trainer.run.hash.prefix(16)), nil, 16))
        core = CoordinatorCore(numerics: NumericsIdentity.current(),
                               welcome: Welcome(runId: runId, model: trainer.model, seed: trainer.run.seed, numerics: trainer.run.numerics,
                                                classWeights: trainer.run.classWeights),
                               minWorkers: minWorkers, maxWorkers: maxWorkers)
        core.data = (trainer.data.hash, trainer.data.count)
        core.welcome.dataHash = trainer.data.hash
        core.welcome.dataCount = trainer.data.count
    }

    /// The per-run join key and its file, removed when the coordinator closes.
    public var joinKey: (key: JoinKey, path: String)? { router.joinKey }

    deinit { close() }

    /// Removes what this coordinator left in the file system: its join key and local socket.
    public func close() {
        router.close()
        if let localSocketPath { unlink(localSocketPath); self.localSocketPath = nil }
    }

    var localSocketPath: String?
    /// Each step's weights for the workers on this host, and their gradient mappings by path
    /// (see `SharedSlots`).
    var shared: SharedSlots?
    var gradientMappings: [String: SharedSlots] = [:]

    /// Also listens on a Unix socket (0600, in the temporary directory) for workers on this host:
    /// its workers exchange weights and gradients through shared memory (when `/dev/shm` allows
    /// it), and otherwise over this socket, with less CPU and latency than TCP loopback.
    public func bindLocal() throws -> String {
        CoordinatorServer.removeStaleSockets(in: NSTemporaryDirectory())
        let path = (NSTemporaryDirectory() as NSString).appendingPathComponent(CoordinatorServer.socketName(pid: getpid()))
        try router.bindLocal(path)
        localSocketPath = path
        do {
            let w = try SharedSlots(creating: SharedSlots.weightsMagic, slots: SharedSlots.weightSlots, floats: trainer.layout.count, what: "weights")
            shared = w
            core.welcome.sharedWeights = w.path
            core.welcome.sharedToken = w.token
            core.welcome.maxShards = trainer.schedule.maxShards
        } catch {
            log("no shared memory for local workers (\(error)): they get the weights over the socket")
        }
        return "ipc://" + path
    }

    /// `lockstep-PID-XXXXXXXX.sock`: the owner's pid, then 8 random characters.
    static func socketName(pid: pid_t, tag: String = String(UUID().uuidString.prefix(8))) -> String { "lockstep-\(pid)-\(tag).sock" }

    /// Removes local sockets (`socketName`) left by coordinators that were
    /// killed (`kill -9` cannot unlink them); a socket whose process still exists is kept.
    /// Returns the paths removed.
    @discardableResult
    public static func removeStaleSockets(in dir: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        var removed: [String] = []
        for name in names where name.hasPrefix("lockstep-") && name.hasSuffix(".sock") {
            let parts = name.dropLast(5).split(separator: "-")
            guard parts.count == 3, let pid = pid_t(parts[1]), pid > 0, parts[2].count == 8 else { continue }
            guard kill(pid, 0) != 0 && errno == ESRCH else { continue }
            let path = (dir as NSString).appendingPathComponent(name)
            var st = stat()
            guard lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFSOCK, st.st_uid == getuid() else { continue }
            if unlink(path) == 0 { removed.append(path) }
        }
        return removed
    }

    /// Starts a step: its weights go to shared memory before any work that names them.
    func beginStep(now: Double) throws {
        shared?.publishWeights(step: trainer.step, trainer.params)
        try execute(core.beginStep(trainer.step, shards: trainer.shards(forStep: trainer.step), now: now))
    }

    /// Trains to the end. Throws a `LockstepError` when the run must stop (the last checkpoint stays intact).
    ///
    /// A validation (`--valid-data`) is a round of its own: its forward-only shards go to the
    /// workers like a step's, under the round id `validationRound + step` with the weights of
    /// the step just done, and their counts are added in the fixed tree; the next step starts
    /// once it is recorded (its result may stop the run or lower the rate).
    public func run(metrics: MetricsLog, progress: ProgressLine?) throws {
        let t = trainer
        log("listening on \(endpoint); waiting for \(core.minWorkers) worker(s)")
        if !endpoint.isEmpty {
            let address = endpoint.hasPrefix("tcp://") ? String(endpoint.dropFirst(6)) : endpoint
            log("workers of this run join with: worker join \(address) --run \(String(core.welcome.runId, radix: 16))")
        }
        var stepStarted = monotonicSeconds()
        var validText = ""
        var checkpointAfterValidation = false
        if t.validationPending {
            shared?.publishWeights(step: t.step, t.params)
            try beginValidation(now: stepStarted)
        } else if !t.done {
            try beginStep(now: stepStarted)
        }
        while !t.done || core.evaluating {
            if Interrupt.requested { try interrupted(); return }
            let ready = router.poll(timeout: 0.05)
            for peer in router.closedPeers() { try execute(core.onDisconnect(peer, now: monotonicSeconds())) }
            if ready {
                var drained = 0
                while drained < 1000, let (peer, message) = router.receive(limits: limits) {
                    drained += 1
                    if let message { try handle(message, from: peer) }
                }
            }
            try execute(core.onTick(now: monotonicSeconds()))
            guard stepDone else { continue }
            stepDone = false
            if core.evaluating {
                let parts = core.results.map { EvalSums(classes: t.model.classes, lossSum: $0.lossSum, frames: $0.frames, counts: $0.counts!)! }
                validText = try t.finishValidation(parts, metrics: metrics, log: log).text
                log("validation after step \(t.step):" + validText.dropFirst(7))
                if checkpointAfterValidation && !t.done { try t.saveCheckpoint() }
                checkpointAfterValidation = false
                if t.done { break }
                stepStarted = monotonicSeconds()
                try execute(core.beginStep(t.step, shards: t.shards(forStep: t.step), now: stepStarted))
                continue
            }
            let coordStart = monotonicSeconds()
            let parts = core.results.map { ($0.grad, BatchResult(lossSum: $0.lossSum, frames: $0.frames, weightSum: $0.weightSum)) }
            let spans = core.results.map(\.span)
            let reissued = core.reissuedThisStep, shardSeconds = core.results.map { $0.computeSeconds / Double($0.span) }  // a block's is its shards' total
            var workerSeconds: [String: Double] = [:]
            for shard in core.shards { if let r = shard.result { workerSeconds[shard.resultFrom ?? "?", default: 0] += r.computeSeconds } }
            let sentDuringStep = router.bytesSent
            router.bytesSent = 0
            // A step's time runs from just before its work goes out, so it holds every shard's compute.
            let nextStarted = monotonicSeconds()
            // The next step's work goes out before the optimizer runs: workers reading the weights
            // from shared memory wait for them there, and start the moment they are published.
            // Not when a validation comes first: it needs the new weights.
            let next = t.step + 1
            let validateNext = t.validationDue(after: next)
            var afterStep: [Directive] = []
            if next < t.totalSteps && !validateNext {
                var now: [Directive] = []
                for d in core.beginStep(next, shards: t.shards(forStep: next), now: nextStarted) {
                    if needsNewWeights(d) { afterStep.append(d) } else { now.append(d) }
                }
                try execute(now)
            }
            var report = try t.apply(parts: parts, spans: spans.allSatisfy { $0 == 1 } ? nil : spans, seconds: nextStarted - stepStarted)
            report.workersAlive = core.alive
            report.reissued = reissued
            report.setShardSeconds(shardSeconds)
            report.workerSeconds = workerSeconds
            if !t.done || validateNext {
                shared?.publishWeights(step: t.step, t.params)
                try execute(afterStep)
            }
            report.coordinatorSeconds = monotonicSeconds() - coordStart
            report.seconds = nextStarted - stepStarted
            report.bytesSent = sentDuringStep + router.bytesSent
            report.bytesReceived = router.bytesReceived
            router.bytesSent = 0
            router.bytesReceived = 0
            stepStarted = nextStarted
            try metrics.write(report)
            progress?.update(step: report.step, loss: report.loss, framesPerSecond: Double(report.frames) / max(report.seconds, 1e-9),
                             extra: "  workers \(core.alive)" + validText)
            validText = ""
            let checkpointDue = t.run.checkpointEvery > 0 && t.step % t.run.checkpointEvery == 0 && !t.done
            if validateNext {
                checkpointAfterValidation = checkpointDue
                try beginValidation(now: monotonicSeconds())
            } else if checkpointDue {
                try t.saveCheckpoint()
            }
            // Received gradients go back to the allocator only now, once the next step's work is out.
            withExtendedLifetime(parts) {}
        }
        try t.saveCheckpoint()
        try sendStops()
    }

    /// Validation rounds are numbered from here (plus the step they follow), apart from steps.
    public static let validationRound = 1 << 40

    /// Starts the validation after the last step done, with that step's weights (already published).
    func beginValidation(now: Double) throws {
        try execute(core.beginStep(CoordinatorServer.validationRound + trainer.step, shards: trainer.validationShardIds, now: now,
                                   evaluate: true, weightsStep: trainer.step))
    }

    /// Ctrl-C or SIGTERM: the checkpoint is written and the workers are left as they are. They
    /// take the silence for a crash and keep reconnecting, so a coordinator restarted with
    /// `--resume` on the same address gets them back without anyone restarting them.
    private func interrupted() throws {
        try trainer.saveCheckpoint()
        let spawned = spawnedWorkers
        let joined = core.alive
        throw Interrupted("interrupted after step \(trainer.step): checkpoint written to \(trainer.checkpointPath)",
                          resume: "the same command plus --resume" + (spawned
                            ? " (it spawns its workers again)"
                            : joined > 0 ? " (same --bind): the \(joined) worker(s) that joined keep reconnecting and rejoin it by themselves" : ""))
    }

    /// Tells every worker to stop (also on a fatal error).
    public func stopWorkers() { try? sendStops() }

    /// Tells every worker to stop, and gives the `stop`s time to arrive.
    func sendStops() throws { router.sendStops(core.finish()) }

    func handle(_ decoded: Message, from peer: Peer) throws {
        var message = decoded
        if case .result(var r) = message, let g = r.sharedGradient, r.step == core.step {
            do { r.grad = try sharedGradient(g, step: r.step, shard: r.shard) } catch { router.reject(peer, error); return }
            message = .result(r)
        }
        try execute(core.onMessage(message, from: peer, now: monotonicSeconds()))
    }

    /// A local worker's gradient for the current step, read in place from its mapping. (A stale
    /// result is left unread: the core drops it.)
    func sharedGradient(_ g: SharedGradient, step: Int, shard: Int) throws -> FloatBuffer {
        let key = "\(g.path) \(g.token)"
        var slots = gradientMappings[key]
        if slots == nil {
            // Buffers still in use keep their mappings alive: forgetting them all is safe.
            if gradientMappings.count >= 2 * core.maxWorkers { gradientMappings = [:] }
            do {
                slots = try SharedSlots(opening: g.path, magic: SharedSlots.gradientsMagic, token: g.token, slots: trainer.schedule.maxShards, floats: trainer.layout.count)
            } catch { throw WireError("result names a shared gradient that cannot be used: \(error)") }
            gradientMappings[key] = slots
        }
        guard let slots, shard < slots.slots, slots.stamp(shard) == step else {
            throw WireError("result for step \(step) shard \(shard) names a shared gradient slot that does not hold it")
        }
        return slots.view(shard)
    }

    /// Work for a worker that takes the weights in a frame waits for the optimizer step: the
    /// first piece carries them, and the rest must not overtake it.
    func needsNewWeights(_ d: Directive) -> Bool {
        guard case .sendWork(let peer, _, _, _, _, _) = d else { return false }
        return !sendsSharedWeights(to: peer)
    }

    /// The next step's shards, for the read-ahead hints (computed once a step).
    var nextPlan: (step: Int, shards: [[Int]]) = (-1, [])

    /// For a worker reading its own copy: the training sequences of the same shard index in the
    /// next step's plan, which it will likely be given next (a hint; none for validation work).
    func readAhead(for peer: Peer, step: Int, shard: Int) -> [Int] {
        guard !core.evaluating, step + 1 < trainer.totalSteps, core.workers.contains(where: { $0.peer == peer && $0.readsData }) else { return [] }
        if nextPlan.step != step + 1 { nextPlan = (step + 1, trainer.shards(forStep: step + 1)) }
        guard shard < nextPlan.shards.count else { return [] }
        return nextPlan.shards[shard].filter { $0 < trainer.data.count }
    }

    func sendsSharedWeights(to peer: Peer) -> Bool {
        shared != nil && core.workers.contains { $0.peer == peer && $0.sharedMemory }
    }

    func execute(_ directives: [Directive]) throws {
        for d in directives {
            switch d {
            case .send(let peer, let m):
                router.send(m, to: peer)
            case .sendWork(let peer, let step, let shard, let withWeights, let fresh, let block):
                let work = core.work(shard: shard, block: block, sequences: try fresh.map { try trainer.example(id: $0) },
                                     prefetchIds: readAhead(for: peer, step: step, shard: shard))
                let local = sendsSharedWeights(to: peer)
                let carriage: Message.WeightsCarriage = !withWeights ? .none : local ? .shared : .frame
                // The trainer writes each step's weights to a fresh buffer.
                router.send(work, to: peer, carriage: carriage, weights: trainer.params)
            case .log(let s): log(s)
            case .stepComplete: stepDone = true
            case .fatal(let s): throw LockstepError("run stopped at step \(trainer.step + 1): \(s)")
            }
        }
    }
}
