import ClusterProtocol
import CZMQ
import Foundation
import Numerics

/// The thin part of the shell: libzmq sockets with multipart send and receive.
public final class ZMQContext: @unchecked Sendable {
    let raw: UnsafeMutableRawPointer
    /// `ioThreads` > 1 lets ZeroMQ serve different connections on different I/O threads. It does
    /// not guarantee parallel sends: libzmq picks the thread, and a trace showed two local workers'
    /// weights still going out one after the other.
    public init(ioThreads: Int32 = 1) {
        raw = zmq_ctx_new()
        if ioThreads != 1 { zmq_ctx_set(raw, ZMQ_IO_THREADS, ioThreads) }
    }
    deinit { zmq_ctx_term(raw) }
}

public struct ZMQError: Error, CustomStringConvertible {
    public let description: String
    static func last(_ what: String) -> ZMQError { ZMQError(description: "\(what): \(String(cString: zmq_strerror(zmq_errno())))") }
}

public final class ZMQSocket {
    public enum Kind { case router, dealer, pair, rep }
    let raw: UnsafeMutableRawPointer
    let context: ZMQContext
    /// The descriptor of the connection the last received message came from (`ZMQ_SRCFD`):
    /// with the monitor's `disconnected(fd)` it tells which peer's connection closed.
    public private(set) var lastSourceDescriptor: Int32 = -1

    public init(_ context: ZMQContext, _ kind: Kind) throws {
        self.context = context
        let t: Int32 = switch kind { case .router: ZMQ_ROUTER; case .dealer: ZMQ_DEALER; case .pair: ZMQ_PAIR; case .rep: ZMQ_REP }
        guard let s = zmq_socket(context.raw, t) else { throw ZMQError.last("zmq_socket") }
        raw = s
        setInt(ZMQ_LINGER, 0)
    }

    deinit { zmq_close(raw) }

    @discardableResult
    public func setInt(_ option: Int32, _ value: Int32) -> Bool {
        var v = value
        return zmq_setsockopt(raw, option, &v, MemoryLayout<Int32>.size) == 0
    }

    public func setInt64(_ option: Int32, _ value: Int64) {
        var v = value
        zmq_setsockopt(raw, option, &v, MemoryLayout<Int64>.size)
    }

    public func bind(_ endpoint: String) throws {
        guard zmq_bind(raw, endpoint) == 0 else { throw ZMQError.last("cannot bind \(endpoint)") }
    }

    public func connect(_ endpoint: String) throws {
        guard zmq_connect(raw, endpoint) == 0 else { throw ZMQError.last("cannot connect to \(endpoint)") }
    }

    /// The endpoint actually bound (resolves a `*` port).
    public var lastEndpoint: String {
        var buf = [CChar](repeating: 0, count: 256)
        var len = buf.count
        zmq_getsockopt(raw, ZMQ_LAST_ENDPOINT, &buf, &len)
        return String(cString: buf)
    }

    /// Sends all frames as one message. Returns false when it would block (`dontWait`).
    @discardableResult
    public func send(_ frames: [[UInt8]], dontWait: Bool = false) -> Bool {
        send(parts: frames.map { .bytes($0) }, dontWait: dontWait)
    }

    /// A frame to send: bytes (copied by ZeroMQ) or a float buffer sent without a copy.
    public enum Part {
        case bytes([UInt8])
        /// ZeroMQ holds a reference until its I/O thread has sent it: the buffer must not change.
        case floats(FloatBuffer)
    }

    /// Sends the parts as one message.
    @discardableResult
    public func send(parts: [Part], dontWait: Bool = false) -> Bool {
        for (i, part) in parts.enumerated() {
            var flags: Int32 = i < parts.count - 1 ? ZMQ_SNDMORE : 0
            if dontWait { flags |= ZMQ_DONTWAIT }
            switch part {
            case .bytes(let f):
                if f.withUnsafeBytes({ zmq_send(raw, $0.baseAddress, f.count, flags) }) < 0 { return false }
            case .floats(let buffer):
                var msg = zmq_msg_t()
                let hint = Unmanaged.passRetained(buffer).toOpaque()
                zmq_msg_init_data(&msg, buffer.ptr, buffer.count * 4, { _, hint in
                    Unmanaged<FloatBuffer>.fromOpaque(hint!).release()
                }, hint)
                if zmq_msg_send(&msg, raw, flags) < 0 {
                    zmq_msg_close(&msg)  // runs the free function: the reference is dropped
                    return false
                }
            }
        }
        return true
    }

    /// Receives one whole message (all its frames), or nil when none is waiting. Frames past
    /// `maxFrames` are read and dropped (one extra empty frame marks the message as too long),
    /// so a peer cannot grow memory by sending many frames.
    public func receive(maxFrames: Int = 16, wait: Bool = false) -> [[UInt8]]? {
        receiveFrames(maxFrames: maxFrames, wait: wait, floatsFrom: nil)?.map(\.bytes)
    }

    /// The same, with every frame of at least `floatsFrom` bytes (a multiple of 4) kept as a
    /// `FloatBuffer` over ZeroMQ's own copy: weights and gradients reach the math without a copy.
    public func receiveFrames(maxFrames: Int = 16, wait: Bool = false, floatsFrom: Int? = 1 << 16) -> [Frame]? {
        var frames: [Frame] = []
        var parts = 0
        while true {
            let msg = UnsafeMutablePointer<zmq_msg_t>.allocate(capacity: 1)
            zmq_msg_init(msg)
            func close() { zmq_msg_close(msg); msg.deallocate() }
            let rc = zmq_msg_recv(msg, raw, parts == 0 && !wait ? ZMQ_DONTWAIT : 0)
            if rc < 0 { close(); return frames.isEmpty ? nil : frames }
            // A ROUTER makes the routing-id frame itself, which may carry no descriptor; the body's does.
            if parts == 0 { lastSourceDescriptor = zmq_msg_get(msg, ZMQ_SRCFD) }
            if parts == 1 && lastSourceDescriptor < 0 { lastSourceDescriptor = zmq_msg_get(msg, ZMQ_SRCFD) }
            parts += 1
            let size = zmq_msg_size(msg)
            let more = zmq_msg_more(msg) != 0
            let data = zmq_msg_data(msg)
            if parts > maxFrames + 1 {
                close()  // dropped: the message is refused anyway
            } else if parts == maxFrames + 1 {
                frames.append(.bytes([]))
                close()
            } else if let data, let min = floatsFrom, size >= min, size % 4 == 0, Int(bitPattern: data) % 4 == 0 {
                frames.append(.floats(FloatBuffer(borrowing: data.assumingMemoryBound(to: Float.self), count: size / 4, release: close)))
            } else {
                frames.append(.bytes(data.map { Array(UnsafeRawBufferPointer(start: $0, count: size)) } ?? []))
                close()
            }
            if !more { return frames }
        }
    }

    /// Waits up to `timeout` seconds for any of `sockets` to be readable; returns which are.
    public static func poll(_ sockets: [ZMQSocket], timeout: Double) -> [Bool] {
        var items = sockets.map { zmq_pollitem_t(socket: $0.raw, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0) }
        let rc = zmq_poll(&items, Int32(items.count), max(0, Int(timeout * 1000)))
        if rc <= 0 { return sockets.map { _ in false } }
        return items.map { ($0.revents & Int16(ZMQ_POLLIN)) != 0 }
    }
}
