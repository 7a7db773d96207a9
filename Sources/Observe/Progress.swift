import Foundation

/// A live one-line progress display on a terminal; a plain line every ~5% otherwise.
public final class ProgressLine {
    /// Where progress goes instead of stderr (structured logs): every 5% and the last step.
    nonisolated(unsafe) public static var sink: ((String) -> Void)?
    private let total: Int
    /// The step this process started from (a resumed run's): the ETA counts only steps done here.
    private let first: Int
    private let tty: Bool
    private var lastPrinted = -1
    private let started = Date()

    public init(total: Int, from first: Int = 0) {
        self.total = total
        self.first = first
        tty = ProgressLine.sink == nil && isatty(STDERR_FILENO) != 0
    }

    public func update(step: Int, loss: Double, framesPerSecond: Double, extra: String = "") {
        let elapsed = Date().timeIntervalSince(started)
        let eta = ProgressLine.eta(step: step, first: first, total: total, elapsed: elapsed)
        let line = String(format: "step %d/%d  loss %.4f  %.0f frames/s  eta %.0fs", step, total, loss, framesPerSecond, eta) + extra
        if tty {
            FileHandle.standardError.write(Data(("\r\u{1B}[2K" + line).utf8))
            if step == total { FileHandle.standardError.write(Data("\n".utf8)) }
        } else {
            let bucket = step * 20 / max(total, 1)
            if bucket != lastPrinted || step == total {
                lastPrinted = bucket
                if let sink = ProgressLine.sink { sink(line) } else { FileHandle.standardError.write(Data((line + "\n").utf8)) }
            }
        }
    }

    /// Seconds left: the steps still to do at the pace of the steps this process did.
    public static func eta(step: Int, first: Int, total: Int, elapsed: Double) -> Double {
        step > first ? elapsed / Double(step - first) * Double(total - step) : 0
    }

    public func finish() {
        if tty { FileHandle.standardError.write(Data("\n".utf8)) }
    }
}

/// Text from a file, made safe to print on a terminal: control characters (escape sequences
/// included) shown as `\u{1b}`, and at most `limit` characters.
public func terminalSafe(_ s: String, limit: Int = 400) -> String {
    var out = ""
    for (n, u) in s.unicodeScalars.enumerated() {
        if n == limit { out += "… (cut)"; break }
        out += u.value < 0x20 || (0x7f...0x9f).contains(u.value) ? "\\u{\(String(u.value, radix: 16))}" : String(u)
    }
    return out
}
