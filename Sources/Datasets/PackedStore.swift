import BiLSTM
import FileIO
import Formats
import Foundation
import Numerics

/// A packed directory read on demand, by any number of threads.
///
/// A shard is checked (size and SHA-256) on its first use, from a descriptor that stays open;
/// its sequences are then read with `pread`, never mapped, so a shard truncated or replaced
/// during a run is an error naming the file, not a crash, and the process holds no file pages.
/// Sequences read are kept in a cache of at most `cacheBytes`, least recently used first out
/// (`worker --cache-mb`), so a worker's memory is that bound plus the model's.
public final class PackedStore: @unchecked Sendable {
    public let dir: String
    public let manifest: DataManifest
    /// The most bytes of sequences kept in memory.
    public let cacheBytes: Int
    /// 256 MiB, or an eighth of what this process may use (`Memory.limit`: a cgroup's or the
    /// machine's) when that is less.
    public static var defaultCacheMB: Int { min(256, max(1, (Memory.limit >> 20) / 8)) }
    private let shardOf: [Int32]      // [sequences] its shard
    private let frameOf: [Int]        // [sequences] its first frame within the shard
    private var files: [Int32?]       // [shards] an open, checked descriptor
    private var cache = SequenceCache()
    private let lock = NSLock()
    /// Shards read (and checked) so far.
    public var shardsRead: Int { lock.withLock { files.filter { $0 != nil }.count } }
    /// Sequences read from the files (cache misses) and served from the cache.
    public var reads: (files: Int, cached: Int) { lock.withLock { (cache.misses, cache.hits) } }
    /// Bytes of sequences in the cache now.
    public var cachedBytes: Int { lock.withLock { cache.bytes } }

    public init(_ path: String, cacheMB: Int? = nil) throws {
        dir = DataManifest.directory(path)
        manifest = try DataManifest.load(dir)
        cacheBytes = max(0, cacheMB ?? Self.defaultCacheMB) << 20
        identity = manifest.identity
        var shardOf = [Int32](repeating: 0, count: manifest.sequences), frameOf = [Int](repeating: 0, count: manifest.sequences)
        for (k, s) in manifest.shards.enumerated() {
            var frame = 0
            for i in s.first..<(s.first + s.sequences) { shardOf[i] = Int32(k); frameOf[i] = frame; frame += manifest.lengths[i] }
        }
        self.shardOf = shardOf
        self.frameOf = frameOf
        files = [Int32?](repeating: nil, count: manifest.shards.count)
    }

    deinit { for case let fd? in files { close(fd) } }

    /// The manifest's identity, which a run on this data records and a worker's copy must have.
    public let identity: String

    /// Shard k's descriptor, checked against the manifest on first use. Caller holds `lock`.
    private func file(_ k: Int) throws -> Int32 {
        if let fd = files[k] { return fd }
        let s = manifest.shards[k], path = dir + "/" + s.file
        let fd: Int32
        do { fd = try SafeFile.openRegular(path, what: "the shard").fd } catch { throw shardError(path, "missing, unreadable, a link or not a regular file (\(error))") }
        if let problem = PackedData.check(fd: fd, path: path, s) { close(fd); throw shardError(problem.file, problem.what) }
        files[k] = fd
        return fd
    }

    private func shardError(_ path: String, _ what: String) -> LockstepError {
        LockstepError("\(path): \(what)", hint: "copy the shard again from a good copy, or repack; `coord data verify \(dir)` checks every shard")
    }

    /// Asks the kernel to start reading these sequences (those not cached) in the background.
    public func prefetch(_ ids: [Int]) {
        lock.lock(); defer { lock.unlock() }
        for id in ids where id >= 0 && id < manifest.sequences && !cache.contains(id) {
            let k = Int(shardOf[id])
            guard let fd = try? file(k) else { continue }
            let (xr, yr) = ranges(id)
            posix_fadvise(fd, off_t(xr.lowerBound), off_t(xr.count), POSIX_FADV_WILLNEED)
            posix_fadvise(fd, off_t(yr.lowerBound), off_t(yr.count), POSIX_FADV_WILLNEED)
        }
    }

    /// Byte ranges of sequence `id`'s frames and labels in its shard file.
    private func ranges(_ id: Int) -> (x: Range<Int>, y: Range<Int>) {
        let s = manifest.shards[Int(shardOf[id])], d = manifest.dIn, len = manifest.lengths[id]
        let x = frameOf[id] * d * 4, y = s.frames * d * 4 + frameOf[id] * 4
        return (x ..< x + len * d * 4, y ..< y + len * 4)
    }

    /// Sequence `id` (its index in the data), labels included.
    public func example(_ id: Int) throws -> Example {
        guard id >= 0, id < manifest.sequences else {
            throw LockstepError("\(dir): sequence \(id) asked for, but the data has \(manifest.sequences)", hint: "this copy is not the run's data")
        }
        lock.lock()
        if let e = cache.get(id) { lock.unlock(); return e }
        lock.unlock()
        let (e, bytes) = try readChecked(id)
        lock.withLock { cache.put(e, bytes: bytes, limit: cacheBytes) }
        return e
    }

    /// Sequence `id` from its file, bypassing the cache.
    private func read(_ id: Int) throws -> Example { try readChecked(id).0 }

