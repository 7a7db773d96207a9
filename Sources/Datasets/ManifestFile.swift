import BiLSTM
import FileIO
import Formats
import Foundation
import Numerics

extension DataManifest {
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

    /// What the model and the data layer accept.
    public static let limits = Limits(maxInputSize: ModelConfig.maxInputSize, maxClasses: ModelConfig.maxClasses, maxLength: Dataset.maxLength, maxSequences: Int(Int32.max))

    /// Reads and checks `DIR/manifest.json`.
    public static func load(_ dir: String) throws -> DataManifest {
        let p = path(dir)
        guard FileManager.default.fileExists(atPath: p) else {
            throw LockstepError("\(dir): no manifest.json (not a packed data directory, or an unfinished pack)",
                                hint: "pack an .npz with `coord data pack IN.npz --out \(dir)`, or pass the .npz itself")
        }
        // 2^31 sequences' lengths and the shards, at most: a larger file is no manifest of ours.
        let data = try SafeFile.read(p, what: "the manifest", maxBytes: 1 << 35)
        try Memory.check(data.count * 4, for: "\(p)")
        return try decode(data, path: p, limits: limits)
    }

    /// The data's identity: SHA-256 of the canonical manifest (every field, the shard files'
    /// hashes included), so an edit anywhere changes it. A run on packed data records it, and a
    /// worker's copy must have it to be read.
    public var identity: String {
        var h = SHA256()
        h.update(Array("lockstep-data-identity-v1\n".utf8))
        h.update((try? encoded()) ?? [])
        return h.finalize().hexString
    }
}
