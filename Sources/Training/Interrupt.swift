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
