import BiLSTM
import CZMQ
import ClusterProtocol
import Datasets
import Formats
import Foundation
import Numerics
import Training

/// The worker's IO shell: a DEALER to the coordinator, a compute thread for shards, and
/// Paranoid-Pirate liveness (heartbeats while computing; reconnect with back-off when the
/// coordinator goes silent).
public final class WorkerClient {
    public struct Options {
        public var endpoint: String
        public var threads = 1
        /// Pin the coordinator's BLAS kernel when only the kernel differs (re-executing this program).
        public var pin = true
        public var numericsOverrides: [String: String] = [:]  // test hook: pretend other numerics
        public var cpuFlags: Set<String>? = nil    // test hook: pretend another CPU
        public var blasThreads: Int? = nil         // test hook: break the one-BLAS-thread layout
        public var delayPerShard: Double = 0       // test hook: a slow worker
        public var poisonGradient: Float? = nil    // test hook: a hostile worker returning this constant
        public var parentPid: pid_t? = nil         // exit when this process is gone
        /// Over a local (`ipc://`) endpoint, exchange weights and gradients through shared memory.
        public var sharedMemory = true
        /// Seconds a shared-memory worker busy-waits at the step barrier (0: sleep at once).
        public var barrierSpin = Timing.barrierSpin
        /// CURVE: this worker's keypair and the coordinator's public key.
        public var curve: (keys: CurveKeypair, serverKey: String)? = nil
        /// The run's join key file; by default the one `JoinKey.path` names for a loopback endpoint.
        public var joinKeyPath: String? = nil
        /// Talk to a coordinator that authenticated neither side (`--insecure`). Otherwise a
        /// worker without keys drops every message of such a peer and exits 2.
        public var insecure = false
        /// The run this worker is for (`--run`): a coordinator of another run is left (exit 2).
        public var runId: UInt64? = nil
        /// This worker's copy of the packed training data (`--data-root`): it reads the run's
        /// sequences there instead of receiving them, when the content hash is the run's.
        public var dataRoot: String? = nil
        /// The most MiB of sequences read from `dataRoot` kept in memory (`--cache-mb`).
        public var cacheMB: Int? = nil  // nil: PackedStore.defaultCacheMB
        /// Relay instead of compute (`worker relay`): pass the work on to the workers that join
        /// here and send up one sum per block (`RelayServer`).
        public var relay: RelayServer.Options? = nil
        public init(endpoint: String) { self.endpoint = endpoint }
    }

    let options: Options
    let context = ZMQContext()
    var socket: ZMQSocket
    let done: ZMQSocket
    let doneEndpoint = "inproc://lockstep-done-\(UUID().uuidString)"
    let log: (String) -> Void
    let helloBase: Hello
    /// Set once the coordinator's shared memory could not be used: weights and gradients go over the socket.
    var sharedFailed = false
    /// The coordinator's weights (read-only; letting a mapping go ends any wait on it) and this
    /// worker's gradient slots, one per shard index.
    var shared: SharedSlots? { didSet { if oldValue !== shared { oldValue?.abandon() } } }
    var gradients: SharedSlots?
    var hello: Hello {
        var h = helloBase
        h.sharedMemory = options.sharedMemory && options.endpoint.hasPrefix("ipc://") && !sharedFailed && options.relay == nil
        h.dataHash = store?.identity ?? ""
        return h
    }
    /// The packed data this worker reads itself; nil once a shard of it failed its check.
    var store: PackedStore?
    /// Below this process, when it relays: made at the first welcome.
    var relay: RelayServer?

