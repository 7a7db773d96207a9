import FileIO
import Formats
import Foundation
import Training

/// One line of `metrics.jsonl`, written by `JSONEncoder` (keys sorted, so a line's bytes are a
/// function of its values; non-finite numbers are `null`).
public enum MetricsJSON: Encodable {
    case int(Int), double(Double), float(Float), bool(Bool), string(String), array([MetricsJSON]), object([String: MetricsJSON]), null

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .int(let v): try c.encode(v)
        case .double(let v): if v.isFinite { try c.encode(v) } else { try c.encodeNil() }
        case .float(let v): if v.isFinite { try c.encode(v) } else { try c.encodeNil() }
        case .bool(let v): try c.encode(v)
        case .string(let v): try c.encode(v)
        case .array(let v): try c.encode(v)
        case .object(let v): try c.encode(v)
        case .null: try c.encodeNil()
        }
    }

    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return e
    }()

    public static func line(_ fields: [String: MetricsJSON]) throws -> String {
        do { return String(decoding: try encoder.encode(fields), as: UTF8.self) } catch {
            throw LockstepError("cannot write a metrics line: \(error)", hint: "this is a bug in Lockstep: please report it with the run's config.toml")
        }
    }
}


/// Appends one JSON line per step to `metrics.jsonl`; on resume, drops lines past the resumed
/// step. Every write is checked: a full disk stops the run with a clear error (the last
/// checkpoint intact) instead of crashing, and `--resume` rewrites what came after it.
public final class MetricsLog {
    private let fd: Int32
    public let path: String
    /// The same figures as TensorBoard scalars (`tb/`).
    public let tensorBoard: TensorBoardLog
    /// Told of every step and validation once they are written (the Prometheus endpoint).
    public var onStep: ((StepReport) -> Void)?
    public var onValidation: ((ValidationReport) -> Void)?

    public init(directory: String, resumeStep: Int?) throws {
        path = (directory as NSString).appendingPathComponent("metrics.jsonl")
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var keep = ""
        if let resumeStep, let old = try? String(contentsOfFile: path, encoding: .utf8) {
            for line in old.split(separator: "\n") {
                if let r = line.range(of: "\"step\":"), let n = Int(line[r.upperBound...].prefix(while: \.isNumber)), n <= resumeStep {
                    keep += line + "\n"
                }
            }
        }
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw LockstepError("cannot write \(path): \(String(cString: strerror(errno)))",
                                hint: "check that --checkpoint-dir is writable and has free space")
        }
        tensorBoard = try TensorBoardLog(runDirectory: directory, resumeStep: resumeStep)
        try append(keep)
    }

    deinit { close(fd) }

    public func write(_ report: StepReport) throws {
        try append(try report.json + "\n")
        try tensorBoard.write(step: report.step, scalars: report.scalars)
        onStep?(report)
    }

    public func write(_ report: ValidationReport) throws {
        try append(try report.json + "\n")
        try tensorBoard.write(step: report.step, scalars: [("valid/loss", report.sums.loss), ("valid/accuracy", report.sums.accuracy)])
        onValidation?(report)
    }

    private func append(_ text: String) throws {
        // A torn last line would be dropped on resume anyway; appendChecked cuts it now.
        try appendChecked(Array(text.utf8), to: fd, path: path)
    }
}


extension StepReport {
    /// The step's TensorBoard scalars (the same numbers as its metrics line).
    public var scalars: [(String, Double)] {
        [("train/loss", loss), ("train/grad_norm", Double(gradNorm)), ("train/clipped", clipped ? 1 : 0), ("lr", Double(lr)),
         ("frames_per_s", Double(Int(seconds > 0 ? Double(frames) / seconds : 0))), ("workers", Double(workersAlive)),
         ("shards_reissued", Double(reissued)), ("coordinator_ms", 1000 * coordinatorSeconds)]
    }

    public var json: String {
        get throws {
            let fps = seconds > 0 ? Double(frames) / seconds : 0
            return try MetricsJSON.line([
                "step": .int(step), "epoch": .int(epoch), "loss": .double(loss), "frames": .int(frames), "frames_per_s": .int(Int(fps)),
                "grad_norm": .float(gradNorm), "clipped": .bool(clipped), "workers_alive": .int(workersAlive), "shards_reissued": .int(reissued),
                "shards": .int(shards), "gradients": .int(gradients), "max_shard_frames": .int(maxShardFrames), "seconds": .double(seconds),
                "coordinator_seconds": .double(coordinatorSeconds), "bytes_sent": .int(bytesSent), "bytes_received": .int(bytesReceived),
                "shard_seconds_max": .double(shardSecondsMax), "shard_seconds_mean": .double(shardSecondsMean),
                "skipped": .bool(skipped != nil), "lr": .float(lr),
            ].merging(workerSeconds.isEmpty ? [:] : ["worker_shard_seconds": .object(workerSeconds.mapValues(MetricsJSON.double))]) { $1 })
        }
    }
}

extension ValidationReport {
    public var json: String {
        get throws {
            var fields: [String: MetricsJSON] = [
                "step": .int(step), "epoch": .int(epoch), "valid_loss": .double(sums.loss), "valid_accuracy": .double(sums.accuracy),
                "valid_frames": .int(sums.frames), "valid_correct": .int(sums.correct),
                "valid_best_\(select.rawValue)": .double(best), "valid_best_step": .int(bestStep), "valid_improved": .bool(improved),
            ]
            if sums.classes <= ValidationReport.recallClasses {
                let per = sums.perClass
                fields["valid_recall"] = .array((0..<sums.classes).map { per.recall($0).map(MetricsJSON.double) ?? .null })
            }
            if let lrReduced { fields["lr_reduced_to"] = .float(lrReduced) }
            if let stopped { fields["stopped"] = .string(stopped) }
            return try MetricsJSON.line(fields)
        }
    }

    public var text: String {
        String(format: "  valid loss %.4f acc %.2f%%%@", sums.loss, 100 * sums.accuracy, improved ? " (best)" : "")
    }
}

extension Trainer {
    /// The validation shards' sums recorded (`recordValidation`) and written to the metrics,
    /// with what changed logged.
    public func finishValidation(_ parts: [EvalSums], metrics: MetricsLog, log: (String) -> Void) throws -> ValidationReport {
        let report = try recordValidation(EvalSums.combine(parts, classes: model.classes))
        try metrics.write(report)
        if let r = report.lrReduced { log("validation after step \(report.step): loss did not improve; learning rate reduced to \(r)") }
        if let why = report.stopped { log(why) }
        return report
    }
}
