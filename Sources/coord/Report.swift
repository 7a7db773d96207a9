import ArgumentParser
import FileIO
import Formats
import Foundation
import Observe
import Training

struct Report: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a run's report: one self-contained HTML file of its curves, config and hash.",
        discussion: """
        Reads RUN_DIR/metrics.jsonl, config.toml and checkpoint.safetensors as they are now (a \
        run still going included) and writes inline-SVG charts with ticks and gridlines — training \
        loss raw and smoothed (TensorBoard's 0.9) beside the validation loss, validation accuracy \
        and macro-F1, the best validation's step marked, learning rate, gradient norm with clipped \
        steps marked, frames/s, workers alive and shards re-issued (cluster runs), shard compute \
        times — then the best validation's confusion matrix as a heat map and its per-class \
        precision, recall and F1, the config and the checkpoint's weights hash. The page scales \
        from a phone's width to a desktop's (scripts/check-report renders both in Chromium). No \
        network, no JavaScript.
        """)

    @Argument(help: "The run directory (--checkpoint-dir of coord start).")
    var runDirectory: String
    @Option(help: "Output file (default RUN_DIR/report.html).")
    var out: String?

    func run() throws {
        do {
            let metricsPath = (runDirectory as NSString).appendingPathComponent("metrics.jsonl")
            guard let text = try? String(contentsOfFile: metricsPath, encoding: .utf8) else {
                throw LockstepError("\(metricsPath): cannot read the run's metrics", hint: "give the --checkpoint-dir of a run (it holds metrics.jsonl)")
            }
            let report = RunReport(metricsLines: text.split(separator: "\n").map(String.init))
            let config = try? String(contentsOfFile: (runDirectory as NSString).appendingPathComponent("config.toml"), encoding: .utf8)
            let ckPath = (runDirectory as NSString).appendingPathComponent("checkpoint.safetensors")
            let ck = FileManager.default.fileExists(atPath: ckPath) ? try Checkpoint.load(path: ckPath) : nil
            let path = out ?? (runDirectory as NSString).appendingPathComponent("report.html")
            let html = report.html(run: runDirectory, config: config, hash: ck?.params.sha256,
                                   numerics: ck?.metadata["numerics"] ?? "numerics not recorded", step: ck?.step)
            try AtomicFile.write(Array(html.utf8), to: path)
            print("wrote \(path): \(report.charts.count) charts over \(report.steps) steps and \(report.validations) validations")
        } catch { fail(error) }
    }
}