    /// One engine per thread (`--threads`): that many shards at once, each with single-threaded BLAS.
    var computers: ShardComputerPool?
    var welcome: Welcome?
    var weights: FloatBuffer?
    var weightsStep: Int?
    var cache: [Int: Example] = [:]
    var limits = WireLimits()
    /// The compute threads (`--threads`), taking shards in the order they came.
    let queue: ComputeThreads
    let lock = NSLock()
    var finished: [ShardResult] = []
    /// Shards computed, and how many of them (and for how long) waited for their step's weights.
    var computed = 0, waitedForWeights = 0, weightsWaitSeconds = 0.0
    /// Shards handed to the compute thread and not yet started: a busy-wait ends when one comes.
    var queuedShards = 0
    /// Sequences hinted ahead by the coordinator and handed to the kernel to read (`prefetch`).
    var readAhead = 0
    /// Shards given in aligned blocks (`Work.block`) this step, and the results of each block
    /// so far: a block is summed in its subtree's order and answered once. Main loop only.
    var blockOf: [Int: Range<Int>] = [:], blockParts: [Int: [Int: ShardResult]] = [:], blockStep = -1
    /// Shards being computed now, and the most at once (`--threads`).
    var running = 0, peakRunning = 0
    /// Seconds the compute thread busy-waited at step barriers.
    var spunSeconds = 0.0
    /// The compute threads' wake-up for the main loop (a finished shard). One socket for all of
    /// them, used under `notifyLock`: a ZeroMQ socket must not be used by two threads at once
    /// (two threads racing to make and use one sometimes left a send blocked for good, and the
    /// run waiting on a worker that still sent heartbeats).
    let notifier: ZMQSocket
    let notifyLock = NSLock()
    var lastHeard = monotonicSeconds()
    var lastSent = 0.0
    var backoff = Timing.reconnectInitial
    /// The socket's monitor: connection, handshake and disconnection events.
    var monitor: ZMQSocket?
    /// The join key this connection presents (nil: own keys, or none).
    var joinKey: JoinKey?
    /// The endpoint is this user's own local socket file (set by `connect`).
    var ownLocalSocket = false
    /// The connection is up at the TCP/IPC level / was since the last reconnect.
    var connected = false, connectedSinceReconnect = false
    /// Failed CURVE handshakes in a row, and why the last one failed.
    var handshakeFailures = 0
    var handshakeReason: String?

    public init(_ options: Options, log: @escaping (String) -> Void) throws {
        self.options = options
        self.log = log
        // Parallelism is by shard, never inside a product: OpenBLAS with more than one thread
        // takes other code paths, which change bits (DESIGN.md §3.5).
        BLAS.setThreads(options.blasThreads ?? 1)
        queue = ComputeThreads(count: options.relay == nil ? options.threads : 1)  // a relay computes nothing
        var numerics = NumericsIdentity.current()
        numerics.values.merge(options.numericsOverrides) { $1 }
        helloBase = Hello(fingerprint: numerics.encoded, blasCore: BLAS.coreName,
                      threads: options.threads, pid: Int(getpid()), incarnation: UInt64.random(in: 1...UInt64.max))
        if let root = options.dataRoot {
            do { store = try PackedStore(root, cacheMB: options.cacheMB) } catch let e as LockstepError {
                throw LockstepError("--data-root: \(e.message)",
                                    hint: "give the directory `coord data pack` wrote (it holds manifest.json), or leave --data-root out to receive the sequences from the coordinator")
            }
            log("data: reading sequences from \(root) (\(store!.manifest.sequences) sequences, identity \(store!.identity.prefix(12))…) when it is the run's; keeping up to \(store!.cacheBytes >> 20) MiB of them")
        }
        done = try ZMQSocket(context, .pair)
        try done.bind(doneEndpoint)
        notifier = try ZMQSocket(context, .pair)
        try notifier.connect(doneEndpoint)
        socket = try ZMQSocket(context, .dealer)  // a placeholder: connect() makes the real one
        socket = try connect()
    }

