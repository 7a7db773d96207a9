import BiLSTM
import Formats
import Foundation
import Numerics

/// Labelled sequences, all with the same input width and class count: in memory (`examples`),
/// or read on demand from a packed directory (`store`; `examples` is then empty, and
/// `example(_:)` reads one sequence, checking its shard's SHA-256 on first use).
public struct Dataset: Sendable {
    public let examples: [Example]
    /// The length of every sequence, in order (known without reading a packed set's bytes).
    public let lengths: [Int]
    /// Where a lazily read set's sequences come from.
    public let store: PackedStore?
    public let inputSize: Int
    public let classes: Int
    /// What a run records of its data, and resume compares: the content hash for data read
    /// whole (computed from its bytes); the manifest's identity for a packed set read on demand
    /// (every field of its manifest and its shards' hashes: an edit anywhere changes it).
    public let hash: String
    /// SHA-256 of the content (shape, lengths, x and y), the same for an `.npz` and its packed
    /// copy. Computed for data read whole; for a packed set read on demand, the manifest's claim
    /// (`PackedStore.computeContentHash` checks it).
    public let contentHash: String
    public let source: String
    /// Lmax of the file's arrays (at least the longest sequence): `predict` writes its output as wide.
    public var paddedLength: Int

    public init(examples: [Example], inputSize: Int, classes: Int, source: String) {
        paddedLength = examples.map(\.length).max() ?? 0
        self.examples = examples
        lengths = examples.map(\.length)
        store = nil
        self.inputSize = inputSize
        self.classes = classes
        self.source = source
        var h = SHA256()
        h.update(Array("\(examples.count) \(inputSize) \(classes)".utf8))
        for e in examples {
            e.x.withUnsafeBytes { h.update($0) }
            e.y.withUnsafeBytes { h.update($0) }
        }
        hash = h.finalize().hexString
        contentHash = hash
    }

    /// A packed directory read on demand: nothing but its manifest is read here. The content
    /// hash is the manifest's (each shard is checked against its own hash when first read).
    public init(store: PackedStore, classes: Int? = nil) {
        let m = store.manifest
        examples = []
        lengths = m.lengths
        self.store = store
        inputSize = m.dIn
        self.classes = classes ?? m.classes
        // The content hash counts the classes: with another count it is not the manifest's.
        let C = classes ?? m.classes
        func counted(_ h: String) -> String { C == m.classes ? h : SHA256.hex(Array("\(h) as \(C) classes".utf8)) }
        contentHash = counted(m.contentSHA256)
        hash = counted(m.identity)
        source = store.dir
        paddedLength = m.paddedLength
    }

    /// Sequences in the set.
    public var count: Int { lengths.count }
    public var frames: Int { lengths.reduce(0, +) }

    /// Sequence `i`, from memory or read from its shard (which may fail: a damaged shard).
    public func example(_ i: Int) throws -> Example {
        if let store { return try store.example(i) }
        return examples[i]
    }

    /// Labelled frames per class (a packed set is read whole for it).
    public func labelCounts() throws -> [Int] {
        var counts = [Int](repeating: 0, count: classes)
        for i in 0..<count {
            for v in try example(i).y where v >= 0 && Int(v) < classes { counts[Int(v)] += 1 }
        }
        return counts
    }

    /// The longest sequence, in every mode (a sequence crosses the wire whole).
    public static let maxLength = 1 << 20

    /// Reads `x` float32 `[N, Lmax, d_in]`, `lengths` int `[N]`, `y` int `[N, Lmax]` (-1 padding)
    /// from an `.npz` written by `np.savez` or `np.savez_compressed`, refusing anything malformed
    /// with the file, array and fix named.
    /// A directory packed by `coord data pack` (or its manifest.json) reads the same data.
    public static func load(npz path: String, classes: Int? = nil, labels: Labels = .required) throws -> Dataset {
        if DataManifest.isPacked(path) { return try PackedData.load(path, classes: classes, labels: labels) }
        guard FileManager.default.fileExists(atPath: path) else {
            throw LockstepError("\(path): cannot read the data file (missing or unreadable)",
                                hint: labels == .required ? "pass an existing .npz with --data, or omit --data to use the built-in synthetic task"
                                                          : "check the path")
        }
        return try load(zip: ZipArchive(bytes: try Bytes.map(path: path), path: path, memory: Memory.budget), path: path, classes: classes, labels: labels)
    }

