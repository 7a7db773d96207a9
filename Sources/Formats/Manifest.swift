import Foundation

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

        public init(file: String, first: Int, sequences: Int, frames: Int, bytes: Int, sha256: String) {
            self.file = file; self.first = first; self.sequences = sequences; self.frames = frames; self.bytes = bytes; self.sha256 = sha256
        }
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

    public init(format: String, version: Int, dIn: Int, classes: Int, labelled: Bool, sequences: Int, frames: Int,
                paddedLength: Int, contentSHA256: String, shards: [Shard], lengths: [Int]) {
        self.format = format; self.version = version; self.dIn = dIn; self.classes = classes; self.labelled = labelled
        self.sequences = sequences; self.frames = frames; self.paddedLength = paddedLength; self.contentSHA256 = contentSHA256
        self.shards = shards; self.lengths = lengths
    }

    enum CodingKeys: String, CodingKey {
        case format, version, dIn = "d_in", classes, labelled, sequences, frames, paddedLength = "padded_length"
        case contentSHA256 = "content_sha256", shards, lengths
    }

    /// The largest values a manifest may declare (the model's and the data's limits).
    public struct Limits: Sendable {
        public var maxInputSize: Int
        public var maxClasses: Int
        public var maxLength: Int
        public var maxSequences: Int
        public init(maxInputSize: Int, maxClasses: Int, maxLength: Int, maxSequences: Int = 1 << 31) {
            self.maxInputSize = maxInputSize; self.maxClasses = maxClasses; self.maxLength = maxLength; self.maxSequences = maxSequences
        }
    }

    /// Decodes and checks a manifest's bytes (`p` names the file in errors): format, version,
    /// and that its numbers agree with each other.
    public static func decode(_ data: [UInt8], path p: String, limits: Limits) throws -> DataManifest {
        let m: DataManifest
        do { m = try JSONDecoder().decode(DataManifest.self, from: Data(data)) } catch {
            throw LockstepError("\(p): not a Lockstep data manifest (\(error))", hint: "repack with `coord data pack`")
        }
        guard m.format == formatName else {
            throw LockstepError("\(p): format is \"\(m.format)\", not \"\(formatName)\"", hint: "repack with `coord data pack`")
        }
        guard m.version == currentVersion else {
            throw LockstepError("\(p): format version \(m.version); this Lockstep reads version \(currentVersion)",
                                hint: "repack the data with this version's `coord data pack`, or use the Lockstep that packed it")
        }
        // Every field against every other, stopping at the first that makes the next checks
        // meaningless: a lie is named, never followed.
        func refuse(_ field: String, _ why: String) -> LockstepError {
            LockstepError("\(p): field \"\(field)\": \(why)", hint: "repack with `coord data pack` (the manifest was edited or damaged)")
        }
        func isHash(_ h: String) -> Bool { h.utf8.count == 64 && h.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) } }
        guard m.sequences >= 1, m.sequences <= limits.maxSequences else {
            throw refuse("sequences", "\(m.sequences) is outside 1...\(limits.maxSequences)")
        }
        guard m.dIn >= 1, m.dIn <= limits.maxInputSize else { throw refuse("d_in", "\(m.dIn) is outside 1...\(limits.maxInputSize)") }
        guard m.classes >= 1, m.classes <= limits.maxClasses else { throw refuse("classes", "\(m.classes) is outside 1...\(limits.maxClasses)") }
        guard m.paddedLength >= 1, m.paddedLength <= limits.maxLength else {
            throw refuse("padded_length", "\(m.paddedLength) is outside 1...\(limits.maxLength)")
        }
        guard m.lengths.count == m.sequences else { throw refuse("lengths", "\(m.lengths.count) lengths for \(m.sequences) sequences") }
        if let i = m.lengths.firstIndex(where: { $0 < 1 || $0 > m.paddedLength }) {
            throw refuse("lengths", "sequence \(i) has length \(m.lengths[i]); lengths must be in 1...\(m.paddedLength) (padded_length)")
        }
        let total = m.lengths.reduce(0, +)   // at most 2^31 × 2^20: no overflow
        guard total == m.frames else { throw refuse("frames", "\(m.frames), but the lengths add up to \(total)") }
        guard isHash(m.contentSHA256) else { throw refuse("content_sha256", "not a SHA-256 in lowercase hex") }
        guard !m.shards.isEmpty, m.shards.count <= m.sequences else {
            throw refuse("shards", "\(m.shards.count) shards for \(m.sequences) sequences")
        }
        let frameBytes = m.dIn * 4 + 4
        var next = 0, names: Set<String> = []
        for (k, s) in m.shards.enumerated() {
            let name = String(s.file.prefix(80).map { $0.isASCII && !$0.isNewline ? $0 : "?" })
            guard !s.file.isEmpty, s.file.utf8.count <= 255, !s.file.contains("/"), !s.file.hasPrefix("."), !s.file.utf8.contains(0) else {
                throw refuse("shards[\(k)].file", "\"\(name)\" is not a plain file name inside the directory")
            }
            guard names.insert(s.file).inserted else { throw refuse("shards[\(k)].file", "\"\(name)\" is named by two shards") }
            guard s.first == next else { throw refuse("shards[\(k)].first", "\(s.first); the shards before it end at sequence \(next)") }
            guard s.sequences >= 1, s.sequences <= m.sequences - next else {
                throw refuse("shards[\(k)].sequences", "\(s.sequences); sequences \(next)..<\(m.sequences) are left")
            }
            let frames = m.lengths[next..<(next + s.sequences)].reduce(0, +)
            guard s.frames == frames else { throw refuse("shards[\(k)].frames", "\(s.frames); its sequences' lengths add up to \(frames)") }
            guard s.bytes == frames * frameBytes else {
                throw refuse("shards[\(k)].bytes", "\(s.bytes); \(frames) frames of \(m.dIn) features and a label take \(frames * frameBytes)")
            }
            guard isHash(s.sha256) else { throw refuse("shards[\(k)].sha256", "not a SHA-256 in lowercase hex") }
            next += s.sequences
        }
        guard next == m.sequences else { throw refuse("shards", "they hold \(next) of \(m.sequences) sequences") }
        return m
    }

    public func encoded() throws -> [UInt8] {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return Array(try e.encode(self)) + [0x0a]
    }
}

/// `coord data pack|verify|info` and the reading of packed directories.
