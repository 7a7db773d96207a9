import BiLSTM
import Foundation
import Numerics
import Training

/// Timing of the failure detector, after the zguide's Paranoid Pirate: any message counts as
/// a heartbeat; a peer silent for `liveness` is dead.
public enum Timing {
    /// How often each side sends a heartbeat when it has nothing else to say (seconds).
    public static let heartbeatInterval: Double = 0.5
    /// Missed heartbeat intervals before a peer is declared dead.
    public static let livenessIntervals: Double = 6
    /// Silence after which a peer is dead (seconds).
    public static var liveness: Double { heartbeatInterval * livenessIntervals }
    /// A shard is re-issued to an idle worker once it has run this many times the typical shard time…
    public static let stragglerFactor: Double = 4
    /// …and at least this long (seconds).
    public static let stragglerMinimum: Double = 1.0
    /// Shards in flight per worker: one computing, one queued, so no worker idles for a round trip.
    public static let shardsInFlight = 2
    /// Worker reconnect back-off: first wait and cap (seconds).
    public static let reconnectInitial: Double = 0.25
    public static let reconnectMaximum: Double = 4.0
    /// How long a local worker busy-waits (yielding) at the step barrier for the next step's
    /// weights before it sleeps (seconds), like OpenMP's active wait. On a VM a core left idle at
    /// every barrier computed the next shard 5–15% slower (README, "Figures").
    public static let barrierSpin: Double = 0.05
    /// The longest a worker waits for a step's weights to appear in shared memory (seconds); a
    /// reconnect ends the wait sooner. A shard given up on is re-issued like a straggler's.
    public static let weightsWaitMaximum: Double = 60
}

/// A ZeroMQ routing id.
public struct Peer: Hashable, CustomStringConvertible, Sendable {
    public let id: [UInt8]
    public init(_ id: [UInt8]) { self.id = id }
    public var description: String { id.map { String(format: "%02x", $0) }.joined() }
}

/// What the IO shell must do. The core never touches a socket.
public enum Directive: Equatable {
    case send(Peer, Message)
    /// Send shard `shard` of `step`, with the step's weights if `withWeights`, and the listed
    /// sequences (those this worker has not been sent yet); `block`, when the shard goes with
    /// the others of an aligned block the worker sums before answering once.
    case sendWork(Peer, step: Int, shard: Int, withWeights: Bool, newSequences: [Int], block: Range<Int>? = nil)
    case log(String)
    /// Every shard of the current step has a result: reduce, clip, step, then `beginStep`.
    case stepComplete
    /// Stop the run: determinism or numerics can no longer be guaranteed.
    case fatal(String)
}

/// The coordinator's protocol logic as a pure value (after apple/swift-cluster-membership's
/// `SWIM.Instance`): `on…` methods take an event and the time and return directives. Hands out
/// shards to idle workers, tracks liveness, re-issues the shards of dead workers and
/// stragglers, drops stale results and compares duplicates bit for bit. Which worker computes
/// which shard never changes a result; this type only decides who works when.
public struct CoordinatorCore {
    public struct Worker {
        public let peer: Peer
        public let name: String
        public var incarnation: UInt64 = 0
        /// Reads the step's weights from the coordinator's shared memory (a local worker).
        public var sharedMemory = false
        /// Shards it computes at once (`worker join --threads`): it is given that many more in flight.
        public var threads = 1
        public var lastSeen: Double
        public var weightsStep: Int?
        public var sentSequences: Set<Int> = []
        /// Reads the run's training sequences from its own copy of the packed data.
        public var readsData = false
        /// Shards sent to this worker and not yet answered, in the order it computes them.
        public var assigned: [Int] = []
        public var lastProgress: Double = 0
    }

    public struct Shard {
        public var sequenceIds: [Int]
        public var result: ShardResult?
        public var resultFrom: String?
        public var holders: [Peer] = []
        public var issuedAt: Double?
        /// Summed into the block result held by shard `coveredBy`.
        public var coveredBy: Int? = nil
        /// Answered: alone, or inside a block.
        public var done: Bool { result != nil || coveredBy != nil }
        /// This core may hand it out. A relay's core holds every shard index of its round but
        /// is offered only those its coordinator gave it (`offer`).
        public var offered = true
        /// The range a block holding this shard must stay inside (a relay's block or lone shard
        /// from its coordinator, answered as one); nil: any aligned block.
        public var bound: Range<Int>? = nil
        var free: Bool { offered && !done && holders.isEmpty }
    }