    /// Whether a file must have `y`, and where the class count comes from when it is given.
    public enum Labels: Equatable, Sendable {
        /// Training data: `y` is needed; `classes` is the run's (--classes).
        case required
        /// Data for a trained model (`what` names it): `y` is needed, and its labels must fit the model.
        case forModel(String, missingHint: String)
        /// `y` may be absent (every frame unlabelled: -1); when present it must fit the model.
        case optional(String)
    }

    /// The same from an `.npz` file's bytes (`name` stands for the file in errors): the fuzz target.
    public static func decode(npz bytes: UnsafeRawBufferPointer, name: String, classes: Int? = nil) throws -> Dataset {
        let copy = Bytes.allocate(bytes.count)
        if bytes.count > 0 { UnsafeMutableRawPointer(mutating: copy.raw.baseAddress!).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count) }
        return try load(zip: ZipArchive(bytes: copy, path: name, memory: Memory.budget), path: name, classes: classes)
    }

    static func load(zip: ZipArchive, path: String, classes: Int?, labels: Labels = .required) throws -> Dataset {
        func entry(_ name: String) throws -> ZipArchive.Entry {
            guard let e = zip.entries.first(where: { $0.name == name + ".npy" }) else {
                let have = zip.entries.map { $0.name.replacingOccurrences(of: ".npy", with: "") }
                var hint = "save it as numpy.savez(path, x=x, lengths=lengths, y=y)"
                if name == "y", case .forModel(_, let h) = labels { hint = h }
                throw LockstepError("\(path): array '\(name)' is missing (the file has: \(have.joined(separator: ", ")))", hint: hint)
            }
            return e
        }
        // Before any allocation: the inflated members, plus the sequences copied out of x.
        let (ex, el) = (try entry("x"), try entry("lengths"))
        var ey: ZipArchive.Entry? = nil
        if case .optional = labels {
            ey = zip.entries.first { $0.name == "y.npy" }
        } else {
            ey = try entry("y")
        }
        let inflated = ([ex, el] + (ey.map { [$0] } ?? [])).reduce(0) { $0 + ($1.method == 0 ? 0 : $1.size) }
        try Memory.check(inflated + ex.size + (ey?.size ?? 0), for: "\(path) (\(Memory.gib(ex.size)) of x)")
        func array(_ e: ZipArchive.Entry, _ name: String) throws -> NPYArray {
            let (bytes, owner) = try zip.read(e)
            return try NPYArray.parse(bytes, owner: owner, file: path, array: name)
        }
        let xa = try array(ex, "x"), la = try array(el, "lengths")
        let ya = try ey.map { try array($0, "y") }
        guard xa.shape.count == 3 else {
            throw LockstepError("\(path): array 'x' has shape \(xa.shape); it must be [N, Lmax, d_in]",
                                hint: "pad sequences to x of shape (N, Lmax, d_in)")
        }
        let (n, lmax, dIn) = (xa.shape[0], xa.shape[1], xa.shape[2])
        guard n >= 1, lmax >= 1, dIn >= 1 else {
            throw LockstepError("\(path): array 'x' has shape \(xa.shape); every dimension must be at least 1")
        }
        guard lmax <= Dataset.maxLength, dIn <= ModelConfig.maxInputSize else {
            throw LockstepError("\(path): array 'x' has shape \(xa.shape); Lockstep takes sequences of at most \(Dataset.maxLength) frames of at most \(ModelConfig.maxInputSize) features",
                                hint: "cut longer sequences into pieces")
        }
        guard la.shape == [n] else {
            throw LockstepError("\(path): array 'lengths' has shape \(la.shape); it must be [N] = [\(n)] to match x",
                                hint: "lengths[i] is the number of valid frames of sequence i")
        }
        if let ya, ya.shape != [n, lmax] {
            throw LockstepError("\(path): array 'y' has shape \(ya.shape); it must be [N, Lmax] = [\(n), \(lmax)] to match x",
                                hint: "y[i, t] is the class of frame t of sequence i, -1 on padding")
        }
        try xa.requireFloat32(file: path, array: "x")
        let x = xa.data.bindMemory(to: Float.self)
        let lengths = try la.ints(file: path, array: "lengths")
        let y = try ya.map { try $0.ints(file: path, array: "y") } ?? [Int](repeating: -1, count: n * lmax)
        var maxLabel = -1
        for i in 0..<n {
            let len = lengths[i]
            guard len >= 1 && len <= lmax else {
                throw LockstepError("\(path): array 'lengths': sequence \(i) has length \(len); lengths must be in 1...\(lmax) (Lmax of x)",
                                    hint: "drop empty sequences and make x wide enough for the longest")
            }
            for t in 0..<len {
                let v = y[i * lmax + t]
                if v < -1 || v >= (classes ?? ModelConfig.maxClasses) {
                    let range = "-1...\((classes ?? ModelConfig.maxClasses) - 1)"
                    throw LockstepError("\(path): array 'y': sequence \(i), frame \(t) has label \(v); labels on valid frames must be in \(range)"
                                        + (classes == nil ? " (Lockstep's limit of \(ModelConfig.maxClasses) classes)" : ""),
                                        hint: classes == nil ? "use -1 only for ignored frames, and class ids from 0" : labelHint(classes!))
                }
                maxLabel = max(maxLabel, v)
                for k in 0..<dIn where !x[(i * lmax + t) * dIn + k].isFinite {
                    throw LockstepError("\(path): array 'x': sequence \(i), frame \(t), feature \(k) is \(x[(i * lmax + t) * dIn + k]); inputs must be finite",
                                        hint: "clean or impute non-finite values before saving")
                }
            }
        }
        func labelHint(_ c: Int) -> String {
            switch labels {
            case .required: return "raise --classes or fix the labels"
            case .forModel(let what, _), .optional(let what): return "the model in \(what) has \(c) classes: use data labelled for that model"
            }
        }
        let C = classes ?? (maxLabel + 1)
        guard ya == nil || C >= 2 || classes != nil else {
            throw LockstepError("\(path): array 'y' has no label above \(maxLabel), so fewer than 2 classes",
                                hint: "pass --classes N, or check the labels")
        }
        var examples: [Example] = []
        examples.reserveCapacity(n)
        for i in 0..<n {
            let len = lengths[i]
            let xs = Array(UnsafeBufferPointer(rebasing: x[(i * lmax * dIn)..<((i * lmax + len) * dIn)]))
            let ys = (0..<len).map { Int32(y[i * lmax + $0]) }
            examples.append(Example(id: i, x: xs, y: ys))
        }
        var d = withExtendedLifetime(xa) { Dataset(examples: examples, inputSize: dIn, classes: C, source: path) }
        d.paddedLength = lmax
        return d
    }

    /// The dataset as `.npz` bytes in the seed convention (stored, uncompressed).
    public func npzBytes(deflate: Bool = false, zip64: Bool = false) -> [UInt8] {
        let n = examples.count
        let lmax = examples.map(\.length).max() ?? 1
        var x = [Float](repeating: 0, count: n * lmax * inputSize)
        var y = [Int64](repeating: -1, count: n * lmax)
        for (i, e) in examples.enumerated() {
            for k in 0..<e.x.count { x[i * lmax * inputSize + k] = e.x[k] }
            for t in 0..<e.length { y[i * lmax + t] = Int64(e.y[t]) }
        }
        let lengths = examples.map { Int64($0.length) }
        func bytes<T>(_ a: [T]) -> [UInt8] { a.withUnsafeBytes { Array($0) } }
        return ZipArchive.write([
            ("x.npy", NPYArray.encode(descr: "<f4", shape: [n, lmax, inputSize], data: bytes(x))),
            ("lengths.npy", NPYArray.encode(descr: "<i8", shape: [n], data: bytes(lengths))),
            ("y.npy", NPYArray.encode(descr: "<i8", shape: [n, lmax], data: bytes(y))),
        ], deflate: deflate, zip64: zip64)
    }
}