    /// A new DEALER to the coordinator, with its monitor. Without keys of its own, a worker uses
    /// the run's join key when this user has it (read anew on every connect: a restarted
    /// coordinator has a new one).
    func connect() throws -> ZMQSocket {
        let endpoint = options.endpoint
        let s = try ZMQSocket(context, .dealer)
        var curve = options.curve
        joinKey = nil
        ownLocalSocket = WorkerClient.isOwnLocalSocket(endpoint)
        if curve == nil, let path = options.joinKeyPath ?? JoinKey.path(endpoint: endpoint) {
            do {
                if let key = try JoinKey.read(path) {
                    curve = (key.worker, key.serverPublic)
                    joinKey = key
                } else if options.joinKeyPath != nil {
                    log("no join key at \(path) yet: connecting without one")
                }
            } catch { log("cannot use the join key: \(error)") }
        }
        if let c = curve { s.curveClient(c.keys, serverKey: c.serverKey) }
        // Stop the old socket's monitor before its reader goes: libzmq's I/O thread sends monitor
        // events blocking, and with no reader it would hang there, taking every socket with it.
        if monitor != nil { zmq_socket_monitor(socket.raw, nil, 0) }
        let monitorEndpoint = "inproc://lockstep-worker-monitor-\(UUID().uuidString)"
        if zmq_socket_monitor(s.raw, monitorEndpoint, WorkerClient.monitorEvents) == 0 {
            let m = try ZMQSocket(context, .pair)
            try m.connect(monitorEndpoint)
            monitor = m
        }
        connected = false
        connectedSinceReconnect = false
        s.setInt(ZMQ_IMMEDIATE, 1)       // queue nothing for a coordinator that is not there
        s.setInt(ZMQ_SNDHWM, 16)
        s.setInt64(ZMQ_MAXMSGSIZE, Int64(WireLimits.workerMessageBytes))
        s.setInt(ZMQ_RECONNECT_IVL, 100)
        try s.connect(endpoint)
        return s
    }

    static let monitorEvents = ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_HANDSHAKE_SUCCEEDED
        | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH

    /// Without keys of its own or the run's join key, the peer is unauthenticated: only `--insecure`
    /// talks to it. A local socket (`ipc://`) that is this user's own socket file is the
    /// coordinator's proof: only this user (or root) could have made it there.
    var unauthenticated: Bool { options.curve == nil && joinKey == nil && !options.insecure && !ownLocalSocket }

    /// Whether the endpoint is an `ipc://` socket file (not a link) owned by this process's user,
    /// looked at once per connection (`connect`), not per message.
    static func isOwnLocalSocket(_ endpoint: String) -> Bool {
        guard endpoint.hasPrefix("ipc://") else { return false }
        var st = stat()
        return lstat(String(endpoint.dropFirst(6)), &st) == 0 && (st.st_mode & S_IFMT) == S_IFSOCK && st.st_uid == getuid()
    }

    /// Failed handshakes in a row after which a worker stops trying (a refusal, not a hiccup).
    static let handshakeAttempts = 3

    /// Reads the monitor's events; returns an exit code when the coordinator refuses this worker.
    func onMonitorEvents() throws -> Int32? {
        while let monitor, let frames = monitor.receive(), let f = frames.first, f.count >= 6 {
            let event = Int32(UInt16(f[0]) | UInt16(f[1]) << 8)
            let value = UInt32(f[2]) | UInt32(f[3]) << 8 | UInt32(f[4]) << 16 | UInt32(f[5]) << 24
            var failed: String? = nil
            switch event {
            case ZMQ_EVENT_CONNECTED:
                connected = true; connectedSinceReconnect = true
            case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
                handshakeFailures = 0; handshakeReason = nil
                if unauthenticated {
                    log("left \(options.endpoint): it let this worker in without authentication, and a Lockstep coordinator on loopback admits only workers holding its join key (unless started with --insecure)\nHINT: if you started that coordinator with --insecure, pass --insecure here too; otherwise another program listens there: check the address, and start the worker as the coordinator's user")
                    return 2
                }
            case ZMQ_EVENT_DISCONNECTED:
                connected = false
            case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
                failed = "the coordinator refused this worker's key (status \(value)): it is not on the coordinator's allow-list"
            case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL where Int32(bitPattern: value) == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                failed = options.curve == nil && joinKey == nil
                    ? "the coordinator requires authentication and this worker has no key for it"
                    : "the coordinator does not use CURVE but this worker does"
            case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL, ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                failed = "the CURVE handshake failed (error 0x\(String(value, radix: 16))): this worker does not hold the coordinator's server key"
            default: break
            }
            guard var failed else { continue }
            if options.curve == nil && joinKey == nil { failed = "the coordinator requires authentication and this worker has no key for it" }
            handshakeFailures += 1
            handshakeReason = failed
            // Without keys of its own, a worker looks again for the run's join key: a coordinator
            // started a moment ago may have written it since, or a restarted one a new one.
            if options.curve == nil, let path = options.joinKeyPath ?? JoinKey.path(endpoint: options.endpoint),
               let now = try? JoinKey.read(path), now != joinKey {
                log(joinKey == nil ? "the coordinator's join key is there now: connecting with it"
                    : "the coordinator's join key has changed (a new coordinator on \(options.endpoint)): reconnecting with it")
                handshakeFailures = 0
                socket = try connect()
                return nil
            }
            let final = handshakeFailures >= WorkerClient.handshakeAttempts || (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH && options.curve != nil)
            guard final else { continue }
            let hint: String
            if options.curve != nil {
                hint = "check --server-key (the coordinator's .pub) and that this worker's public key is on the coordinator's --allow list"
            } else if joinKey != nil {
                hint = "the join key in \(options.joinKeyPath ?? JoinKey.path(endpoint: options.endpoint) ?? "?") is not this coordinator's: start the worker after the coordinator, as the same user"
            } else {
                hint = "run the worker as the same user as the coordinator (it then reads the run's join key from \(JoinKey.directory)), pass --join-key FILE, or use CURVE keys (--curve-keys, --server-key)"
            }
            log("refused by the coordinator at \(options.endpoint): \(failed)\nHINT: \(hint)")
            return 2
        }
        return nil
    }