    /// What a worker's numerics must equal, component by component.
    public let numerics: NumericsIdentity
    /// Sent to every worker that joins; the shell adds its shared-memory mapping when it has one.
    public var welcome: Welcome
    public var minWorkers: Int
    public var maxWorkers: Int
    public var inFlight: Int
    public private(set) var workers: [Worker] = []
    public private(set) var step: Int? = nil
    public private(set) var shards: [Shard] = []
    public private(set) var started = false
    public private(set) var reissuedThisStep = 0
    private var recentShardSeconds: [Double] = []
    private var lastHeartbeat: Double = -.infinity
    private var unknownPeersWarned: Set<Peer> = []

    /// The run's training data: its content hash and sequence count (ids below it are training
    /// sequences, which a worker holding a copy with this hash reads itself).
    public var data: (hash: String, count: Int) = ("", 0)

    public init(numerics: NumericsIdentity, welcome: Welcome, minWorkers: Int = 1, maxWorkers: Int = 256,
                inFlight: Int = Timing.shardsInFlight) {
        self.inFlight = inFlight
        self.numerics = numerics
        self.welcome = welcome
        self.minWorkers = minWorkers
        self.maxWorkers = maxWorkers
    }

    public var alive: Int { workers.count }
    /// The most shards one peer is trusted to hold at once (a relay's whole group of hosts).
    public static let maxThreads = 1024
    public var complete: Bool { !shards.isEmpty && shards.allSatisfy(\.done) }
    /// Results in shard order, for the fixed reduction tree (a block's covers `span` shards).
    public var results: [ShardResult] { shards.compactMap(\.result) }

    /// The block of shards a worker computing `threads` shards at once is given together, to
    /// sum and answer once: the largest power of two up to its threads, over TCP (a local worker
    /// writes each gradient into shared memory instead), never for validation (counts, not
    /// gradients). Aligned blocks are subtrees of the reduction tree, so the result is the same.
    func blockSize(_ w: Int) -> Int {
        guard !evaluating, !workers[w].sharedMemory, workers[w].threads >= 2 else { return 1 }
        var b = 1
        while b * 2 <= workers[w].threads { b *= 2 }
        return b
    }

    /// Shards worker `w` may hold at once: `inFlight` more than it computes at once (a second
    /// block waits until it has room: a queued block would starve narrower workers).
    func capacity(_ w: Int) -> Int { max(inFlight, 1) + workers[w].threads - 1 }

    /// The lowest free aligned block of `width` shards (a subtree, at least 2, within its
    /// shards' bounds), or else of the widest width below that is free.
    func freeBlock(upTo width: Int) -> Range<Int>? {
        var b = width
        while b >= 2 {
            for a in stride(from: 0, to: shards.count, by: b) {
                let block = a ..< min(a + b, shards.count)
                if block.count >= 2 && TreeSum.isSubtree(block.lowerBound, block.upperBound, of: shards.count)
                    && block.allSatisfy({ shards[$0].free }) && fits(block) { return block }
            }
            b /= 2
        }
        return nil
    }

    public var stragglerAfter: Double {
        guard !recentShardSeconds.isEmpty else { return Timing.stragglerMinimum * 4 }
        let typical = recentShardSeconds.sorted()[recentShardSeconds.count / 2]
        return max(Timing.stragglerMinimum, Timing.stragglerFactor * typical)
    }

    private func index(of p: Peer) -> Int? { workers.firstIndex { $0.peer == p } }

    /// The current round is a validation: forward-only shards whose results carry counts.
    public private(set) var evaluating = false
    /// The weights the current round's work uses (a validation round's are a training step's).
    public private(set) var roundWeightsStep: Int? = nil

    /// Starts a round of shards: a training step, or (`evaluate`) a validation with the weights
    /// of step `weightsStep` under its own round id `step`, so that no result of one round is
    /// taken for the other's.
    /// `offered` false: no shard is handed out until `offer` names it (a relay's round).
    public mutating func beginStep(_ step: Int, shards cut: [[Int]], now: Double, evaluate: Bool = false, weightsStep: Int? = nil,
                                   offered: Bool = true) -> [Directive] {
        self.step = step
        evaluating = evaluate
        roundWeightsStep = weightsStep ?? step
        shards = cut.map { var s = Shard(sequenceIds: $0); s.offered = offered; return s }
        reissuedThisStep = 0
        for i in workers.indices { workers[i].assigned = []; workers[i].lastProgress = now }
        return assign(now: now)
    }

