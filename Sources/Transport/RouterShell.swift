import CZMQ
import ClusterProtocol
import Formats
import Foundation
import Numerics
import Training

/// The socket workers join, for a coordinator and for a relay: one ROUTER, its authentication
/// (CURVE with an allow-list, or a per-run join key on loopback), its handshake monitor, and
/// the decoding of what arrives. Malformed messages are counted and logged, rate-limited,
/// never passed on.
public final class RouterShell {
    let socket: ZMQSocket
    var zap: ZAPHandler?
    var monitor: HandshakeMonitor?
    public private(set) var endpoint: String
    public private(set) var rejected = 0
    var bytesSent = 0
    var bytesReceived = 0
    let log: (String) -> Void
    /// Malformed messages are logged at most once per peer per window, and only so many lines per
    /// window in all: a flood of garbage cannot flood the log.
    var rejectionLog = RateLimitedLog(window: 10, linesPerWindow: 20)
    /// Failed handshakes repeat on every reconnect of a misconfigured worker: one line per peer
    /// host and reason per window, with a count.
    var handshakeFailures: [String: Int] = [:]
    var handshakeLoggedAt: [String: Double] = [:]
    static let handshakeLogWindow = 10.0  // seconds
    static let handshakeHostsTracked = 1024
    /// Which connection (descriptor) each worker's messages last came on.
    var peerByDescriptor: [Int32: Peer] = [:]
    /// The per-run join key and its file, removed at `close`.
    public private(set) var joinKey: (key: JoinKey, path: String)?
    var localJoinKeyPath: String?
    /// Whom the join key admits, in its log line ("workers", "relays and workers").
    let admits: String

    /// With `curve` (this endpoint's keypair and the allowed worker keys) every worker must
    /// complete a CURVE handshake with an allow-listed key before any message is read. Without
    /// it, a loopback `bind` gets a per-run `JoinKey` (unless `authenticate` is false:
    /// `--insecure`), so only this user's processes can join. `bind` nil: no TCP endpoint yet
    /// (`bindLocal` adds one). `maxMessageBytes` bounds what a peer can make this process hold.
    public init(context: ZMQContext, bind: String?, maxMessageBytes: Int, curve: (keys: CurveKeypair, allowed: [String])?,
                authenticate: Bool, bindWait: Double, admits: String = "workers", log: @escaping (String) -> Void) throws {
        self.log = log
        self.admits = admits
        socket = try ZMQSocket(context, .router)
        var join: JoinKey? = nil
        if let curve {
            zap = try ZAPHandler(context: context, allowed: curve.allowed, log: log)
            socket.curveServer(curve.keys)
        } else if authenticate, let bind, JoinKey.loopback(bind) != nil {
            let (server, key) = try JoinKey.generate()
            zap = try ZAPHandler(context: context, allowed: [key.worker.publicKey], log: log)
            socket.curveServer(server)
            join = key
        }
        // Handshake failures (wrong server key, no key) never reach ZAP, and closed connections
        // (dead workers) never reach the core: watch for both.
        monitor = try HandshakeMonitor(context: context, watching: socket)
        socket.setInt64(ZMQ_MAXMSGSIZE, Int64(maxMessageBytes))
        socket.setInt(ZMQ_SNDHWM, 64)
        socket.setInt(ZMQ_RCVHWM, 256)
        // A resumed run may find its port still held by the process it replaces (a preempted
        // job writing its last checkpoint): it waits for it, bounded.
        let deadline = monotonicSeconds() + bindWait
        var said = false
        while let bind {
            do { try socket.bind(bind); break } catch {
                let inUse = zmq_errno() == EADDRINUSE
                if inUse && monotonicSeconds() < deadline {
                    if !said { said = true; log("\(bind) is in use: waiting up to \(Int(bindWait)) s for it to be released") }
                    Thread.sleep(forTimeInterval: 0.2)
                    continue
                }
                throw LockstepError("\(error)" + (said ? " (waited \(Int(bindWait)) s)" : "")
                                    + (inUse ? ": another program (perhaps another run's coordinator) holds that port" : ""),
                                    hint: "give --bind tcp://127.0.0.1:0 (a free port, printed with the worker join command for this run), "
                                        + "or a port of your choosing; workers of this run then join with --run, so none joins another run by mistake")
            }
        }
        endpoint = bind == nil ? "" : socket.lastEndpoint
        if let join, let path = JoinKey.path(endpoint: endpoint) {
            JoinKey.removeStale()
            try join.write(to: path, endpoint: endpoint)
            joinKey = (join, path)
            log("\(admits) of this user join with the run's key in \(path) (read by `worker join` itself); other users' processes are refused")
        }
    }

