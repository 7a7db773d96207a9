import CFutex
import ClusterProtocol
import Formats
import Foundation
import Numerics
import Training

/// Weights and gradients in shared memory between the coordinator and workers on its host.
///
/// A step's weights, and each shard's gradient, are 2.2 MiB on the standard config. Over the
/// local socket each copy costs a sender's and a receiver's I/O thread about 1 ms while every
/// core waits at the step barrier. Instead:
/// - the coordinator writes each step's weights once into a mapping of two slots (step `s` in
///   slot `s % 2`) that local workers read in place; the work message only names the step;
/// - a local worker computes each shard's gradient straight into its own mapping, one slot per
///   shard index, and the result message names the slot.
///
/// A step's work goes out while the coordinator's optimizer is still computing its weights: a
/// worker's compute thread waits on the slot's stamp (busy for `Timing.barrierSpin`, then asleep
/// on a futex) and the publisher wakes it.
///
/// Why reuse is safe: the weights slot of step `s` is rewritten at step `s + 2`, which needs every
/// shard of step `s + 1` done, so whoever still reads it computes a stale step whose result is
/// dropped. A worker rewrites gradient slot `k` only for shard `k` of a later step, which it
/// starts only once that step's weights are published, after the coordinator has reduced this
/// one; a shard computed twice in one step writes the same bits.
///
/// Each slot is page-aligned: a 64-byte header (magic, token, float count, step stamp) and
/// the floats. A file is created 0600 in `/dev/shm` and unlinked at once; the other side opens
/// it through `/proc/<pid>/fd/<fd>`, so nothing is left behind when a process dies.
public final class SharedSlots: @unchecked Sendable {
    public static let weightsMagic: UInt64 = 0x5448_4757_5453_4B4C    // "LKSTWGHT"
    public static let gradientsMagic: UInt64 = 0x5344_4152_4753_4B4C  // "LKSGRADS"
    static let headerBytes = 64

    public let path: String
    public let token: UInt64
    public let slots: Int
    public let floats: Int
    let slotBytes: Int
    let base: UnsafeMutableRawPointer
    let fd: Int32?

    static func slotBytes(floats: Int) -> Int {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        return (headerBytes + 4 * floats + page - 1) / page * page
    }