    /// Offers shards of the current round with their sequences, all within `bound`: a block of
    /// workers here is never wider than it, so it is answered upstream as one sum.
    public mutating func offer(_ offered: [(shard: Int, sequenceIds: [Int])], bound: Range<Int>, now: Double) -> [Directive] {
        for (s, ids) in offered where s >= 0 && s < shards.count && !shards[s].offered {
            shards[s].sequenceIds = ids
            shards[s].offered = true
            shards[s].bound = bound
        }
        return assign(now: now)
    }

    /// The work message for shard `shard` of the current round (a `.sendWork`'s), with the
    /// sequences the worker lacks and its read-ahead hints.
    public func work(shard: Int, block: Range<Int>?, sequences: [Example], prefetchIds: [Int]) -> Work {
        Work(step: step ?? 0, shard: shard, sequenceIds: shards[shard].sequenceIds, weights: nil, sequences: sequences, evaluate: evaluating,
             weightsStep: roundWeightsStep, prefetchIds: prefetchIds, block: block, shardCount: shards.count)
    }

    /// Whether shards `block` may go (or come back) as one block: each is offered and the block
    /// stays within their bounds.
    func fits(_ block: Range<Int>) -> Bool {
        block.allSatisfy { shards[$0].offered && (shards[$0].bound.map { $0.lowerBound <= block.lowerBound && block.upperBound <= $0.upperBound } ?? true) }
    }

    public mutating func onMessage(_ message: Message, from peer: Peer, now: Double) -> [Directive] {
        if case .hello(let h) = message { return onHello(h, from: peer, now: now) }
        guard let w = index(of: peer) else {
            // Not joined (e.g. we restarted): ask it to say hello again.
            var out: [Directive] = [.send(peer, .reset)]
            if unknownPeersWarned.insert(peer).inserted { out.append(.log("\(message.typeName) from unknown peer \(peer): asked it to say hello")) }
            return out
        }
        workers[w].lastSeen = now
        switch message {
        case .heartbeat: return []
        case .result(let r): return onResult(r, worker: w, now: now)
        default: return [.log("unexpected \(message.typeName) from \(workers[w].name): dropped")]
        }
    }

    private mutating func onHello(_ h: Hello, from peer: Peer, now: Double) -> [Directive] {
        let name = "worker pid \(h.pid) (\(peer))"
        let theirs = NumericsIdentity(encoded: h.fingerprint)
        let differ = theirs.differences(from: numerics, keys: NumericsIdentity.compared(in: welcome.numerics))
        if !differ.isEmpty {
            let what = differ.map { "\($0.key): worker \($0.mine.isEmpty ? "(none)" : $0.mine), coordinator \($0.theirs)" }
            let core = numerics.values["blas"] ?? "?"
            let hint = welcome.numerics == .portable
                ? "the worker's portable GEMM gives other bits: run the same Lockstep version on every host"
                : theirs.onlyKernelDiffers(from: numerics)
                ? "a worker whose CPU can run the \(core) kernel pins it by itself (OPENBLAS_CORETYPE=\(core)); start the coordinator with a kernel every host can run, e.g. OPENBLAS_CORETYPE=Haswell"
                : "run the same Lockstep build with the same OpenBLAS on every host, with OPENBLAS_CORETYPE=\(core)"
            let reason = "numerics fingerprint mismatch: \(name) differs in " + what.joined(separator: "; ")
                + "; its gradients would not be bit-identical. HINT: " + hint
            return [.send(peer, .refuse(reason, numerics: numerics.encoded)), .log("refused \(reason)")]
        }
        var out: [Directive] = []
        if let w = index(of: peer) {
            out += release(w, now: now, why: "said hello again")
            workers.remove(at: w)
        } else if h.incarnation != 0, let w = workers.firstIndex(where: { $0.incarnation == h.incarnation }) {
            // The same process on a new connection (a link flap): its old one will never answer.
            out += release(w, now: now, why: "reconnected as \(peer)")
            workers.remove(at: w)
        } else if workers.count >= maxWorkers {
            let reason = "the coordinator already has \(maxWorkers) workers. HINT: raise --max-workers"
            return [.send(peer, .refuse(reason)), .log("refused \(name): \(reason)")]
        }
        var worker = Worker(peer: peer, name: name, incarnation: h.incarnation, sharedMemory: h.sharedMemory,
                            threads: min(max(h.threads, 1), CoordinatorCore.maxThreads), lastSeen: now)
        var reads = ""
        if !h.dataHash.isEmpty {
            if h.dataHash == data.hash && !data.hash.isEmpty {
                worker.readsData = true
                reads = ", reads the data from its own copy"
            } else {
                reads = ", its data copy differs from the run's (identity \(h.dataHash.prefix(12))…, the run's \(data.hash.isEmpty ? "none" : data.hash.prefix(12) + "…")): sent sequences instead"
            }
        }
        workers.append(worker)
        out += [.send(peer, .welcome(welcome)), .log("\(name) joined (BLAS \(h.blasCore)\(reads), \(workers.count) alive)")]
        if !started && workers.count >= minWorkers {
            started = true
            out.append(.log("\(workers.count) worker(s) present: training starts"))
        }
        return out + assign(now: now)
    }

