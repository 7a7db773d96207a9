import Foundation
import Logging

/// How log lines look on stderr: `text` for people, `json` (one object a line) for collectors.
public enum LogFormat: String, CaseIterable, Sendable { case text, json }

/// The log of `coord` and `worker`, on apple/swift-log. Every line carries the process role
/// and pid, and what is known of the worker id and the step (`LockstepLog.context`); error
/// lines keep their HINT. Lines are written whole, one `write` each, so processes sharing a
/// terminal or file do not interleave inside a line.
public struct LockstepLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    public var logLevel: Logger.Level
    let role: String
    let format: LogFormat

    public init(role: String, level: Logger.Level, format: LogFormat) {
        self.role = role
        logLevel = level
        self.format = format
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var fields = metadata
        if let extra = metadataProvider?.get() { fields.merge(extra) { $1 } }
        if let extra = event.metadata { fields.merge(extra) { $1 } }
        let line: String
        switch format {
        case .text:
            var who = "\(role) \(getpid())"
            for key in ["worker", "step"] { if let v = fields[key] { who += " \(key) \(v)" } }
            let level = event.level >= .warning ? "\(event.level.rawValue.uppercased()): " : ""
            line = "[\(who)] \(level)\(event.message)\n"
        case .json:
            var object: [String: Any] = ["ts": ISO8601DateFormatter.withFraction.string(from: Date()), "level": event.level.rawValue,
                                         "role": role, "pid": Int(getpid()), "message": "\(event.message)"]
            for (k, v) in fields { object[k] = k == "step" ? (Int("\(v)").map { $0 as Any } ?? "\(v)") : LockstepLogHandler.json(v) }
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
            line = String(decoding: data, as: UTF8.self) + "\n"
        }
        let bytes = Array(line.utf8)
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress! + off, bytes.count - off) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            off += n
        }
    }

    static func json(_ v: Logger.MetadataValue) -> Any {
        switch v {
        case .string(let s): return s
        case .stringConvertible(let c): return "\(c)"
        case .array(let a): return a.map(json)
        case .dictionary(let d): return d.mapValues(json)
        }
    }
}

extension ISO8601DateFormatter {
    nonisolated(unsafe) static let withFraction: ISO8601DateFormatter = {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f
    }()
}

/// The process's logger and what every line should say about where the run is.
public enum LockstepLog {
    /// Known context, read at each line: e.g. `["step": "12"]` for the coordinator, the worker id.
    nonisolated(unsafe) public static var context: @Sendable () -> Logger.Metadata = { [:] }
    nonisolated(unsafe) public private(set) static var logger = Logger(label: "lockstep")
    nonisolated(unsafe) public private(set) static var format = LogFormat.text
    nonisolated(unsafe) public private(set) static var level = Logger.Level.info

    /// Sets the log up once, before anything is logged.
    public static func setup(role: String, level: Logger.Level, format: LogFormat) {
        self.format = format
        self.level = level
        var handler = LockstepLogHandler(role: role, level: level, format: format)
        handler.metadataProvider = Logger.MetadataProvider { LockstepLog.context() }
        logger = Logger(label: "lockstep.\(role)") { _ in handler }
    }

    /// A line whose level follows from how it reads: "WARNING…" is a warning.
    public static func line(_ s: String) {
        if s.hasPrefix("WARNING: ") { logger.warning("\(s.dropFirst(9))") } else { logger.info("\(s)") }
    }

    /// A user-facing failure, HINT included (in JSON as its own field).
    public static func error(_ error: Error) {
        let text = "\(error)"
        if format == .json, let r = text.range(of: "\nHINT: ") {
            logger.error("\(text[..<r.lowerBound])", metadata: ["hint": "\(text[r.upperBound...])"])
        } else if format == .json {
            logger.error("\(text)")
        } else {
            // The text form keeps today's "error: …\nHINT: …" lines, which scripts and people read.
            FileHandle.standardError.write(Data("error: \(text)\n".utf8))
        }
    }
}

extension Logger.Level {
    /// For `--log-level`.
    public static let names = Logger.Level.allCases.map(\.rawValue)
}
