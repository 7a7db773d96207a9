/// A user-facing failure: what failed, where, and the fix.
public struct LockstepError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public let hint: String?

    public init(_ message: String, hint: String? = nil) {
        self.message = message
        self.hint = hint
    }

    public var description: String {
        hint.map { "\(message)\nHINT: \($0)" } ?? message
    }
}
