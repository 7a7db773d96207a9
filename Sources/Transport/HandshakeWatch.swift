import CZMQ
import ClusterProtocol
import Foundation

/// Names the peer behind a failed CURVE handshake (wrong server key, no key), which ZAP never
/// sees. libzmq 4.3's v1 monitor reports such failures with the *listening* endpoint only, but it
/// reports each accepted connection's descriptor, and one I/O thread emits a connection's events
/// in order: accepted(fd) … handshake failed … disconnected(fd). So the peer address is read
/// from the descriptor on `accepted`, and reported on the `disconnected` that follows a failure.
/// Pure: the shell passes in each event and the address it read.
public struct HandshakeWatch: Sendable {
    /// Where a connection came from: `host` alone keys the log's rate limit.
    public struct Peer: Equatable, Sendable {
        public var host: String
        public var port: String?
        public var description: String { port.map { host.contains(":") ? "[\(host)]:\($0)" : "\(host):\($0)" } ?? host }
    }

    public struct Failure: Equatable, Sendable {
        public var peer: Peer
        public var reason: String
    }

    var peers: [UInt32: Peer] = [:]
    var pendingReason: String? = nil

    public init() {}

    /// Feeds one monitor event; returns a failure to log when a failed connection closes.
    public mutating func on(event: UInt16, value: UInt32, peer: Peer? = nil) -> Failure? {
        switch Int32(event) {
        case ZMQ_EVENT_ACCEPTED:
            peers[value] = peer ?? Peer(host: "an address that could not be read (the connection closed first)")
        case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL, ZMQ_EVENT_HANDSHAKE_FAILED_AUTH, ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            pendingReason = HandshakeWatch.reason(event: Int32(event), value: value)
        case ZMQ_EVENT_DISCONNECTED:
            let peer = peers.removeValue(forKey: value)
            if let reason = pendingReason {
                pendingReason = nil
                return Failure(peer: peer ?? Peer(host: "an unknown address"), reason: reason)
            }
        default:
            break
        }
        return nil
    }

    static func reason(event: Int32, value: UInt32) -> String {
        switch (event, Int32(bitPattern: value)) {
        case (ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL, ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH):
            return "it offered no CURVE key (give the worker --curve-keys and --server-key)"
        case (ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL, ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC):
            return "its handshake could not be decrypted: it holds the wrong server key (give it this coordinator's .pub as --server-key)"
        case (ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL, _):
            return "ZMTP protocol error 0x\(String(value, radix: 16))"
        case (ZMQ_EVENT_HANDSHAKE_FAILED_AUTH, _):
            return "authentication refused (status \(value))"
        default:
            return "the connection dropped during the handshake"
        }
    }

    /// The monitor events this watch needs.
    public static let events = ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL
        | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH
}

/// The IO side of `HandshakeWatch`: a thread that blocks on the socket monitor, so that it reads
/// an accepted connection's address before a failing handshake closes it (a busy main loop
/// would often be too late). Failures queue up for the main loop to log, and so do closed
/// connections: the kernel tells ZeroMQ at once when a process dies, and its worker is released
/// then rather than after the liveness window.
final class HandshakeMonitor {
    private let socket: ZMQSocket
    private let lock = NSLock()
    private var failures: [HandshakeWatch.Failure] = []
    private var closed: [Int32] = []
    private var stopped = false
    private var thread: Thread?
    static let queueLimit = 10_000  // failures waiting for the main loop to log them

    init(context: ZMQContext, watching target: ZMQSocket) throws {
        let ep = "inproc://lockstep-monitor-\(UUID().uuidString)"
        guard zmq_socket_monitor(target.raw, ep, HandshakeWatch.events) == 0 else { throw ZMQError.last("zmq_socket_monitor") }
        socket = try ZMQSocket(context, .pair)
        socket.setInt(ZMQ_RCVTIMEO, 200)  // milliseconds: how soon the thread notices stop()
        try socket.connect(ep)
        let t = Thread { [self] in loop() }
        t.name = "lockstep.handshake-monitor"
        thread = t
        t.start()
    }

    /// Failures seen since the last call.
    func drain() -> [HandshakeWatch.Failure] {
        lock.lock(); defer { lock.unlock() }
        let out = failures
        failures = []
        return out
    }