    deinit { close() }

    /// Removes the join keys; stops the monitor.
    public func close() {
        // Monitor events are sent blocking from libzmq's I/O thread: stop them before their reader.
        if monitor != nil { zmq_socket_monitor(socket.raw, nil, 0) }
        monitor?.stop()
        if let joinKey {
            joinKey.key.remove(from: joinKey.path)
            if let localJoinKeyPath { joinKey.key.remove(from: localJoinKeyPath) }
            self.joinKey = nil
        }
    }

    /// Also listens on `ipc://path`; its workers need the join key too (the same CURVE).
    func bindLocal(_ path: String) throws {
        try socket.bind("ipc://" + path)
        chmod(path, 0o600)
        if endpoint.isEmpty { endpoint = "ipc://" + path }
        if let joinKey, let keyPath = JoinKey.path(endpoint: "ipc://" + path) {
            try joinKey.key.write(to: keyPath, endpoint: "ipc://" + path)
            localJoinKeyPath = keyPath
        }
    }

    /// Waits up to `timeout` seconds; serves authentication requests; true when messages wait.
    func poll(timeout: Double) -> Bool { ready(ZMQSocket.poll(sockets, timeout: timeout)[...]) }

    /// The sockets to poll: the ROUTER, then its authentication's.
    var sockets: [ZMQSocket] { [socket] + [zap?.socket].compactMap { $0 } }

    /// After a poll of `sockets`: serves authentication requests; true when messages wait.
    func ready(_ flags: ArraySlice<Bool>) -> Bool {
        if zap != nil && flags[flags.startIndex + 1] { zap!.serve() }
        logHandshakeFailures()
        return flags[flags.startIndex]
    }

    /// The peers whose connections closed since the last call.
    func closedPeers() -> [Peer] {
        guard let monitor else { return [] }
        return monitor.drainClosed().compactMap { peerByDescriptor.removeValue(forKey: $0) }
    }

    /// The next message waiting, decoded; nil when none waits. A malformed one comes back as
    /// its peer with no message (already counted and logged).
    func receive(limits: WireLimits) -> (peer: Peer, message: Message?)? {
        guard let frames = socket.receiveFrames() else { return nil }
        bytesReceived += frames.reduce(0) { $0 + $1.count }
        guard frames.count >= 2 else { rejected += 1; log("rejected a message with no body"); return (Peer([]), nil) }
        let peer = Peer(frames[0].bytes)
        let fd = socket.lastSourceDescriptor
        if fd >= 0 { peerByDescriptor[fd] = peer }
        do { return (peer, try Message.decode(Array(frames[1...]), limits: limits)) } catch {
            reject(peer, error)
            return (peer, nil)
        }
    }

    /// Counts and logs (rate-limited) a message refused from `peer`.
    func reject(_ peer: Peer, _ error: Error) {
        rejected += 1
        if let line = rejectionLog.line(key: peer.description, now: monotonicSeconds(), what: "rejected a message from \(peer): \(error)") {
            log(line)
        }
    }

    func send(_ frames: [[UInt8]]) {
        if socket.send(frames, dontWait: true) { bytesSent += frames.reduce(0) { $0 + $1.count } }
    }

    /// `m` to `peer`.
    func send(_ m: Message, to peer: Peer) { send([peer.id] + m.encode()) }