/// The built-in task: frame t carries a noisy one-hot token z_t; its label is
/// `(z_{t-1} + 2·z_{t+1}) mod C` (zero past either end), so it needs both past and future
/// context — a BiLSTM can learn it, a forward-only LSTM cannot see z_{t+1}.
public struct SyntheticTask: Equatable, Codable, Sendable {
    public var sequences: Int
    public var inputSize: Int
    public var classes: Int
    public var minLength: Int
    public var maxLength: Int
    public var noise: Float

    public init(sequences: Int = 2048, inputSize: Int = 16, classes: Int = 8,
                minLength: Int = 20, maxLength: Int = 100, noise: Float = 0.3) {
        self.sequences = sequences
        self.inputSize = inputSize
        self.classes = classes
        self.minLength = minLength
        self.maxLength = maxLength
        self.noise = noise
    }

    public func problems() -> [String] {
        var p: [String] = []
        if sequences < 1 { p.append("synthetic sequences must be at least 1") }
        if classes < 2 { p.append("synthetic classes must be at least 2") }
        if inputSize < classes { p.append("synthetic input size (\(inputSize)) must be at least the class count (\(classes)): tokens are one-hot") }
        if minLength < 1 || maxLength < minLength { p.append("synthetic lengths need 1 <= min-length <= max-length (got \(minLength)...\(maxLength))") }
        if classes > ModelConfig.maxClasses { p.append("synthetic classes must be at most \(ModelConfig.maxClasses) (got \(classes))") }
        if inputSize > ModelConfig.maxInputSize { p.append("synthetic input size must be at most \(ModelConfig.maxInputSize) (got \(inputSize))") }
        if maxLength > Dataset.maxLength { p.append("synthetic max-length must be at most \(Dataset.maxLength) (got \(maxLength))") }
        if sequences >= 1 && inputSize >= 1 && maxLength >= 1 && sequences <= 1 << 30 && maxLength <= Dataset.maxLength && inputSize <= ModelConfig.maxInputSize {
            let (perSequence, o1) = maxLength.multipliedReportingOverflow(by: (inputSize + 1) * 4)
            let (product, o2) = sequences.multipliedReportingOverflow(by: perSequence)
            let bytes = o1 || o2 ? Int.max : product
            if bytes > Memory.limit { p.append("the synthetic task would need up to \(Memory.gib(bytes)) of memory, more than this process may use (\(Memory.gib(Memory.limit))): lower --synthetic-sequences or --max-length") }
        } else if sequences > 1 << 30 { p.append("synthetic sequences must be at most \(1 << 30) (got \(sequences))") }
        return p
    }

