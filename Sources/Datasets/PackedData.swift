import BiLSTM
import FileIO
import Formats
import Foundation
import Numerics

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
            let zip = try ZipArchive(bytes: try Bytes.map(path: path), path: path, memory: Memory.budget)
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

    /// Checks every shard file against the manifest (presence, size, SHA-256), then reads
    /// every sequence (labels, finite inputs) and recomputes the content hash, which must be
    /// the manifest's: so the manifest's lengths and classes describe these bytes. `progress`
    /// gets the shards done. Returns the problems found (none: the copy is good).
    public static func verify(_ dir: String, progress: (Int, Int) -> Void = { _, _ in }) throws -> (DataManifest, [Problem]) {
        let m = try DataManifest.load(dir)
        var problems: [Problem] = []
        for (k, s) in m.shards.enumerated() {
            if let p = check(dir, s) { problems.append(p) }
            progress(k + 1, m.shards.count)
        }
        guard problems.isEmpty else { return (m, problems) }
        do {
            let content = try PackedStore(dir, cacheMB: 0).computeContentHash()
            if content != m.contentSHA256 {
                problems.append(Problem(file: DataManifest.path(dir), what: "content_sha256 is \(m.contentSHA256.prefix(16))…, but the shards read with its lengths hold \(content.prefix(16))… (the manifest was edited)"))
            }
        } catch let e as LockstepError { problems.append(Problem(file: dir, what: e.description)) }
        return (m, problems)
    }

    /// One shard file against its manifest entry; nil when it is good.
    static func check(_ dir: String, _ s: DataManifest.Shard) -> Problem? {
        let path = dir + "/" + s.file
        let fd: Int32
        do { fd = try SafeFile.openRegular(path, what: "the shard").fd } catch {
            return Problem(file: path, what: "missing, unreadable, a link or not a regular file (\(error))")
        }
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
