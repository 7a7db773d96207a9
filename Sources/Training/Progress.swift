import Foundation

/// A live one-line progress display on a terminal; a plain line every ~5% otherwise.
public final class ProgressLine {
    private let total: Int
    /// The step this process started from (a resumed run's): the ETA counts only steps done here.
    private let first: Int
    private let tty: Bool
    private var lastPrinted = -1
    private let started = Date()

    public init(total: Int, from first: Int = 0) {
        self.total = total
        self.first = first
        tty = isatty(STDERR_FILENO) != 0
    }

    public func update(step: Int, loss: Double, framesPerSecond: Double, extra: String = "") {
        let elapsed = Date().timeIntervalSince(started)
        let eta = step > first ? elapsed / Double(step - first) * Double(total - step) : 0
        let line = String(format: "step %d/%d  loss %.4f  %.0f frames/s  eta %.0fs", step, total, loss, framesPerSecond, eta) + extra
        if tty {
            FileHandle.standardError.write(Data(("\r\u{1B}[2K" + line).utf8))
            if step == total { FileHandle.standardError.write(Data("\n".utf8)) }
        } else {
            let bucket = step * 20 / max(total, 1)
            if bucket != lastPrinted || step == total {
                lastPrinted = bucket
                FileHandle.standardError.write(Data((line + "\n").utf8))
            }
        }
    }

    public func finish() {
        if tty { FileHandle.standardError.write(Data("\n".utf8)) }
    }
}
