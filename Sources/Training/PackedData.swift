import BiLSTM
import Foundation
import Numerics

/// A data set packed into shard files that can be read without copies, and its manifest.
///
/// Layout (format version 1). `DIR/manifest.json` says: d_in, classes, the number of
/// sequences and frames, each sequence's length, the content hash (the same SHA-256 as
/// `Dataset.hash` of the `.npz` it came from, so a run on either is the same run), and per
/// shard its file, the range of sequences it holds, its frames, bytes and SHA-256.
/// `DIR/shard-NNNNN.bin` holds its sequences in order: first every frame's features,
/// float32 little-endian `[frames, d_in]` (sequence after sequence, no padding), then every
/// frame's label, int32 `[frames]` (-1 where unlabelled). Sequence i of a shard starts at
/// the frame that is the sum of the lengths before it in that shard.
public struct DataManifest: Codable, Equatable, Sendable {
    public static let formatName = "lockstep-packed-data"
    public static let currentVersion = 1

    public struct Shard: Codable, Equatable, Sendable {
        public var file: String
        public var first: Int        // index of its first sequence
        public var sequences: Int
        public var frames: Int
        public var bytes: Int
        public var sha256: String
    }

    public var format: String
    public var version: Int
    public var dIn: Int
    public var classes: Int
    public var labelled: Bool
    public var sequences: Int
    public var frames: Int
    /// Lmax of the inputs (what `coord predict` pads its output to).
    public var paddedLength: Int
    public var contentSHA256: String
    public var shards: [Shard]
    public var lengths: [Int]

    enum CodingKeys: String, CodingKey {
        case format, version, dIn = "d_in", classes, labelled, sequences, frames, paddedLength = "padded_length"
        case contentSHA256 = "content_sha256", shards, lengths
    }

    public static func path(_ dir: String) -> String { dir + "/manifest.json" }

    /// Whether `path` names a packed directory (or its manifest) rather than an `.npz`.
    public static func isPacked(_ path: String) -> Bool {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue { return true }
        return (path as NSString).lastPathComponent == "manifest.json"
    }

    /// The directory of a packed path given as the directory or as its manifest.
    public static func directory(_ path: String) -> String {
        (path as NSString).lastPathComponent == "manifest.json" ? (path as NSString).deletingLastPathComponent : path
    }

    /// Reads and checks the manifest: format, version, and that its numbers agree.
    public static func load(_ dir: String) throws -> DataManifest {
        let p = path(dir)
        guard let data = FileManager.default.contents(atPath: p) else {
            throw LockstepError("\(dir): no manifest.json (not a packed data directory, or an unfinished pack)",
                                hint: "pack an .npz with `coord data pack IN.npz --out \(dir)`, or pass the .npz itself")
        }
        let m: DataManifest
        do { m = try JSONDecoder().decode(DataManifest.self, from: data) } catch {
            throw LockstepError("\(p): not a Lockstep data manifest (\(error))", hint: "repack with `coord data pack`")
        }
        guard m.format == formatName else {
            throw LockstepError("\(p): format is \"\(m.format)\", not \"\(formatName)\"", hint: "repack with `coord data pack`")
        }
        guard m.version == currentVersion else {
            throw LockstepError("\(p): format version \(m.version); this Lockstep reads version \(currentVersion)",
                                hint: "repack the data with this version's `coord data pack`, or use the Lockstep that packed it")
        }
        var problems: [String] = []
        if m.sequences < 1 { problems.append("it holds \(m.sequences) sequences; packed data has at least 1") }
        if m.dIn < 1 || m.dIn > ModelConfig.maxInputSize { problems.append("d_in \(m.dIn) is outside 1...\(ModelConfig.maxInputSize)") }
        if m.classes < 1 || m.classes > ModelConfig.maxClasses { problems.append("classes \(m.classes) is outside 1...\(ModelConfig.maxClasses)") }
        if m.lengths.count != m.sequences { problems.append("\(m.lengths.count) lengths for \(m.sequences) sequences") }
        if m.lengths.contains(where: { $0 < 1 || $0 > Dataset.maxLength }) { problems.append("a length is outside 1...\(Dataset.maxLength)") }
        if m.lengths.reduce(0, +) != m.frames { problems.append("the lengths add up to \(m.lengths.reduce(0, +)) frames, not \(m.frames)") }
        var next = 0
        for (k, s) in m.shards.enumerated() {
            if s.first != next || s.sequences < 1 || s.first + s.sequences > m.sequences { problems.append("shard \(k) (\(s.file)) holds sequences \(s.first)..<\(s.first + s.sequences), not from \(next)"); break }
            let frames = m.lengths[s.first..<(s.first + s.sequences)].reduce(0, +)
            if s.frames != frames || s.bytes != frames * (m.dIn * 4 + 4) { problems.append("shard \(k) (\(s.file)) declares \(s.frames) frames and \(s.bytes) bytes; its sequences need \(frames) and \(frames * (m.dIn * 4 + 4))") }
            if s.file.contains("/") || s.file.hasPrefix(".") { problems.append("shard \(k) has file name \"\(s.file)\" outside the directory") }
            next = s.first + s.sequences
        }
        if next != m.sequences { problems.append("the shards hold \(next) of \(m.sequences) sequences") }
        guard problems.isEmpty else {
            throw LockstepError("\(p): the manifest does not add up: \(problems.joined(separator: "; "))",
                                hint: "repack with `coord data pack` (the manifest was edited or damaged)")
        }
        return m
    }

