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

    /// Notes for the run's log: what resuming found (a missing history, an older checkpoint).
    public private(set) var notes: [String] = []

    /// Opens `DIR/metrics.jsonl` and `DIR/tb/`. A new run (`resumeStep` nil or 0) starts both
    /// anew. A resumed run first checks both against what its checkpoint recorded (`recorded`:
    /// its metadata), then cuts each file at the byte length recorded at the checkpoint's step,
    /// keeping every earlier byte, whatever they hold; a checkpoint of an older Lockstep, which
    /// recorded no lengths, cuts `metrics.jsonl` before the first line of a later step.
    public init(directory: String, resumeStep: Int?, recorded: [String: String]? = nil) throws {
        path = (directory as NSString).appendingPathComponent("metrics.jsonl")
        let step = resumeStep ?? 0
        let tbLengths = recorded?["tb_bytes"].map(MetricsLog.decodeLengths)
        let cut = step > 0 ? recorded?["metrics_bytes"].flatMap(Int.init) : nil
        // Every check before any change.
        try TensorBoardLog.check(runDirectory: directory, resumeStep: step, recorded: tbLengths)
        var st = stat()
        let exists = lstat(path, &st) == 0
        if exists && (st.st_mode & S_IFMT) != S_IFREG {
            throw LockstepError("\(path) is not a regular file (a link, a FIFO, a directory?); nothing was changed",
                                hint: "move it away: the run writes its metrics there")
        }
        if let cut, exists, Int(st.st_size) < cut {
            throw LockstepError("\(path) has \(st.st_size) bytes, but the checkpoint at step \(step) recorded \(cut): its history was cut short; nothing was changed",
                                hint: "restore it from a copy, or move it away to go on without the history before step \(step)")
        }
        if step > 0 && !exists && (cut ?? 0) > 0 { notes.append("\(path) is missing: the history before step \(step) is not there; the run writes from step \(step + 1)") }
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        fd = try SafeFile.openForAppend(path, truncate: step == 0, what: "the metrics file")
        if step > 0 {
            let keep = try cut ?? MetricsLog.legacyCut(fd: fd, path: path, after: step)
            if ftruncate(fd, off_t(min(keep, Int(lseek(fd, 0, SEEK_END))))) != 0 {
                let err = String(cString: strerror(errno)); close(fd)
                throw LockstepError("cannot cut \(path) at byte \(keep): \(err)", hint: "check the disk")
            }
            lseek(fd, 0, SEEK_END)
            if cut == nil { notes.append("the checkpoint recorded no metrics length (an older Lockstep): \(path) was cut before the first line after step \(step)") }
        }
        do { tensorBoard = try TensorBoardLog(runDirectory: directory, resumeStep: step, recorded: tbLengths) } catch { close(fd); throw error }
    }

    /// What a checkpoint records of these files: their lengths now.
    public func recorded() -> [String: String] {
        var st = stat()
        fstat(fd, &st)
        return ["metrics_bytes": String(st.st_size),
         "tb_bytes": tensorBoard.lengths().sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ";")]
    }

    static func decodeLengths(_ s: String) -> [String: Int] {
        var out: [String: Int] = [:]
        for part in s.split(separator: ";") {
            let kv = part.split(separator: "=", maxSplits: 1)
            if kv.count == 2, let n = Int(kv[1]) { out[String(kv[0])] = n }
        }
        return out
    }

    /// The byte offset of the first whole line whose "step" is past `step`; every other byte,
    /// a line that does not parse included, is kept.
    static func legacyCut(fd: Int32, path: String, after step: Int) throws -> Int {
        var st = stat()
        fstat(fd, &st)
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard n == bytes.count else { throw LockstepError("cannot read \(path)", hint: "check the file") }
        var start = 0
        while start < bytes.count {
            let end = bytes[start...].firstIndex(of: 0x0a) ?? bytes.count
            let line = String(decoding: bytes[start..<end], as: UTF8.self)
            if let r = line.range(of: "\"step\":"), let s = Int(line[r.upperBound...].prefix(while: \.isNumber)), s > step { return start }
            start = end + 1
        }
        return bytes.count
    }

    deinit { close(fd) }

    public func write(_ report: StepReport) throws {
        try append(try report.json + "\n")
        try tensorBoard.write(step: report.step, scalars: report.scalars)
        onStep?(report)
    }

    public func write(_ report: ValidationReport) throws {
        try append(try report.json + "\n")
        let per = report.sums.perClass
        try tensorBoard.write(step: report.step, scalars: [("valid/loss", report.sums.loss), ("valid/accuracy", report.sums.accuracy),
                                                          ("valid/macro_f1", per.macroF1)]
                                + (0..<min(report.sums.classes, 64)).compactMap { c in per.f1(c).map { ("valid/f1/class_\(c)", $0) } })
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
                "skipped": .bool(skipped != nil), "lr": .float(lr), "total_steps": .int(totalSteps),
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
            let per = sums.perClass
            fields["valid_macro_f1"] = .double(per.macroF1)
            if sums.classes <= ValidationReport.recallClasses {
                func column(_ f: (Int) -> Double?) -> MetricsJSON { .array((0..<sums.classes).map { f($0).map(MetricsJSON.double) ?? .null }) }
                fields["valid_recall"] = column(per.recall)
                fields["valid_precision"] = column(per.precision)
                fields["valid_f1"] = column(per.f1)
            }
            // The confusion counts (rows: true class, columns: predicted), dense up to 64 classes.
            if sums.classes <= 64 {
                fields["valid_confusion"] = .array((0..<sums.classes).map { t in
                    .array((0..<sums.classes).map { .int(sums.cell(true: t, predicted: $0)) })
                })
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
