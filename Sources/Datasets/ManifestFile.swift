import BiLSTM
import FileIO
import Formats
import Foundation

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
    public static let limits = Limits(maxInputSize: ModelConfig.maxInputSize, maxClasses: ModelConfig.maxClasses, maxLength: Dataset.maxLength)

    /// Reads and checks `DIR/manifest.json`.
    public static func load(_ dir: String) throws -> DataManifest {
        let p = path(dir)
        guard let data = FileManager.default.contents(atPath: p) else {
            throw LockstepError("\(dir): no manifest.json (not a packed data directory, or an unfinished pack)",
                                hint: "pack an .npz with `coord data pack IN.npz --out \(dir)`, or pass the .npz itself")
        }
        return try decode([UInt8](data), path: p, limits: limits)
    }
}