    /// Descriptors of connections closed since the last call (a dead worker's, at once).
    func drainClosed() -> [Int32] {
        lock.lock(); defer { lock.unlock() }
        let out = closed
        closed = []
        return out
    }

    func stop() { lock.lock(); stopped = true; lock.unlock() }

    private func loop() {
        var watch = HandshakeWatch()
        while true {
            lock.lock(); let done = stopped; lock.unlock()
            if done { return }
            guard let frames = socket.receive(wait: true) else {
                if zmq_errno() == ETERM { return }
                continue
            }
            guard frames[0].count >= 6 else { continue }
            let f = frames[0]
            let event = UInt16(f[0]) | UInt16(f[1]) << 8
            let value = UInt32(f[2]) | UInt32(f[3]) << 8 | UInt32(f[4]) << 16 | UInt32(f[5]) << 24
            let peer = Int32(event) == ZMQ_EVENT_ACCEPTED ? peerAddress(fd: Int32(bitPattern: value)) : nil
            if Int32(event) == ZMQ_EVENT_DISCONNECTED {
                lock.lock()
                if closed.count < HandshakeMonitor.queueLimit { closed.append(Int32(bitPattern: value)) }
                lock.unlock()
            }
            if let failure = watch.on(event: event, value: value, peer: peer) {
                lock.lock()
                if failures.count < HandshakeMonitor.queueLimit { failures.append(failure) }  // a flood while the main loop is busy
                lock.unlock()
            }
        }
    }
}

/// The peer of a connected socket, or nil.
func peerAddress(fd: Int32) -> HandshakeWatch.Peer? {
    var storage = sockaddr_storage()
    var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
    let rc = withUnsafeMutablePointer(to: &storage) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &len) }
    }
    guard rc == 0 else { return nil }
    if Int32(storage.ss_family) == AF_UNIX { return HandshakeWatch.Peer(host: "a local socket (ipc)") }
    var host = [CChar](repeating: 0, count: Int(NI_MAXHOST)), port = [CChar](repeating: 0, count: Int(NI_MAXSERV))
    let gr = withUnsafePointer(to: &storage) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            getnameinfo($0, len, &host, socklen_t(host.count), &port, socklen_t(port.count), NI_NUMERICHOST | NI_NUMERICSERV)
        }
    }
    guard gr == 0 else { return nil }
    return HandshakeWatch.Peer(host: String(cString: host), port: String(cString: port))
}

/// Decides which of many similar log lines to write: per key at most one line per `window`
/// seconds, and at most `linesPerWindow` lines per window in all; a written line says how many
/// were held back since the last one for its key. Pure, and bounded in memory.
public struct RateLimitedLog: Sendable {
    public let window: Double
    public let linesPerWindow: Int
    static let keysTracked = 1024
    var lastWritten: [String: Double] = [:]
    var heldBack: [String: Int] = [:]
    var windowStart = -Double.infinity
    var linesInWindow = 0
    public private(set) var suppressed = 0

    public init(window: Double, linesPerWindow: Int) {
        self.window = window
        self.linesPerWindow = linesPerWindow
    }

    /// The line to write for this event, or nil to hold it back.
    public mutating func line(key: String, now: Double, what: String) -> String? {
        if now - windowStart >= window { windowStart = now; linesInWindow = 0 }
        if lastWritten.count >= RateLimitedLog.keysTracked && lastWritten[key] == nil {
            lastWritten = lastWritten.filter { now - $0.value < window }
            heldBack = heldBack.filter { lastWritten[$0.key] != nil }
        }
        let recent = lastWritten[key].map { now - $0 < window } ?? false
        guard !recent, linesInWindow < linesPerWindow, lastWritten.count < RateLimitedLog.keysTracked || lastWritten[key] != nil else {
            heldBack[key, default: 0] += 1
            suppressed += 1
            return nil
        }
        lastWritten[key] = now
        linesInWindow += 1
        let held = heldBack.removeValue(forKey: key) ?? 0
        return what + (held > 0 ? " (and \(held) more from it not logged)" : "")
            + (linesInWindow == linesPerWindow ? "; further such lines are held back for \(Int(window)) s" : "")
    }
}
