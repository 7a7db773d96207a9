import Foundation

/// The bytes a decoder may allocate for what a file declares (the process's limit, measured by
/// `Datasets.Memory`): a declared size larger than this is refused before the allocation that
/// would abort.
public struct MemoryBudget: Sendable {
    public let bytes: Int
    public init(bytes: Int) { self.bytes = bytes }

    public static func gib(_ bytes: Int) -> String { String(format: "%.1f GiB", Double(bytes) / Double(1 << 30)) }

    /// Throws when `n` bytes cannot be had: `what` names the file and part that asked for it.
    public func check(_ n: Int, for what: String) throws {
        guard n <= bytes else {
            throw LockstepError("\(what) needs \(Self.gib(n)) of memory, more than this process may use (\(Self.gib(bytes)))",
                                hint: "train on a machine with more memory, or split the data into smaller files")
        }
    }
}