    /// Creates a fresh mapping of `slots` slots of `floats` floats, every stamp −1.
    public init(creating magic: UInt64, slots: Int, floats: Int, what: String) throws {
        self.slots = slots
        self.floats = floats
        slotBytes = SharedSlots.slotBytes(floats: floats)
        let name = "/dev/shm/lockstep-\(what)-\(getpid())-\(UUID().uuidString.prefix(8))"
        let fd = open(name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw LockstepError("cannot create \(name): \(String(cString: strerror(errno)))") }
        unlink(name)
        let bytes = slotBytes * slots
        guard ftruncate(fd, off_t(bytes)) == 0,
              let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw LockstepError("cannot map \(bytes) bytes of shared memory for \(what): \(reason)")
        }
        self.fd = fd
        base = p
        path = "/proc/\(getpid())/fd/\(fd)"
        token = UInt64.random(in: 1...UInt64.max)
        for slot in 0..<slots {
            let h = header(slot)
            h[0] = Int64(bitPattern: magic); h[1] = Int64(bitPattern: token); h[2] = Int64(floats); h[3] = -1
        }
    }

    /// Opens another process's mapping read-only and checks that it is the one described
    /// (magic, token, size); throws with the reason otherwise.
    public init(opening path: String, magic: UInt64, token: UInt64, slots: Int, floats: Int) throws {
        self.path = path
        self.token = token
        self.slots = slots
        self.floats = floats
        slotBytes = SharedSlots.slotBytes(floats: floats)
        // Only a /proc/<pid>/fd/<fd> path names a mapping; O_NONBLOCK so a FIFO cannot hang us.
        let parts = path.split(separator: "/")
        guard parts.count == 4, parts[0] == "proc", parts[2] == "fd", Int(parts[1]) != nil, Int(parts[3]) != nil else {
            throw LockstepError("\(path) is not a /proc/PID/fd/FD path")
        }
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw LockstepError("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        let bytes = slotBytes * slots
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, Int(st.st_size) == bytes else {
            throw LockstepError("\(path) is not a shared mapping of \(bytes) bytes")
        }
        guard let p = mmap(nil, bytes, PROT_READ, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw LockstepError("cannot map \(path): \(String(cString: strerror(errno)))")
        }
        base = p
        self.fd = nil
        for slot in 0..<slots {
            let h = header(slot)
            guard UInt64(bitPattern: h[0]) == magic, UInt64(bitPattern: h[1]) == token, h[2] == Int64(floats) else {
                munmap(p, bytes)
                throw LockstepError("\(path) holds another run's or another kind of data (magic, token or size differ)")
            }
        }
    }

    deinit {
        munmap(base, slotBytes * slots)
        if let fd { close(fd) }
    }

    func header(_ slot: Int) -> UnsafeMutablePointer<Int64> {
        (base + slot * slotBytes).assumingMemoryBound(to: Int64.self)
    }

    /// The step whose data `slot` holds (−1: none, or being written).
    public func stamp(_ slot: Int) -> Int { Int(header(slot)[3]) }

    public func setStamp(_ slot: Int, _ step: Int) { header(slot)[3] = Int64(step) }

    /// The slot's floats in place; the buffer keeps this mapping alive.
    public func view(_ slot: Int) -> FloatBuffer {
        let p = (base + slot * slotBytes + SharedSlots.headerBytes).assumingMemoryBound(to: Float.self)
        return FloatBuffer(borrowing: p, count: floats, release: { withExtendedLifetime(self) {} })
    }

    /// Writes `data` as `step`'s: stamp −1, the floats, then the stamp.
    func publish(_ slot: Int, step: Int, _ data: FloatBuffer) {
        precondition(data.count == floats)
        setStamp(slot, -1)
        (base + slot * slotBytes + SharedSlots.headerBytes).copyMemory(from: data.ptr, byteCount: 4 * floats)
        setStamp(slot, step)
    }

    // Weights: two slots, step s in slot s % 2.
    public static let weightSlots = 2
    static func weightSlot(_ step: Int) -> Int { step % weightSlots }

    /// Writes `params` as the weights of `step` and wakes every worker waiting for them.
    public func publishWeights(step: Int, _ params: FloatBuffer) {
        let slot = SharedSlots.weightSlot(step)
        publish(slot, step: step, params)
        _ = lockstep_futex_wake(stampWord(slot))
    }

    /// The stamp's low 32 bits (little-endian), the word a futex sleeps on: it changes with every stamp.
    func stampWord(_ slot: Int) -> UnsafeMutablePointer<UInt32> {
        UnsafeMutableRawPointer(header(slot) + 3).assumingMemoryBound(to: UInt32.self)
    }

    /// What a wait for a step's weights saw.
    public enum WeightsWait: Equatable, Sendable, CustomStringConvertible {
        case ready
        case stale(Int)      // the slot holds a later step: the work is out of date
        case timedOut
        case abandoned       // this mapping was let go (the worker reconnected or fell back)

        public var description: String {
            switch self {
            case .ready: return "published"
            case .stale(let s): return "the slot holds step \(s) now"
            case .timedOut: return "not published in time"
            case .abandoned: return "the mapping was let go"
            }
        }
    }

    /// Waits until the slot of `step` holds that step's weights, a later step's, the mapping is
    /// abandoned, or `timeout` seconds pass: busy for the first `spin` seconds (yielding the core
    /// to anything runnable), then asleep on the stamp, which the publisher wakes; asleep, it
    /// also looks every `recheck` seconds.
    public func awaitWeights(step: Int, timeout: Double, spin: Double = 0, recheck: Double = 0.1) -> WeightsWait {
        let slot = SharedSlots.weightSlot(step)
        let started = monotonicSeconds()
        if spin > 0 { _ = self.spin(untilWeightsOf: step, for: min(spin, timeout)) { true } }
        while true {
            let stamp = self.stamp(slot)
            if stamp == step { return .ready }
            if stamp > step { return .stale(stamp) }
            if isAbandoned { return .abandoned }
            let elapsed = monotonicSeconds() - started
            if elapsed >= timeout { return .timedOut }
            // A publish between the read above and this call changes the word: the wait returns at once.
            _ = lockstep_futex_wait(stampWord(slot), UInt32(truncatingIfNeeded: stamp), Int64(min(timeout - elapsed, recheck) * 1e9))
        }
    }

    /// Busy-waits (yielding) until `step`'s weights are published, `keepGoing` turns false, or
    /// `seconds` pass. Returns the seconds spent.
    public func spin(untilWeightsOf step: Int, for seconds: Double, while keepGoing: () -> Bool) -> Double {
        let slot = SharedSlots.weightSlot(step)
        let started = monotonicSeconds()
        var now = started
        while stamp(slot) < step && !isAbandoned && keepGoing() && now - started < seconds {
            sched_yield()
            now = monotonicSeconds()
        }
        return now - started
    }

    private let abandonLock = NSLock()
    private var abandonedFlag = false
    var isAbandoned: Bool { abandonLock.withLock { abandonedFlag } }

    /// Ends every wait on this mapping within 0.1 s (its owner has let it go).
    public func abandon() { abandonLock.withLock { abandonedFlag = true } }

    /// The step whose weights the slot of `step` holds now (−1: none yet, or being written).
    public func weightsStamp(step: Int) -> Int { stamp(SharedSlots.weightSlot(step)) }

    /// The slot of `step` in place, whatever it holds now (see `awaitWeights`).
    public func weightsView(step: Int) -> FloatBuffer { view(SharedSlots.weightSlot(step)) }

    /// The weights of `step` read in place, or nil when its slot holds another step.
    public func weights(step: Int) -> FloatBuffer? { weightsStamp(step: step) == step ? weightsView(step: step) : nil }
}