    private mutating func onResult(_ r: ShardResult, worker w: Int, now: Double) -> [Directive] {
        let name = workers[w].name
        if r.span != 1 { return onBlockResult(r, worker: w, now: now) }
        if r.step == step, let k = workers[w].assigned.firstIndex(of: r.shard) {
            workers[w].assigned.remove(at: k)
            recentShardSeconds.append(now - workers[w].lastProgress)
            if recentShardSeconds.count > 32 { recentShardSeconds.removeFirst() }
            workers[w].lastProgress = now
        }
        guard r.step == step, r.shard >= 0, r.shard < shards.count else {
            return [.log("stale result (step \(r.step), shard \(r.shard)) from \(name): dropped")] + assign(now: now)
        }
        let wellFormed = evaluating
            ? r.counts.flatMap { EvalSums(classes: welcome.model.classes, lossSum: r.lossSum, frames: r.frames, counts: $0) } != nil
            : r.counts == nil
        guard wellFormed else {
            return [.log("malformed \(evaluating ? "validation" : "training") result for shard \(r.shard) from \(name): dropped")] + assign(now: now)
        }
        shards[r.shard].holders.removeAll { $0 == workers[w].peer }
        if let block = shards[r.shard].coveredBy {
            return [.log("result for step \(r.step) shard \(r.shard) from \(name): already summed in the block from shard \(block); dropped")] + assign(now: now)
        }
        if let first = shards[r.shard].result {
            if first.span != r.span {
                // A straggler's copy of a block's first shard: the block's sum already holds it.
                return [.log("result for step \(r.step) shard \(r.shard) from \(name): already summed in the block from shard \(r.shard); dropped")] + assign(now: now)
            }
            if first.sameBits(as: r) {
                return [.log("duplicate result for step \(r.step) shard \(r.shard) from \(name) matches \(shards[r.shard].resultFrom ?? "?") bit for bit")] + assign(now: now)
            }
            return [.fatal("step \(r.step) shard \(r.shard): \(name) and \(shards[r.shard].resultFrom ?? "?") returned different bits for the same work. "
                + "HINT: the two hosts compute differently (CPU kernel or build); run every worker with the same binary and OPENBLAS_CORETYPE")]
        }
        // Non-finite results are kept: the trainer stops or skips the step, the same way on every rerun.
        shards[r.shard].result = r
        shards[r.shard].resultFrom = name
        var out = assign(now: now)
        if complete { out.append(.stepComplete) }
        return out
    }

    /// One result for an aligned block of shards the worker summed in the tree's order.
    private mutating func onBlockResult(_ r: ShardResult, worker w: Int, now: Double) -> [Directive] {
        let name = workers[w].name, block = r.shard ..< r.shard + r.span
        guard r.step == step, !evaluating, r.counts == nil, r.span >= 2, block.upperBound <= shards.count,
              TreeSum.isSubtree(block.lowerBound, block.upperBound, of: shards.count), fits(block) else {
            return [.log("result for shards \(block) of step \(r.step) from \(name) is not a block of this step: dropped")] + assign(now: now)
        }
        workers[w].assigned.removeAll { block.contains($0) }
        recentShardSeconds.append((now - workers[w].lastProgress) / Double(r.span))
        if recentShardSeconds.count > 32 { recentShardSeconds.removeFirst() }
        workers[w].lastProgress = now
        for s in block { shards[s].holders.removeAll { $0 == workers[w].peer } }
        if block.contains(where: { shards[$0].done }) {
            // A straggler's copy answered a shard of it alone: keep the single results (their
            // sum cannot be compared with the block's); the rest go back to the queue.
            return [.log("block \(block) of step \(r.step) from \(name) overlaps shards answered alone: dropped")] + assign(now: now)
        }
        shards[block.lowerBound].result = r
        shards[block.lowerBound].resultFrom = name
        for s in block.dropFirst() { shards[s].coveredBy = block.lowerBound }
        var out = assign(now: now)
        if complete { out.append(.stepComplete) }
        return out
    }

