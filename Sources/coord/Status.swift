import ArgumentParser
import Foundation
import Observe
import Training

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "One line on a run, read from its directory: step/total, loss, frames/s, workers, last validation, ETA.",
        discussion: "Reads RUN_DIR/metrics.jsonl and config.toml as they are now; works on a run that is going, stopped or done.")

    @Argument(help: "The run directory (--checkpoint-dir of coord start).")
    var runDirectory: String

    func run() throws {
        let metrics = (runDirectory as NSString).appendingPathComponent("metrics.jsonl")
        guard let text = try? String(contentsOfFile: metrics, encoding: .utf8) else {
            print("\(terminalSafe(runDirectory)): no metrics yet")
            return
        }
        let lines = text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        let config = try? String(contentsOfFile: (runDirectory as NSString).appendingPathComponent("config.toml"), encoding: .utf8)
        print(RunStatus(lines: lines, config: config).line)
    }
}

/// The summary `coord status` prints.
struct RunStatus {
    let lines: [[String: Any]]
    let config: String?

    /// The run's last step: from the last metrics line (`total_steps`: `--epochs` runs too), else
    /// from config.toml when it says (`steps = N`).
    var total: Int? {
        if let t = lines.last(where: { $0["total_steps"] != nil })?["total_steps"] as? Int, t > 0 { return t }
        return config?.split(separator: "\n").first { $0.hasPrefix("steps = ") }.flatMap { Int($0.dropFirst(8)) }
    }

    var line: String {
        let steps = lines.filter { $0["loss"] != nil && $0["valid_loss"] == nil }
        guard let last = steps.last, let step = last["step"] as? Int else { return "no step done yet" }
        var out = "step \(step)" + (total.map { "/\($0)" } ?? "")
        if let loss = last["loss"] as? Double { out += String(format: "  loss %.4f", loss) }
        if let fps = last["frames_per_s"] as? Int { out += "  \(fps) frames/s" }
        if let w = last["workers_alive"] as? Int { out += w > 0 ? "  workers \(w)" : "  local" }
        if let v = lines.last(where: { $0["valid_loss"] != nil }), let vl = v["valid_loss"] as? Double, let va = v["valid_accuracy"] as? Double {
            out += String(format: "  valid loss %.4f acc %.2f%% (step %d)", vl, 100 * va, v["step"] as? Int ?? 0)
        }
        if let why = lines.last(where: { $0["stopped"] != nil })?["stopped"] as? String { return out + "  STOPPED: " + terminalSafe(why) }
        // The pace of the last 20 steps, for the steps left.
        if let total, total > step {
            let recent = steps.suffix(20).compactMap { $0["seconds"] as? Double }
            if !recent.isEmpty {
                let eta = recent.reduce(0, +) / Double(recent.count) * Double(total - step)
                out += eta >= 90 ? String(format: "  eta %.0f min", eta / 60) : String(format: "  eta %.0f s", eta)
            }
        } else if total == step {
            out += "  done"
        }
        return out
    }
}