    func encoded() throws -> [UInt8] {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return Array(try e.encode(self)) + [0x0a]
    }
}

/// `coord data pack|verify|info` and the reading of packed directories.
public enum PackedData {
    /// What a pack did, for the command's last line and the benchmark.
    public struct PackReport: Sendable {
        public var manifest: DataManifest
        public var inputBytes: Int
        public var seconds: Double
    }

    /// Packs `inputs` (`.npz`, in order: their sequences are concatenated) into `out`, a new
    /// directory, in shards of about `shardBytes` bytes. Streams: it holds one input's `lengths`,
    /// one padded sequence and one shard, never a whole `x` or `y`, so inputs larger than
    /// memory pack. Two passes over `y` (labels are checked and counted before anything is
    /// written); the directory appears only when complete (written beside it, then renamed).
    @discardableResult
    public static func pack(inputs: [String], out: String, shardBytes: Int, classes: Int? = nil,
                            progress: (Int, Int) -> Void = { _, _ in }) throws -> PackReport {
        let t0 = Date()
        guard !inputs.isEmpty else { throw LockstepError("nothing to pack", hint: "name one or more .npz files") }
        guard !FileManager.default.fileExists(atPath: out) else {
            throw LockstepError("\(out) already exists", hint: "choose a new --out directory, or remove the old one first")
        }
        // Pass 1: shapes, lengths, labels; nothing written.
        struct Input { let path: String; let zip: ZipArchive; let n: Int; let lmax: Int; let lengths: [Int]; let x: ZipArchive.Entry; let y: ZipArchive.Entry? }
        var ins: [Input] = []
        var dIn = 0, maxLabel = -1, inputBytes = 0, labelled = true, lmaxAll = 0
        for path in inputs {
            guard FileManager.default.fileExists(atPath: path) else {
                throw LockstepError("\(path): cannot read the input (missing or unreadable)", hint: "name existing .npz files to pack")
            }
            let zip = try ZipArchive(bytes: try Bytes.map(path: path), path: path)
            inputBytes += zip.bytes.raw.count
            func entry(_ name: String) -> ZipArchive.Entry? { zip.entries.first { $0.name == name + ".npy" } }
            guard let ex = entry("x"), let el = entry("lengths") else {
                let have = zip.entries.map { $0.name.replacingOccurrences(of: ".npy", with: "") }
                throw LockstepError("\(path): arrays 'x' and 'lengths' are needed (the file has: \(have.joined(separator: ", ")))",
                                    hint: "save it as numpy.savez(path, x=x, lengths=lengths, y=y)")
            }
            let xh = try streamHeader(zip, ex, "x")
            guard xh.header.shape.count == 3, xh.header.shape.allSatisfy({ $0 >= 1 }) else {
                throw LockstepError("\(path): array 'x' has shape \(xh.header.shape); it must be [N, Lmax, d_in] with every dimension at least 1",
                                    hint: "pad sequences to x of shape (N, Lmax, d_in)")
            }
            guard xh.header.descr == "<f4" else {
                throw LockstepError("\(path): array 'x' has dtype \(xh.header.descr); Lockstep needs float32 (<f4)", hint: "save x.astype(numpy.float32)")
            }
            let (n, lmax, d) = (xh.header.shape[0], xh.header.shape[1], xh.header.shape[2])
            guard lmax <= Dataset.maxLength, d <= ModelConfig.maxInputSize else {
                throw LockstepError("\(path): array 'x' has shape \(xh.header.shape); Lockstep takes sequences of at most \(Dataset.maxLength) frames of at most \(ModelConfig.maxInputSize) features",
                                    hint: "cut longer sequences into pieces")
            }
            if dIn == 0 { dIn = d } else if d != dIn {
                throw LockstepError("\(path): x has d_in = \(d), but \(inputs[0]) has \(dIn)", hint: "pack only files with the same features per frame")
            }
            let (lb, lowner) = try zip.read(el)
            let la = try withExtendedLifetime(lowner) { try NPYArray.parse(lb, owner: lowner, file: path, array: "lengths") }
            guard la.shape == [n] else {
                throw LockstepError("\(path): array 'lengths' has shape \(la.shape); it must be [N] = [\(n)] to match x",
                                    hint: "lengths[i] is the number of valid frames of sequence i")
            }
            let lengths = try la.ints(file: path, array: "lengths")
            for (i, len) in lengths.enumerated() where len < 1 || len > lmax {
                throw LockstepError("\(path): array 'lengths': sequence \(i) has length \(len); lengths must be in 1...\(lmax) (Lmax of x)",
                                    hint: "drop empty sequences and make x wide enough for the longest")
            }
            let ey = entry("y")
            if let ey {
                let ys = try streamHeader(zip, ey, "y")
                guard ys.header.shape == [n, lmax] else {
                    throw LockstepError("\(path): array 'y' has shape \(ys.header.shape); it must be [N, Lmax] = [\(n), \(lmax)] to match x",
                                        hint: "y[i, t] is the class of frame t of sequence i, -1 on padding")
                }
                let limit = classes ?? ModelConfig.maxClasses
                try forEachLabelRow(ys, n: n, lmax: lmax, path: path) { i, row in
                    for t in 0..<lengths[i] where row[t] < -1 || row[t] >= limit {
                        throw LockstepError("\(path): array 'y': sequence \(i), frame \(t) has label \(row[t]); labels on valid frames must be in -1...\(limit - 1)",
                                            hint: classes == nil ? "use -1 only for ignored frames, and class ids from 0" : "raise --classes or fix the labels")
                    }
                    for t in 0..<lengths[i] { maxLabel = max(maxLabel, row[t]) }
                }
            } else {
                labelled = false
            }
            lmaxAll = max(lmaxAll, lmax)
            ins.append(Input(path: path, zip: zip, n: n, lmax: lmax, lengths: lengths, x: ex, y: ey))
        }
        let C = classes ?? max(maxLabel + 1, 1)
        let total = ins.reduce(0) { $0 + $1.n }
        let allLengths = ins.flatMap(\.lengths)

        // Pass 2: the shards, into a directory beside `out` that is renamed when complete.
        let parent = (out as NSString).deletingLastPathComponent
        let tmp = (parent.isEmpty ? "." : parent) + "/." + (out as NSString).lastPathComponent + ".packing-\(getpid())"
        try? FileManager.default.removeItem(atPath: tmp)
        do { try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true) } catch {
            throw LockstepError("cannot create \(tmp): \(error.localizedDescription)", hint: "check that \(parent.isEmpty ? "." : parent) exists and is writable")
        }
        do {
            var content = SHA256()
            content.update(Array("\(total) \(dIn) \(C)".utf8))
            var shards: [DataManifest.Shard] = []
            var xs: [Float] = [], ys: [Int32] = []
            var first = 0, seq = 0
            func flush() throws {
                guard !ys.isEmpty else { return }
                let file = String(format: "shard-%05d.bin", shards.count)
                var h = SHA256()
                xs.withUnsafeBytes { h.update($0) }
                ys.withUnsafeBytes { h.update($0) }
                try xs.withUnsafeBytes { xb in try ys.withUnsafeBytes { yb in try AtomicFile.write(parts: [xb, yb], to: tmp + "/" + file) } }
                shards.append(.init(file: file, first: first, sequences: seq - first, frames: ys.count, bytes: xs.count * 4 + ys.count * 4,
                                    sha256: h.finalize().hexString))
                first = seq
                xs.removeAll(keepingCapacity: true); ys.removeAll(keepingCapacity: true)
            }
            for inp in ins {
                let xsrc = try streamHeader(inp.zip, inp.x, "x")
                let row = inp.lmax * dIn
                var buf = [Float](repeating: 0, count: row)
                let labels: LabelRows? = try inp.y.map { try LabelRows(streamHeader(inp.zip, $0, "y"), lmax: inp.lmax, path: inp.path) }
                for i in 0..<inp.n {
                    try buf.withUnsafeMutableBytes { try xsrc.stream.read(into: $0.baseAddress!, count: row * 4) }
                    let len = inp.lengths[i]
                    for k in 0..<(len * dIn) where !buf[k].isFinite {
                        throw LockstepError("\(inp.path): array 'x': sequence \(i), frame \(k / dIn), feature \(k % dIn) is \(buf[k]); inputs must be finite",
                                            hint: "clean or impute non-finite values before saving")
                    }
                    let yrow: [Int32] = try labels.map { l in try l.next().prefix(len).map { Int32($0) } } ?? [Int32](repeating: -1, count: len)
                    buf.withUnsafeBytes { content.update(UnsafeRawBufferPointer(rebasing: $0[0..<(len * dIn * 4)])) }
                    yrow.withUnsafeBytes { content.update($0) }
                    xs.append(contentsOf: buf[0..<(len * dIn)])
                    ys.append(contentsOf: yrow)
                    seq += 1
                    if xs.count * 4 + ys.count * 4 >= max(shardBytes, 1) { try flush() }
                    if seq % 256 == 0 { progress(seq, total) }
                }
                try xsrc.stream.finish()
                try labels?.finish()
            }
            try flush()
            let m = DataManifest(format: DataManifest.formatName, version: DataManifest.currentVersion, dIn: dIn, classes: C,
                                 labelled: labelled, sequences: total, frames: allLengths.reduce(0, +), paddedLength: lmaxAll,
                                 contentSHA256: content.finalize().hexString, shards: shards, lengths: allLengths)
            try AtomicFile.write(try m.encoded(), to: DataManifest.path(tmp))
            guard rename(tmp, out) == 0 else {
                throw LockstepError("cannot rename \(tmp) to \(out): \(String(cString: strerror(errno)))", hint: "check permissions, or that \(out) was not created meanwhile")
            }
            return PackReport(manifest: m, inputBytes: inputBytes, seconds: Date().timeIntervalSince(t0))
        } catch {
            try? FileManager.default.removeItem(atPath: tmp)
            throw error
        }
    }

    struct HeaderedStream { let header: NPYArray.Header; let stream: ZipMemberStream }

    /// A member's stream positioned at its data, with its NPY header parsed.
    static func streamHeader(_ zip: ZipArchive, _ e: ZipArchive.Entry, _ name: String) throws -> HeaderedStream {
        let s = try ZipMemberStream(zip, e)
        var head = [UInt8](repeating: 0, count: min(12, s.remaining))
        try head.withUnsafeMutableBytes { try s.read(into: $0.baseAddress!, count: $0.count) }
        let len = try head.withUnsafeBytes { try NPYArray.headerLength($0, file: zip.path, array: name) }
        guard len >= head.count, len - head.count <= s.remaining, len < 1 << 20 else {
            throw NPYArray.bad(zip.path, name, "truncated header")
        }
        var rest = [UInt8](repeating: 0, count: len - head.count)
        try rest.withUnsafeMutableBytes { try s.read(into: $0.baseAddress!, count: $0.count) }
        head += rest
        let h = try head.withUnsafeBytes { try NPYArray.header($0, file: zip.path, array: name) }
        let need = h.count * NPYArray.itemSize(h.descr)!
        guard s.remaining >= need else {
            throw NPYArray.bad(zip.path, name, "declared shape \(h.shape) needs \(need) bytes of data but the member has \(s.remaining) (truncated?)")
        }
        return HeaderedStream(header: h, stream: s)
    }

    /// `y`, a row of Lmax labels at a time.
    final class LabelRows {
        let src: HeaderedStream
        let lmax: Int, path: String, item: Int
        var buf: [UInt8]
        init(_ src: HeaderedStream, lmax: Int, path: String) throws {
            self.src = src; self.lmax = lmax; self.path = path
            item = NPYArray.itemSize(src.header.descr)!
            buf = [UInt8](repeating: 0, count: lmax * item)
        }
        func next() throws -> [Int] {
            try buf.withUnsafeMutableBytes { try src.stream.read(into: $0.baseAddress!, count: $0.count) }
            return try buf.withUnsafeBytes { try NPYArray.ints($0, descr: src.header.descr, count: lmax, file: path, array: "y") }
        }
        func finish() throws { try src.stream.finish() }
    }

    static func forEachLabelRow(_ src: HeaderedStream, n: Int, lmax: Int, path: String, _ body: (Int, [Int]) throws -> Void) throws {
        let rows = try LabelRows(src, lmax: lmax, path: path)
        for i in 0..<n { try body(i, try rows.next()) }
        try rows.finish()
    }

    /// The result of `verify`: every shard's file present, of its size, with its hash.
    public struct Problem: Error, Sendable, CustomStringConvertible {
        public let file: String, what: String
        public var description: String { "\(file): \(what)" }
    }

    /// Checks every shard file against the manifest (presence, size, SHA-256); `progress`
    /// gets the shards done. Returns the problems found (none: the copy is good).
    public static func verify(_ dir: String, progress: (Int, Int) -> Void = { _, _ in }) throws -> (DataManifest, [Problem]) {
        let m = try DataManifest.load(dir)
        var problems: [Problem] = []
        for (k, s) in m.shards.enumerated() {
            if let p = check(dir, s) { problems.append(p) }
            progress(k + 1, m.shards.count)
        }
        return (m, problems)
    }

    /// One shard file against its manifest entry; nil when it is good.
    static func check(_ dir: String, _ s: DataManifest.Shard) -> Problem? {
        let path = dir + "/" + s.file
        let fd = openReadOnly(path)
        guard fd >= 0 else { return Problem(file: path, what: "missing or unreadable (\(String(cString: strerror(errno))))") }
        defer { close(fd) }
        return check(fd: fd, path: path, s)
    }

    /// An open shard file against its manifest entry (size, then SHA-256 of a transient map);
    /// nil when it is good.
    static func check(fd: Int32, path: String, _ s: DataManifest.Shard) -> Problem? {
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return Problem(file: path, what: "not a regular file") }
        guard Int(st.st_size) == s.bytes else { return Problem(file: path, what: "has \(st.st_size) bytes; the manifest says \(s.bytes) (truncated or replaced)") }
        guard let bytes = try? Bytes.map(fd: fd, size: s.bytes, path: path) else { return Problem(file: path, what: "cannot be mapped to check its hash") }
        let h = SHA256.hex(bytes.raw)
        guard h == s.sha256 else { return Problem(file: path, what: "SHA-256 is \(h.prefix(16))…; the manifest says \(s.sha256.prefix(16))… (corrupted)") }
        return nil
    }

    /// A packed directory as a `Dataset` read on demand (`Dataset(store:)`); with `classes`
    /// other than the manifest's (the content hash counts them) it is read whole instead.
    public static func open(_ path: String, classes: Int?) throws -> Dataset {
        let store = try PackedStore(path)
        guard !store.manifest.labelled || classes == nil || classes == store.manifest.classes else {
            return try load(path, classes: classes, labels: .required)
        }
        try check(store, classes: classes, labels: .required)
        return Dataset(store: store)
    }

    /// For a trained model (`eval`, `predict`): labels as `labels` asks, at most `classes`
    /// of them; read on demand. `cacheMB` 0 (eval, predict: each sequence once) caches nothing;
    /// nil is the store's default (a validation set, read again at each validation).
    public static func open(_ path: String, classes: Int, labels: Dataset.Labels, cacheMB: Int? = 0) throws -> Dataset {
        let store = try PackedStore(path, cacheMB: cacheMB)
        try check(store, classes: classes, labels: labels)
        return Dataset(store: store, classes: classes)
    }

    /// Refuses a packed set without labels where they are needed, or with more classes than fit.
    static func check(_ store: PackedStore, classes: Int?, labels: Dataset.Labels) throws {
        let m = store.manifest, dir = store.dir
        if !m.labelled {
            switch labels {
            case .optional: break
            case .required:
                throw LockstepError("\(dir): the packed data has no labels (its inputs had no 'y')", hint: "pack files that have y to train on them")
            case .forModel(_, let hint):
                throw LockstepError("\(dir): the packed data has no labels (its inputs had no 'y')", hint: hint)
            }
        }
        if let C = classes, m.labelled && m.classes > C {
            let hint: String
            switch labels {
            case .required: hint = "raise --classes to at least \(m.classes)"
            case .forModel(let what, _), .optional(let what): hint = "the model in \(what) has \(C) classes: use data labelled for that model"
            }
            throw LockstepError("\(dir): labels go up to class \(m.classes - 1); only \(C) classes fit", hint: hint)
        }
    }

    /// A packed directory as a `Dataset`: every shard's hash checked before its sequences are
    /// used. The content hash is recomputed and must equal the manifest's, so the data is the
    /// `.npz`'s exactly (a run on either is the same run).
    public static func load(_ path: String, classes: Int?, labels: Dataset.Labels) throws -> Dataset {
        let store = try PackedStore(path)
        let m = store.manifest, dir = store.dir
        let C = classes ?? m.classes
        try check(store, classes: C, labels: labels)
        try Memory.check(m.frames * (m.dIn * 4 + 4) * 2, for: "\(dir) (\(Memory.gib(m.frames * m.dIn * 4)) of x)")
        var examples: [Example] = []
        examples.reserveCapacity(m.sequences)
        for i in 0..<m.sequences {
            let e = try store.example(i)
            if let bad = e.y.firstIndex(where: { $0 < -1 || Int($0) >= C }) {
                throw LockstepError("\(dir): sequence \(i), frame \(bad) has label \(e.y[bad]); labels must be in -1...\(C - 1)", hint: "repack the data")
            }
            examples.append(e)
        }
        var d = Dataset(examples: examples, inputSize: m.dIn, classes: C, source: dir)
        d.paddedLength = m.paddedLength
        guard C != m.classes || d.hash == m.contentSHA256 else {
            throw LockstepError("\(dir): the shards' content hash is \(d.hash.prefix(16))…, the manifest's \(m.contentSHA256.prefix(16))…",
                                hint: "repack the data (the manifest does not describe these shards)")
        }
        return d
    }
}
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

    /// The content hash a run compares with its own data's.
    public var contentHash: String { manifest.contentSHA256 }

    /// Shard k's descriptor, checked against the manifest on first use. Caller holds `lock`.
    private func file(_ k: Int) throws -> Int32 {
        if let fd = files[k] { return fd }
        let s = manifest.shards[k], path = dir + "/" + s.file
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw shardError(path, "missing or unreadable (\(String(cString: strerror(errno))))") }
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
        let k = Int(shardOf[id])
        let fd: Int32
        do { fd = try file(k) } catch { lock.unlock(); throw error }
        lock.unlock()
        let (xr, yr) = ranges(id), len = manifest.lengths[id]
        var x = [Float](repeating: 0, count: len * manifest.dIn), y = [Int32](repeating: 0, count: len)
        let path = dir + "/" + manifest.shards[k].file
        try x.withUnsafeMutableBytes { try Self.readFully(fd, $0, at: xr.lowerBound, path: path) }
        try y.withUnsafeMutableBytes { try Self.readFully(fd, $0, at: yr.lowerBound, path: path) }
        let e = Example(id: id, x: x, y: y)
        lock.withLock { cache.put(e, bytes: xr.count + yr.count, limit: cacheBytes) }
        return e
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

/// `open(2)` for reading, where `PackedData.open` would shadow it.
private func openReadOnly(_ path: String) -> Int32 { open(path, O_RDONLY | O_CLOEXEC) }