    /// The connection a worker's messages came on has closed (its process died, or its link
    /// went down): its shards go back to the queue now, not after `Timing.liveness`.
    public mutating func onDisconnect(_ peer: Peer, now: Double) -> [Directive] {
        guard let w = index(of: peer) else { return [] }
        let out = release(w, now: now, why: "closed its connection: released at once")
        workers.remove(at: w)
        return out + assign(now: now)
    }

    public mutating func onTick(now: Double) -> [Directive] {
        var out: [Directive] = []
        var w = 0
        while w < workers.count {
            if now - workers[w].lastSeen > Timing.liveness {
                out += release(w, now: now, why: String(format: "silent for %.1fs: declared dead", now - workers[w].lastSeen))
                workers.remove(at: w)
            } else { w += 1 }
        }
        if now - lastHeartbeat >= Timing.heartbeatInterval {
            lastHeartbeat = now
            out += workers.map { .send($0.peer, .heartbeat) }
        }
        return out + assign(now: now)
    }

    /// Sends stop to every worker (end of the run).
    public mutating func finish() -> [Directive] {
        let out = workers.map { Directive.send($0.peer, .stop) }
        step = nil
        return out
    }

    private mutating func release(_ w: Int, now: Double, why: String) -> [Directive] {
        var msg = "\(workers[w].name) \(why)"
        for s in workers[w].assigned where s < shards.count {
            shards[s].holders.removeAll { $0 == workers[w].peer }
            if !shards[s].done && shards[s].holders.isEmpty {
                reissuedThisStep += 1
                msg += "; its shard \(s) goes back to the queue"
            }
        }
        return [.log(msg)]
    }

    /// Fills each worker up to `inFlight` shards, lowest pending first, one per worker per
    /// round; an idle worker with nothing pending duplicates a straggler's shard.
    private mutating func assign(now: Double) -> [Directive] {
        guard started, let step else { return [] }
        var out: [Directive] = []
        let deepest = max(inFlight, 1) + (workers.map(\.threads).max() ?? 1) - 1
        // Most calls come when every shard is already out: nothing to look for.
        guard shards.contains(where: \.free) || workers.contains(where: { $0.assigned.isEmpty }) else { return [] }
        // A worker that computes several shards at once takes whole aligned blocks, one per
        // worker per pass, while it has room for one: of its width, or else the widest free.
        var gave = true
        while gave {
            gave = false
            for w in workers.indices where blockSize(w) > 1 {
                var width = blockSize(w)
                while width > capacity(w) - workers[w].assigned.count { width /= 2 }
                guard width >= 2, let block = freeBlock(upTo: width) else { continue }
                for s in block { out.append(give(s, to: w, now: now, straggler: false, block: block)) }
                gave = true
            }
        }
        // It takes single shards only when no block is left for it to take once it has room.
        let widest = workers.indices.map { blockSize($0) }.max() ?? 1
        let blockLeft = widest > 1 && freeBlock(upTo: widest) != nil
        for depth in 1...deepest {
            for w in workers.indices where workers[w].assigned.count < depth && depth <= capacity(w)
                && !(blockLeft && blockSize(w) > 1) {
                var pick = shards.indices.first { shards[$0].free }
                var straggler = false
                if pick == nil && workers[w].assigned.isEmpty {
                    pick = shards.indices.first {
                        !shards[$0].done && shards[$0].holders.count == 1
                            && now - (shards[$0].issuedAt ?? now) > stragglerAfter
                    }
                    straggler = pick != nil
                }
                guard let s = pick else { continue }
                if straggler {
                    reissuedThisStep += 1
                    out.append(.log("step \(step) shard \(s) is straggling: also issued to \(workers[w].name)"))
                }
                out.append(give(s, to: w, now: now, straggler: straggler, block: nil))
            }
        }
        return out
    }

    private mutating func give(_ s: Int, to w: Int, now: Double, straggler: Bool, block: Range<Int>?) -> Directive {
        shards[s].holders.append(workers[w].peer)
        if shards[s].issuedAt == nil || straggler { shards[s].issuedAt = now }
        if workers[w].assigned.isEmpty { workers[w].lastProgress = now }
        workers[w].assigned.append(s)
        let weights = roundWeightsStep ?? step!
        let withWeights = workers[w].weightsStep != weights
        workers[w].weightsStep = weights
        let reads = workers[w].readsData, training = data.count
        let fresh = shards[s].sequenceIds.filter { !(reads && $0 < training) && !workers[w].sentSequences.contains($0) }
        workers[w].sentSequences.formUnion(fresh)
        return .sendWork(workers[w].peer, step: step!, shard: s, withWeights: withWeights, newSequences: fresh, block: block)
    }
}