    /// `work` to `peer`, its weights carried as `carriage` says: a frame of `weights`, sent
    /// without a copy (the step's buffer is never written again), or none, or shared memory.
    func send(_ work: Work, to peer: Peer, carriage: Message.WeightsCarriage, weights: FloatBuffer) {
        let (header, sequences) = Message.encodeWork(work, weights: carriage)
        let frame = carriage == .frame ? weights : nil
        var parts: [ZMQSocket.Part] = [.bytes(peer.id), .bytes(header)]
        if let frame { parts.append(.floats(frame)) }
        parts.append(.bytes(sequences))
        if socket.send(parts: parts, dontWait: true) {
            bytesSent += peer.id.count + header.count + sequences.count + (frame?.count ?? 0) * 4
        }
    }

    /// How long closing the socket may wait for queued `stop`s to go out (milliseconds).
    static let stopLingerMilliseconds: Int32 = 2000
    /// How long the endpoint keeps reading after the `stop`s before it closes (seconds).
    static let stopGraceSeconds = 0.5

    /// Sends the `stop`s and gives them time to arrive. Closing at once lost one in about
    /// fifteen over TCP (measured with 4 workers): sockets drop unsent messages (linger 0), and
    /// closing with unread input resets the connection, which can discard a `stop` the worker has
    /// not read yet. So: linger, and drain the socket for a moment.
    func sendStops(_ stops: [Directive]) {
        socket.setInt(ZMQ_LINGER, RouterShell.stopLingerMilliseconds)
        for case .send(let peer, let m) in stops { send(m, to: peer) }
        guard !stops.isEmpty else { return }
        let until = monotonicSeconds() + RouterShell.stopGraceSeconds
        while case let left = until - monotonicSeconds(), left > 0 {
            if ZMQSocket.poll([socket], timeout: left)[0] { while socket.receiveFrames() != nil {} }
        }
    }

    func logHandshakeFailures() {
        guard let monitor else { return }
        let now = monotonicSeconds()
        for f in monitor.drain() {
            var host = f.peer.host
            // Bounded whatever the number of source addresses: beyond the cap, hosts share one count.
            if handshakeFailures.count >= RouterShell.handshakeHostsTracked && handshakeFailures[host + " " + f.reason] == nil {
                host = "other hosts"
            }
            let key = host + " " + f.reason
            handshakeFailures[key, default: 0] += 1
            guard now - handshakeLoggedAt[key, default: -.infinity] >= RouterShell.handshakeLogWindow else { continue }
            handshakeLoggedAt[key] = now
            // On loopback with a join key, a wrong server key is almost always this user's worker
            // still holding the key of the coordinator before this one (a --resume): not an attack.
            if joinKey != nil, f.peer.host.hasPrefix("127.") || f.peer.host == "::1", f.reason.contains("wrong server key") {
                log("not admitted: \(f.peer.description) holds another join key, most often a worker still holding the key of the coordinator "
                    + "before this one, which reads this one's and reconnects by itself (\(handshakeFailures[key]!) such handshake(s) so far)")
                continue
            }
            log("refused a connection from \(f.peer.description): CURVE handshake failed: \(f.reason); "
                + "\(handshakeFailures[key]!) such failure(s) from \(host) so far")
        }
    }

    /// Why `bind` is not an endpoint to listen on (the fix in a HINT), or nil.
    public static func bindProblem(_ bind: String) -> String? {
        guard bind.hasPrefix("tcp://") else { return "--bind must be a tcp:// endpoint, e.g. tcp://127.0.0.1:5555 (got \(bind))" }
        let rest = bind.dropFirst(6)
        guard let colon = rest.lastIndex(of: ":") else {
            return "--bind \(bind) has no port. HINT: add one, e.g. \(bind):5555, or :0 for a free port"
        }
        let host = rest[..<colon], port = rest[rest.index(after: colon)...]
        if host.isEmpty { return "--bind \(bind) has no host. HINT: tcp://127.0.0.1\(rest) for this machine only, or tcp://0.0.0.0\(rest) for every interface" }
        if port.isEmpty { return "--bind \(bind) has no port. HINT: add one, e.g. \(bind)5555, or \(bind)0 for a free port" }
        if port != "*", !(Int(port).map { (0...65535).contains($0) } ?? false) {
            return "--bind \(bind): port '\(port)' is not a number in 0...65535"
        }
        return nil
    }
}
