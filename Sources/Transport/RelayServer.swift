import BiLSTM
import ClusterProtocol
import Datasets
import Formats
import Foundation
import Numerics
import Training

/// A relay's IO shell below it (`worker relay`): the socket its workers join (`RouterShell`),
/// the pure `RelayCore`, and what the work it passes on needs: the step's weights and the
/// sequences its coordinator sent (or its own copy of the data). Above it, `WorkerClient`
/// speaks to the coordinator as for any worker and hands this type the work.
public final class RelayServer {
    public struct Options {
        /// Where its workers join: tcp://HOST:PORT (or ipc://PATH).
        public var bind: String
        /// CURVE below: this relay's keypair and the allowed worker keys.
        public var curve: (keys: CurveKeypair, allowed: [String])? = nil
        /// A loopback `bind` without `curve` gets a per-run join key unless this is false (`--insecure`).
        public var authenticate = true
        public var maxWorkers = 256
        public init(bind: String) { self.bind = bind }
    }

    let router: RouterShell
    let options: Options
    var core: RelayCore
    var limits = WireLimits()
    let log: (String) -> Void
    /// The current round's weights, the step they are, and the sequences the coordinator sent
    /// (passed on to workers without a copy of the data), by id.
    var weights: FloatBuffer?
    var weightsStep: Int?
    var cache: [Int: Example] = [:]
    /// Read-ahead hints from the coordinator, by shard index, for the workers reading their own copy.
    var hints: [Int: [Int]] = [:]
    /// This relay's own copy of the data, when it has one that is the run's.
    var store: PackedStore?
    /// Results taken from workers and sums sent up, for the stop line.
    var resultsIn = 0, sumsUp = 0

    public var endpoint: String { router.endpoint }
    public var rejected: Int { router.rejected }

    /// Binds once the coordinator's first welcome says what the run is (its workers' messages
    /// are bounded by its gradient size); `numerics` is what this relay proved to it.
    public init(_ options: Options, context: ZMQContext, welcome: Welcome, numerics: NumericsIdentity, store: PackedStore?,
                log: @escaping (String) -> Void) throws {
        self.options = options
        self.log = log
        self.store = store
        router = try RouterShell(context: context, bind: options.bind, maxMessageBytes: ParameterLayout(welcome.model).count * 4 + (1 << 16),
                                 curve: options.curve, authenticate: options.authenticate, bindWait: 0, log: log)
        core = RelayCore(numerics: numerics, welcome: welcome, maxWorkers: options.maxWorkers)
        limits.parameterCount = ParameterLayout(welcome.model).count
        limits.inputSize = welcome.model.inputSize; limits.classes = welcome.model.classes
        log("relay listening on \(router.endpoint); its workers join there")
        dropStore(unlessItHolds: welcome)
    }

    deinit { router.close() }

    /// The coordinator welcomed this relay: a new run (or model) starts a new core, whose
    /// workers say hello again when it does not know them.
    func onWelcome(_ w: Welcome, numerics: NumericsIdentity) {
        let was = core.down.welcome
        guard was.runId != w.runId || was.model != w.model || was.seed != w.seed || was.classWeights != w.classWeights else { return }
        limits.parameterCount = ParameterLayout(w.model).count
        limits.inputSize = w.model.inputSize; limits.classes = w.model.classes
        core = RelayCore(numerics: numerics, welcome: w, maxWorkers: options.maxWorkers)
        cache = [:]; weights = nil; weightsStep = nil
        dropStore(unlessItHolds: w)
    }

    /// A data copy that is not this run's is never read.
    func dropStore(unlessItHolds w: Welcome) {
        guard let store, store.identity != w.dataHash else { return }
        self.store = nil
        log("this relay's data copy is not the run's: its workers are sent the sequences")
    }

    /// Work from the coordinator. Returns answers to send up at once (work asked again).
    func onWork(_ w: Work) throws -> [ShardResult] {
        if let ws = w.weights { weights = ws; weightsStep = w.weightsStep }
        for e in w.sequences { cache[e.id] = e }
        if !w.prefetchIds.isEmpty { hints[w.shard] = w.prefetchIds }
        return try apply(core.onWork(w, now: monotonicSeconds()))
    }

    /// Sockets to poll with the relay's upstream ones.
    var sockets: [ZMQSocket] { router.sockets }

    /// Serves what `ready` (a poll of `sockets`) says waits, and the timers. Returns the sums
    /// to send up.
    func serve(_ ready: ArraySlice<Bool>) throws -> [ShardResult] {
        var up: [ShardResult] = []
        for peer in router.closedPeers() { up += try apply(core.onDisconnect(peer, now: monotonicSeconds())) }
        if router.ready(ready) {
            var drained = 0
            while drained < 1000, let (peer, message) = router.receive(limits: limits) {
                drained += 1
                guard let message else { continue }
                if case .result(let r) = message {
                    if r.sharedGradient != nil { router.reject(peer, WireError("result in shared memory: a relay has none")); continue }
                    resultsIn += 1
                }
                up += try apply(core.onMessage(message, from: peer, now: monotonicSeconds()))
            }
        }
        up += try apply(core.onTick(now: monotonicSeconds()))
        sumsUp += up.count
        return up
    }

    func apply(_ out: RelayCore.Output) throws -> [ShardResult] {
        try execute(out.down)
        return out.up
    }

    /// Stops the workers below (the coordinator said stop) and gives the stops time to arrive.
    func stop() {
        router.sendStops(core.finish())
        log("relay: \(resultsIn) result(s) taken from its workers, \(sumsUp) sum(s) sent up; \(router.bytesReceived) bytes in, \(router.bytesSent) bytes out"
            + (router.rejected > 0 ? "; \(router.rejected) malformed message(s) rejected" : ""))
        router.close()
    }

    func execute(_ directives: [Directive]) throws {
        for d in directives {
            switch d {
            case .send(let peer, let m):
                router.send(m, to: peer)
            case .sendWork(let peer, let step, let shard, let withWeights, let fresh, let block):
                let down = core.down
                guard let weights, weightsStep == down.roundWeightsStep else {
                    log("no weights for step \(down.roundWeightsStep ?? -1) to send with shard \(shard): its worker will time out and the shard go to another")
                    continue
                }
                var sequences: [Example] = []
                for id in fresh {
                    if let e = cache[id] { sequences.append(e) } else if let store { sequences.append(try store.example(id)) } else {
                        throw LockstepError("relay: sequence \(id) of step \(step) shard \(shard) was neither sent by the coordinator nor is in a data copy here")
                    }
                }
                let reads = down.workers.contains { $0.peer == peer && $0.readsData }
                let work = down.work(shard: shard, block: block, sequences: sequences, prefetchIds: reads ? hints[shard] ?? [] : [])
                router.send(work, to: peer, carriage: withWeights ? .frame : .none, weights: weights)
            case .log(let s): log(s)
            case .stepComplete: break
            case .fatal(let s):
                throw LockstepError("relay: \(s)", hint: "the workers behind this relay compute differently; run every host with the same build and OPENBLAS_CORETYPE")
            }
        }
    }
}