    /// Sequence ids `firstId ..< firstId + count`, each a pure function of (seed, id).
    public func generate(seed: UInt64, firstId: Int = 0, count: Int? = nil) -> Dataset {
        let n = count ?? sequences
        var examples: [Example] = []
        examples.reserveCapacity(n)
        for id in firstId..<(firstId + n) {
            let rl = Philox.block(key: seed, counter: SIMD4(RandomPurpose.syntheticData.rawValue, UInt32(id), 0xFFFF_FFFF, 0))
            let len = minLength + Int(rl[0] % UInt32(maxLength - minLength + 1))
            var z = [Int](repeating: 0, count: len)
            var x = [Float](repeating: 0, count: len * inputSize)
            for t in 0..<len {
                var word = 0
                var r = SIMD4<UInt32>()
                for k in 0..<(inputSize + 1) {
                    if word % 4 == 0 {
                        r = Philox.block(key: seed, counter: SIMD4(RandomPurpose.syntheticData.rawValue, UInt32(id), UInt32(t), UInt32(word / 4)))
                    }
                    let u = r[word % 4]
                    word += 1
                    if k == inputSize { z[t] = Int(u % UInt32(classes)) } else {
                        x[t * inputSize + k] = (2 * Philox.unit(u) - 1) * noise
                    }
                }
                x[t * inputSize + z[t]] += 1
            }
            let y = (0..<len).map { t -> Int32 in
                let past = t > 0 ? z[t - 1] : 0
                let future = t + 1 < len ? z[t + 1] : 0
                return Int32((past + 2 * future) % classes)
            }
            examples.append(Example(id: id, x: x, y: y))
        }
        return Dataset(examples: examples, inputSize: inputSize, classes: classes, source: "synthetic")
    }
}