    func send(_ m: Message) {
        if socket.send(m.encode(), dontWait: true) { lastSent = monotonicSeconds() }
    }

    /// This process's random id, fixed for its life (hello's incarnation).
    public var incarnation: UInt64 { helloBase.incarnation }

    /// Set with exit code 3: the coordinator's BLAS kernel, which this CPU can run; the caller
    /// re-executes the worker with it (`OPENBLAS_CORETYPE`), since OpenBLAS picks its kernel at load.
    public internal(set) var pinKernel: String?
    public static let pinEnvironment = "LOCKSTEP_PINNED_KERNEL"

    /// Works until told to stop (returns 0), refused (returns 2), or asked to pin the
    /// coordinator's kernel (returns 3, with `pinKernel`).
    /// A finished shard that is not part of a block, or its block's sum once every shard of it
    /// is in (added in the block's subtree order: the coordinator's tree gives the same bits);
    /// nil while the block waits for its other shards.
    func collectBlock(_ r: ShardResult) -> ShardResult? {
        guard r.step == blockStep, r.counts == nil, r.sharedGradient == nil, let block = blockOf[r.shard] else { return r }
        blockParts[block.lowerBound, default: [:]][r.shard] = r
        guard let parts = blockParts[block.lowerBound], parts.count == block.count else { return nil }
        blockParts[block.lowerBound] = nil
        let ordered = block.map { parts[$0]! }
        let grad = TreeSum.reduceInPlace(ordered.map(\.grad))
        return ShardResult(step: r.step, shard: block.lowerBound, lossSum: TreeSum.reduce(ordered.map(\.lossSum)),
                           frames: ordered.reduce(0) { $0 + $1.frames }, weightSum: TreeSum.reduce(ordered.map(\.weightSum)), grad: grad,
                           computeSeconds: ordered.reduce(0) { $0 + $1.computeSeconds }, span: block.count)
    }