    private func readChecked(_ id: Int) throws -> (Example, Int) {
        lock.lock()
        let k = Int(shardOf[id])
        let fd: Int32
        do { fd = try file(k) } catch { lock.unlock(); throw error }
        lock.unlock()
        let (xr, yr) = ranges(id), len = manifest.lengths[id]
        var x = [Float](repeating: 0, count: len * manifest.dIn), y = [Int32](repeating: 0, count: len)
        let path = dir + "/" + manifest.shards[k].file
        try x.withUnsafeMutableBytes { try Self.readFully(fd, $0, at: xr.lowerBound, path: path) }
        try y.withUnsafeMutableBytes { try Self.readFully(fd, $0, at: yr.lowerBound, path: path) }
        try check(id: id, x: x, y: y, path: path)
        return (Example(id: id, x: x, y: y), xr.count + yr.count)
    }

    /// A sequence as read, against the manifest: labels -1 or a class it declares (all -1 when
    /// it says unlabelled), inputs finite. The same rules and words as an `.npz`'s.
    private func check(id: Int, x: [Float], y: [Int32], path: String) throws {
        let C = manifest.labelled ? manifest.classes : 0
        if let t = y.firstIndex(where: { $0 < -1 || Int($0) >= C }) {
            throw LockstepError("\(path): sequence \(id), frame \(t) has label \(y[t]); labels on valid frames must be in -1...\(C - 1) (the manifest's \(manifest.classes) classes\(manifest.labelled ? "" : ", unlabelled"))",
                                hint: "repack the data with `coord data pack` (the shard or the manifest was edited)")
        }
        if let k = x.firstIndex(where: { !$0.isFinite }) {
            throw LockstepError("\(path): sequence \(id), frame \(k / manifest.dIn), feature \(k % manifest.dIn) is \(x[k]); inputs must be finite",
                                hint: "clean or impute non-finite values, then repack")
        }
    }

    /// The content hash of what the shards hold, read in order (every shard checked): the
    /// `.npz`'s `Dataset.hash` when the data is the same. Reads every sequence once, caching none.
    public func computeContentHash(classes: Int? = nil, progress: (Int, Int) -> Void = { _, _ in }) throws -> String {
        var h = SHA256()
        h.update(Array("\(manifest.sequences) \(manifest.dIn) \(classes ?? manifest.classes)".utf8))
        for i in 0..<manifest.sequences {
            let e = try read(i)
            e.x.withUnsafeBytes { h.update($0) }
            e.y.withUnsafeBytes { h.update($0) }
            if i % 1024 == 0 { progress(i, manifest.sequences) }
        }
        return h.finalize().hexString
    }

    private static func readFully(_ fd: Int32, _ buf: UnsafeMutableRawBufferPointer, at offset: Int, path: String) throws {
        var done = 0
        while done < buf.count {
            let n = pread(fd, buf.baseAddress! + done, buf.count - done, off_t(offset + done))
            if n < 0, errno == EINTR { continue }
            guard n > 0 else {
                throw LockstepError("\(path): ended or failed at byte \(offset + done) while reading a sequence (\(n < 0 ? String(cString: strerror(errno)) : "the file is shorter than when it was checked"))",
                                    hint: "the shard changed during the run: copy it again from a good copy and resume")
            }
            done += n
        }
    }
}

/// Sequences by id, least recently used evicted first once their bytes pass a limit.
struct SequenceCache {
    private var slot: [Int: Int] = [:]               // id -> index in the arrays below
    private var examples: [Example?] = [], sizes: [Int] = [], prev: [Int] = [], next: [Int] = []
    private var free: [Int] = []
    private var head = -1, tail = -1                  // most and least recently used
    private(set) var bytes = 0, hits = 0, misses = 0

    func contains(_ id: Int) -> Bool { slot[id] != nil }

    mutating func get(_ id: Int) -> Example? {
        guard let i = slot[id] else { misses += 1; return nil }
        hits += 1
        unlink(i); pushFront(i)
        return examples[i]
    }

    mutating func put(_ e: Example, bytes size: Int, limit: Int) {
        if slot[e.id] != nil || size > limit { return }
        while bytes + size > limit, tail >= 0 { evict(tail) }
        let i: Int
        if let f = free.popLast() { i = f; examples[i] = e; sizes[i] = size } else {
            i = examples.count; examples.append(e); sizes.append(size); prev.append(-1); next.append(-1)
        }
        slot[e.id] = i
        bytes += size
        pushFront(i)
    }

    private mutating func evict(_ i: Int) {
        unlink(i)
        slot[examples[i]!.id] = nil
        bytes -= sizes[i]
        examples[i] = nil
        free.append(i)
    }

    private mutating func unlink(_ i: Int) {
        if prev[i] >= 0 { next[prev[i]] = next[i] } else { head = next[i] }
        if next[i] >= 0 { prev[next[i]] = prev[i] } else { tail = prev[i] }
        prev[i] = -1; next[i] = -1
    }

    private mutating func pushFront(_ i: Int) {
        next[i] = head; prev[i] = -1
        if head >= 0 { prev[head] = i }
        head = i
        if tail < 0 { tail = i }
    }
}
