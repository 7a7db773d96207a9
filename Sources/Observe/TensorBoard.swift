import FileIO
import Formats
import Foundation

/// TensorBoard event files (`tb/events.out.tfevents.*`), written as the run trains.
///
/// A file is a sequence of records: length (u64 LE), masked CRC-32C of the length (u32),
/// the bytes, masked CRC-32C of the bytes — TFRecord framing. Each record is a protobuf
/// `Event` {wall_time = 1 (double), step = 2 (int64), file_version = 3, summary = 5
/// {value = 1 {tag = 1, simple_value = 2 (float)}}}; the first says `brain.Event:2`. One file
/// per process; a resumed run first cuts every older file back to the resumed step, so no
/// step appears twice.
public final class TensorBoardLog {
    public let directory: String
    public let path: String
    private let fd: Int32

    public init(runDirectory: String, resumeStep: Int?, now: Double = Date().timeIntervalSince1970) throws {
        directory = (runDirectory as NSString).appendingPathComponent("tb")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        // A new run starts a new record; a resumed one keeps what came before its step.
        let step = resumeStep ?? 0
        for file in TensorBoardLog.files(in: directory) {
            if step == 0 { try? FileManager.default.removeItem(atPath: file) } else { try TensorBoardLog.cut(file, after: step) }
        }
        let existing = TensorBoardLog.files(in: directory)
        var host = [CChar](repeating: 0, count: 256)
        gethostname(&host, host.count)
        let hostName = String(cString: host)
        // A name that sorts after the older files of this run: TensorBoard reads them in order.
        path = (directory as NSString).appendingPathComponent(
            String(format: "events.out.tfevents.%010d.%@.%d.%d", Int(now), hostName, getpid(), existing.count))
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw LockstepError("cannot write \(path): \(String(cString: strerror(errno)))", hint: "check that --checkpoint-dir is writable")
        }
        try append(TensorBoardEvents.event(wallTime: now, step: 0, fileVersion: "brain.Event:2"))
    }

    deinit { close(fd) }

    /// One step's scalars (and a validation's, at the same step).
    public func write(step: Int, scalars: [(String, Double)], now: Double = Date().timeIntervalSince1970) throws {
        try append(TensorBoardEvents.event(wallTime: now, step: step, scalars: scalars))
    }

    private func append(_ payload: [UInt8]) throws {
        try appendChecked(TensorBoardEvents.record(payload), to: fd, path: path)
    }

    /// The event files of a `tb` directory, oldest first.
    public static func files(in directory: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [])
            .filter { $0.hasPrefix("events.out.tfevents.") }.sorted()
            .map { (directory as NSString).appendingPathComponent($0) }
    }

    /// Cuts `file` before its first record of a step after `step` (and before a torn record).
    static func cut(_ file: String, after step: Int) throws {
        guard let data = FileManager.default.contents(atPath: file) else { return }
        let bytes = [UInt8](data)
        var keep = 0
        for r in TensorBoardEvents.records(bytes) {
            guard let e = TensorBoardEvents.Event(r.payload), e.step <= step else { break }
            keep = r.end
        }
        if keep < bytes.count { truncate(file, off_t(keep)) }
    }
}
