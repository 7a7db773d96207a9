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
        public init(maxInputSize: Int, maxClasses: Int, maxLength: Int) {
            self.maxInputSize = maxInputSize; self.maxClasses = maxClasses; self.maxLength = maxLength
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
        var problems: [String] = []
        if m.sequences < 1 { problems.append("it holds \(m.sequences) sequences; packed data has at least 1") }
        if m.dIn < 1 || m.dIn > limits.maxInputSize { problems.append("d_in \(m.dIn) is outside 1...\(limits.maxInputSize)") }
        if m.classes < 1 || m.classes > limits.maxClasses { problems.append("classes \(m.classes) is outside 1...\(limits.maxClasses)") }
        if m.lengths.count != m.sequences { problems.append("\(m.lengths.count) lengths for \(m.sequences) sequences") }
        if m.lengths.contains(where: { $0 < 1 || $0 > limits.maxLength }) { problems.append("a length is outside 1...\(limits.maxLength)") }
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

    public func encoded() throws -> [UInt8] {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return Array(try e.encode(self)) + [0x0a]
    }
}

/// `coord data pack|verify|info` and the reading of packed directories.
