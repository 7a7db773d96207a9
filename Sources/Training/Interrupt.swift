import Foundation

/// Ctrl-C / SIGTERM: training loops finish the step in hand, checkpoint and exit, so an
/// interrupted run resumes to the same bits with `--resume`.
public enum Interrupt {
    nonisolated(unsafe) private static var flag: sig_atomic_t = 0

    public static func install() {
        signal(SIGINT) { _ in Interrupt.flag = 1 }
        signal(SIGTERM) { _ in Interrupt.flag = 1 }
    }

    public static var requested: Bool { flag != 0 }
}

/// A run stopped on request (Ctrl-C, SIGTERM) after checkpointing: not a failure. `coord start`
/// says how to resume and exits 130.
public struct Interrupted: Error, CustomStringConvertible {
    public let message: String
    public let resume: String
    public init(_ message: String, resume: String) { self.message = message; self.resume = resume }
    public var description: String { "\(message)\nto continue: \(resume)" }
}