    public func run() throws -> Int32 {
        log("connecting to \(options.endpoint) (numerics \(hello.fingerprint))")
        send(.hello(hello))
        while true {
            if let parent = options.parentPid, getppid() != parent { log("parent process is gone: exiting"); return 0 }
            let own = [socket, done] + [monitor].compactMap { $0 }
            // A relay answers as soon as its workers do: it waits less between looks.
            let ready = ZMQSocket.poll(own + (relay?.sockets ?? []), timeout: Timing.heartbeatInterval / (relay == nil ? 2 : 10))
            if own.count > 2 && ready[2], let code = try onMonitorEvents() { return code }
            if ready[1] {
                while done.receive() != nil {}
                lock.lock(); let out = finished; finished = []; lock.unlock()
                for r in out.compactMap({ collectBlock($0) }) { sendResult(r) }
            }
            if let relay { for r in try relay.serve(ready[own.count...]) { sendResult(r) } }
            if ready[0] {
                while let frames = socket.receiveFrames() {
                    // An unauthenticated peer's bytes are never decoded (the monitor ends this worker).
                    if unauthenticated { continue }
                    lastHeard = monotonicSeconds()
                    let m: Message
                    do { m = try Message.decode(frames, limits: limits) } catch {
                        log("rejected a message from the coordinator: \(error)")
                        continue
                    }
                    if let code = try onMessage(m) { return code }
                }
            }
            let now = monotonicSeconds()
            // Until welcomed, repeat hello: the first may have left before the connection was up.
            if now - lastSent >= Timing.heartbeatInterval { send(welcome == nil ? .hello(hello) : .heartbeat) }
            if now - lastHeard > Timing.liveness {
                let why: String
                if !connectedSinceReconnect {
                    why = "nothing answers at \(options.endpoint) (no coordinator there yet, or it is gone)"
                } else if let handshakeReason {
                    why = "connected to \(options.endpoint) but \(handshakeReason)"
                } else if welcome == nil {
                    why = "connected to \(options.endpoint) but not welcomed"
                } else {
                    why = "the coordinator at \(options.endpoint) is gone" + (connected ? " silent" : " (its connection closed)")
                }
                log(String(format: "%@ for %.1fs: reconnecting in %.2fs", why, now - lastHeard, backoff))
                try pause(backoff)
                backoff = min(backoff * 2, Timing.reconnectMaximum)
                socket = try connect()
                lastHeard = monotonicSeconds()
                weightsStep = nil
                welcome = nil
                shared = nil  // a coordinator that comes back maps new memory; this ends any wait on the old
                send(.hello(hello))
            }
        }
    }

    /// A result to the coordinator; a gradient frame goes out zero-copy.
    func sendResult(_ r: ShardResult) {
        if r.sharedGradient != nil || r.counts != nil {
            send(.result(r))
            return
        }
        var frames = Message.result(ShardResult(step: r.step, shard: r.shard, lossSum: r.lossSum, frames: r.frames, weightSum: r.weightSum,
                                                grad: FloatBuffer(count: 0), computeSeconds: r.computeSeconds, span: r.span)).encode()
        frames.removeLast()
        if socket.send(parts: frames.map { .bytes($0) } + [.floats(r.grad)], dontWait: true) { lastSent = monotonicSeconds() }
    }

    /// Waits `seconds` before reconnecting; a relay keeps serving its workers meanwhile (their
    /// answers wait in it until the coordinator asks again), so they do not take it for dead.
    func pause(_ seconds: Double) throws {
        guard let relay else { Thread.sleep(forTimeInterval: seconds); return }
        let until = monotonicSeconds() + seconds
        while case let left = until - monotonicSeconds(), left > 0 {
            _ = try relay.serve(ZMQSocket.poll(relay.sockets, timeout: min(left, 0.05))[...])
        }
    }

    /// Maps the welcome's shared weights and makes this worker's gradient slots when it said it
    /// can; on failure says hello again without that claim, so both go over the socket.
    func openShared(_ w: Welcome) {
        shared = nil
        guard hello.sharedMemory, !w.sharedWeights.isEmpty else { gradients = nil; return }
        let count = ParameterLayout(w.model).count
        do {
            shared = try SharedSlots(opening: w.sharedWeights, magic: SharedSlots.weightsMagic, token: w.sharedToken,
                                     slots: SharedSlots.weightSlots, floats: count)
            if gradients?.slots != w.maxShards || gradients?.floats != count {
                gradients = try SharedSlots(creating: SharedSlots.gradientsMagic, slots: w.maxShards, floats: count, what: "gradients")
            }
            log("reading the weights from the coordinator's shared memory, writing gradients to \(gradients!.path)")
        } catch {
            log("cannot share memory with the coordinator (\(error)): weights and gradients go over the socket")
            shared = nil
            gradients = nil
            sharedFailed = true
            send(.hello(hello))
        }
    }
}
