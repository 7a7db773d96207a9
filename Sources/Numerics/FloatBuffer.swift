/// A fixed-size, zero-initialised, heap-allocated `Float` array with a stable address.
///
/// The engine passes raw pointers into BLAS and fused loops; a class with one allocation
/// avoids copy-on-write and exclusivity checks on the hot path.
public final class FloatBuffer: @unchecked Sendable {
    public let count: Int
    public let ptr: UnsafeMutablePointer<Float>
    /// For memory this buffer does not own (a received message): hands it back.
    private let release: (() -> Void)?

    public init(count: Int) {
        precondition(count >= 0)
        self.count = count
        ptr = .allocate(capacity: max(count, 1))
        ptr.initialize(repeating: 0, count: max(count, 1))
        release = nil
    }

    /// A buffer whose contents the caller overwrites entirely (no zeroing: it is written next).
    public init(uninitializedCount count: Int) {
        precondition(count >= 0)
        self.count = count
        ptr = .allocate(capacity: max(count, 1))
        release = nil
    }

    /// Floats that live in someone else's memory (a received ZeroMQ message), without a copy;
    /// `release` runs when this buffer goes away. The memory must stay valid until then.
    public init(borrowing ptr: UnsafeMutablePointer<Float>, count: Int, release: @escaping () -> Void) {
        self.count = count
        self.ptr = ptr
        self.release = release
    }

    public convenience init(_ values: [Float]) {
        self.init(count: values.count)
        values.withUnsafeBufferPointer { ptr.update(from: $0.baseAddress!, count: values.count) }
    }

    deinit { if let release { release() } else { ptr.deallocate() } }

    public subscript(i: Int) -> Float {
        get { ptr[i] }
        set { ptr[i] = newValue }
    }

    public var array: [Float] { Array(UnsafeBufferPointer(start: ptr, count: count)) }

    public func zero() { ptr.update(repeating: 0, count: count) }
    public func fill(_ v: Float) { ptr.update(repeating: v, count: count) }

    public func copy(from other: FloatBuffer) {
        precondition(other.count == count, "buffer sizes differ: \(other.count) vs \(count)")
        ptr.update(from: other.ptr, count: count)
    }

    public func clone() -> FloatBuffer {
        let b = FloatBuffer(uninitializedCount: count)
        b.copy(from: self)
        return b
    }

    /// Calls `body` with the buffer's little-endian bytes (every supported host is little-endian),
    /// keeping the buffer alive for the call: a bare pointer would not keep a temporary alive.
    public func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withExtendedLifetime(self) { try body(UnsafeRawBufferPointer(start: ptr, count: count * 4)) }
    }

    /// A copy of the bytes.
    public var byteArray: [UInt8] { withBytes { Array($0) } }

    /// SHA-256 of the bytes: the identity of a weights buffer.
    public var sha256: String { withBytes { SHA256.hex($0) } }

    /// x·0 is 0 for finite x and NaN for ±inf or NaN, so one branch-free (vectorizable) sum decides.
    public var allFinite: Bool {
        var acc = SIMD8<Float>()
        var i = 0
        while i + 8 <= count {
            acc += UnsafeRawPointer(ptr + i).loadUnaligned(as: SIMD8<Float>.self) * 0
            i += 8
        }
        var tail: Float = 0
        while i < count { tail += ptr[i] * 0; i += 1 }
        return (acc.sum() + tail) == 0
    }
}

#if canImport(Glibc)
import COpenBLAS

/// Every training step allocates and frees the same few multi-megabyte buffers (gradients,
/// weight snapshots, messages). glibc would hand each back to the kernel and fault it in again
/// on the next step (hundreds of page faults per buffer, on the step barrier); keeping them in
/// the heap makes the next step reuse the same pages.
public func keepLargeAllocationsInTheHeap() {
    mallopt(M_MMAP_THRESHOLD, 32 << 20)   // bytes: glibc's maximum; larger blocks still use mmap
    mallopt(M_TRIM_THRESHOLD, 512 << 20)  // bytes of free heap top kept before trimming
}
#else
public func keepLargeAllocationsInTheHeap() {}
#endif
