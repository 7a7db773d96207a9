import BiLSTM
import CZMQ
import ClusterProtocol
import Datasets
import Formats
import Foundation
import Numerics
import Training

// How a worker answers each message from its coordinator.
extension WorkerClient {
    /// The coordinator's kernel when pinning it would make this worker's numerics equal; nil
    /// (with the reason logged) when it cannot.
    func pinnable(_ coordinator: NumericsIdentity) -> String? {
        let mine = NumericsIdentity(encoded: hello.fingerprint)
        guard options.pin, mine.onlyKernelDiffers(from: coordinator), let kernel = coordinator.values["blas"] else { return nil }
        if ProcessInfo.processInfo.environment[WorkerClient.pinEnvironment] != nil {
            log("this worker is already pinned to \(BLAS.coreName) and still differs from the coordinator (\(kernel))")
            return nil
        }
        if let why = CPUFeatures.cannotRun(kernel, flags: options.cpuFlags ?? CPUFeatures.current()) {
            log("cannot pin the coordinator's BLAS kernel: \(why)")
            return nil
        }
        return kernel
    }

    /// Returns an exit code when the worker should stop.
    func onMessage(_ m: Message) throws -> Int32? {
        switch m {
        case .welcome(let w):
            if let want = options.runId, want != w.runId {
                log("left \(options.endpoint): its coordinator runs run \(String(w.runId, radix: 16)), not run \(String(want, radix: 16)) (--run)\nHINT: the port is another run's; join the address that `coord start` printed for your run")
                return 2
            }
            if BLAS.mode != w.numerics { log("computing with the run's numerics: \(w.numerics.rawValue)") }
            BLAS.mode = w.numerics
            if options.relay == nil && (welcome?.model != w.model || welcome?.seed != w.seed || welcome?.classWeights != w.classWeights) {
                computers = ShardComputerPool(model: w.model, seed: w.seed, count: options.threads, classWeights: w.classWeights)
                cache = [:]
            }
            if welcome?.runId != w.runId { cache = [:] }
            welcome = w
            weights = nil
            weightsStep = nil
            limits.parameterCount = ParameterLayout(w.model).count
            limits.inputSize = w.model.inputSize; limits.classes = w.model.classes
            backoff = Timing.reconnectInitial
            let run = "run \(String(w.runId, radix: 16)): \(w.model.arch.rawValue) H=\(w.model.hidden) layers=\(w.model.layers)"
            if let store, w.dataHash != store.identity {
                log("not reading \(DataManifest.path(store.dir)): its identity is \(store.identity.prefix(16))…, the run's data is \(w.dataHash.isEmpty ? "not packed" : String(w.dataHash.prefix(16)) + "…"); the coordinator sends the sequences (the same bits)")
            }
            guard let r = options.relay else {
                log("joined " + run)
                openShared(w)
                return nil
            }
            log("relaying " + run)
            let numerics = NumericsIdentity(encoded: hello.fingerprint)
            if let relay { relay.onWelcome(w, numerics: numerics) } else {
                relay = try RelayServer(r, context: context, welcome: w, numerics: numerics, store: store, log: log)
            }
        case .refuse(let reason, let numerics):
            if !numerics.isEmpty, let kernel = pinnable(NumericsIdentity(encoded: numerics)) {
                log("the coordinator computes with OpenBLAS's \(kernel) kernel, this worker with \(BLAS.coreName): "
                    + "restarting this worker pinned to \(kernel) (OPENBLAS_CORETYPE=\(kernel))")
                pinKernel = kernel
                return 3
            }
            log("refused by the coordinator: \(reason)")
            return 2
        case .work(let work):
            if let relay {
                for r in try relay.onWork(work) { sendResult(r) }
                return nil
            }
            guard let computers else { send(.hello(hello)); return nil }
            // A validation round uses the weights of the step it follows (`weightsStep`).
            let ws = work.weightsStep
            if let w = work.weights { weights = w; weightsStep = ws }
            // A new step's work arrives while the coordinator's optimizer runs, so before its
            // weights: the compute thread waits for their stamp in shared memory.
            var pendingWeights: SharedSlots? = nil
            if work.weightsShared {
                if let shared {
                    let stamp = shared.weightsStamp(step: ws)
                    if stamp > ws {
                        log("work for step \(ws) is stale (shared memory holds step \(stamp)): dropped")
                        return nil
                    }
                    weights = shared.weightsView(step: ws); weightsStep = ws
                    if stamp < ws { pendingWeights = shared }
                } else {
                    log("work names shared weights but this worker has no mapping: taking the weights over the socket from now on")
                    sharedFailed = true
                    gradients = nil
                }
            }
            if work.step != blockStep { blockOf = [:]; blockParts = [:]; blockStep = work.step }
            // A shard given again in another shape (its block was dropped) is summed in the new one.
            blockOf[work.shard] = work.blockSpan > 1 ? work.block : nil
            for e in work.sequences { cache[e.id] = e }
            var examples: [Example] = []
            examples.reserveCapacity(work.sequenceIds.count)
            // The kernel reads this shard's sequences in the background, all at once, while
            // the compute thread is still on the shards queued before it.
            if let store, welcome?.dataHash == store.identity { store.prefetch(work.sequenceIds.filter { cache[$0] == nil }) }
            for id in work.sequenceIds {
                if let e = cache[id] { examples.append(e); continue }
                guard let store, welcome?.dataHash == store.identity else { break }
                do { examples.append(try store.example(id)) } catch {
                    // A bad copy: the coordinator sends the sequences from now on (same result).
                    log("\(error)\nthis worker now takes its sequences from the coordinator")
                    self.store = nil
                    weightsStep = nil
                    send(.hello(hello))
                    return nil
                }
            }
            // The kernel reads next step's likely sequences while this shard computes.
            if let store, welcome?.dataHash == store.identity, !work.prefetchIds.isEmpty {
                store.prefetch(work.prefetchIds)
                lock.withLock { readAhead += work.prefetchIds.count }
            }
            guard let params = weights, weightsStep == ws, examples.count == work.sequenceIds.count else {
                log("work for step \(work.step) does not match what this worker holds: saying hello again")
                weightsStep = nil
                send(.hello(hello))
                return nil
            }
            let delay = options.delayPerShard
            // A local worker computes straight into its shared slot for this shard index.
            let slots = work.evaluate ? nil : gradients.flatMap { work.shard < $0.slots && $0.floats == params.count ? $0 : nil }
            let weightsComing = pendingWeights, weightsSource = shared
            let spin = options.barrierSpin
            lock.withLock { queuedShards += 1 }
            queue.submit { [self] in
                lock.withLock { queuedShards -= 1 }
                if let weightsComing {
                    let waitStarted = monotonicSeconds()
                    let seen = weightsComing.awaitWeights(step: ws, timeout: Timing.weightsWaitMaximum, spin: spin)
                    guard seen == .ready else {
                        log("shard \(work.shard) of step \(work.step) dropped: waiting for its weights in shared memory, \(seen)")
                        return
                    }
                    lock.withLock { waitedForWeights += 1; weightsWaitSeconds += monotonicSeconds() - waitStarted }
                }
                let grad = slots?.view(work.shard) ?? FloatBuffer(uninitializedCount: work.evaluate ? 0 : params.count)
                var started = 0.0
                var counts: [Int]? = nil
                let r = computers.with { computer in
                    lock.withLock { running += 1; peakRunning = max(peakRunning, running) }
                    defer { lock.withLock { running -= 1 } }
                    if delay > 0 { Thread.sleep(forTimeInterval: delay) }
                    started = monotonicSeconds()
                    if work.evaluate {
                        let sums = computer.engine.evaluate(params: params, examples: examples).sums
                        counts = sums.counts
                        return BatchResult(lossSum: sums.lossSum, frames: sums.frames)
                    }
                    return computer.compute(params: params, examples: examples, step: work.step, into: grad)
                }
                if let poison = options.poisonGradient, !work.evaluate { grad.fill(poison) }
                slots?.setStamp(work.shard, work.step)
                let seconds = monotonicSeconds() - started
                lock.lock()
                computed += 1
                finished.append(ShardResult(step: work.step, shard: work.shard, lossSum: r.lossSum, frames: r.frames, weightSum: r.weightSum,
                                            grad: slots == nil ? grad : FloatBuffer(count: 0), computeSeconds: seconds,
                                            sharedGradient: slots.map { SharedGradient(path: $0.path, token: $0.token) }, counts: counts))
                lock.unlock()
                // Never blocks: a full queue already holds a wake-up, and the main loop takes
                // every finished shard at each one.
                notifyLock.withLock { _ = notifier.send([[1]], dontWait: true) }
                // Keep this core busy until the next step's weights or more work arrive: a core
                // left idle at the barrier computes the next shard slower (Timing.barrierSpin).
                if spin > 0, let weightsSource {
                    let spun = weightsSource.spin(untilWeightsOf: work.evaluate ? ws : ws + 1, for: spin) { lock.withLock { queuedShards == 0 } }
                    lock.withLock { spunSeconds += spun }
                }
            }
        case .heartbeat:
            break
        case .stop:
            if let relay {
                relay.stop()
                log("coordinator says stop: the relay's workers are told to stop; exiting; peak RSS \(Memory.peakResident >> 20) MiB")
                return 0
            }
            let (n, waited, seconds, spun, peak) = lock.withLock { (computed, waitedForWeights, weightsWaitSeconds, spunSeconds, peakRunning) }
            log("coordinator says stop: exiting after \(n) shard(s), up to \(peak) at once"
                + (waited > 0 ? String(format: "; %d started before their weights were published and waited %.1f ms each on average", waited, 1000 * seconds / Double(waited)) : "")
                + (spun > 0 ? String(format: "; busy-waited %.0f ms at step barriers", 1000 * spun) : "")
                + (store.map { s in
                    let r = s.reads
                    return String(format: "; data: %d sequences read from %d shard files, %d from the cache (%.1f of %.1f MB), %d hinted ahead",
                                  r.files, s.shardsRead, r.cached, Double(s.cachedBytes) / 1e6, Double(s.cacheBytes) / 1e6, lock.withLock { readAhead })
                } ?? "")
                + String(format: "; peak RSS %.0f MB", Double(Memory.peakResident) / 1e6))
            return 0
        case .reset:
            weightsStep = nil
            send(.hello(hello))
        case .hello, .result:
            log("unexpected \(m.typeName) from the coordinator: dropped")
        }
        return nil
    }
}
