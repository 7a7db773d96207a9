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

    /// Checks `RUN/tb` for a run resumed at `resumeStep` (nil or 0: a new run), changing nothing:
    /// `tb` must be a directory and its event files regular files, each at least as long as
    /// the checkpoint recorded (`recorded`: file name to bytes).
    public static func check(runDirectory: String, resumeStep: Int?, recorded: [String: Int]?) throws {
        let directory = (runDirectory as NSString).appendingPathComponent("tb")
        var st = stat()
        guard lstat(directory, &st) == 0 else { return }
        guard (st.st_mode & S_IFMT) == S_IFDIR else {
            throw LockstepError("\(directory) is not a directory (a file or a link); nothing was changed",
                                hint: "move it away: the run writes its TensorBoard events there")
        }
        for file in files(in: directory) {
            guard lstat(file, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
                throw LockstepError("\(file) is not a regular file (a link?); nothing was changed", hint: "move it away")
            }
            if (resumeStep ?? 0) > 0, let want = recorded?[(file as NSString).lastPathComponent], Int(st.st_size) < want {
                throw LockstepError("\(file) has \(st.st_size) bytes, but the checkpoint recorded \(want): it was cut short; nothing was changed",
                                    hint: "restore it from a copy, or move it away (TensorBoard then lacks those steps)")
            }
        }
    }

    /// Opens a new event file of this process. A new run first removes the older files; a
    /// resumed one cuts each to the length its checkpoint recorded, keeping every earlier byte
    /// (files it did not record, by their records' steps). Call `check` first.
    public init(runDirectory: String, resumeStep: Int?, recorded: [String: Int]? = nil, now: Double = Date().timeIntervalSince1970) throws {
        directory = (runDirectory as NSString).appendingPathComponent("tb")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let step = resumeStep ?? 0
        for file in TensorBoardLog.files(in: directory) {
            if step == 0 { unlink(file); continue }
            if let want = recorded?[(file as NSString).lastPathComponent] { truncate(file, off_t(want)) } else { try TensorBoardLog.cut(file, after: step) }
        }
        let existing = TensorBoardLog.files(in: directory)
        var host = [CChar](repeating: 0, count: 256)
        gethostname(&host, host.count)
        let hostName = String(cString: host)
        // A name that sorts after the older files of this run: TensorBoard reads them in order.
        path = (directory as NSString).appendingPathComponent(
            String(format: "events.out.tfevents.%010d.%@.%d.%d", Int(now), hostName, getpid(), existing.count))
        fd = try SafeFile.openForAppend(path, truncate: true, what: "the TensorBoard event file")
        try append(TensorBoardEvents.event(wallTime: now, step: 0, fileVersion: "brain.Event:2"))
    }

    /// Every event file's length now, by name: what a checkpoint records.
    public func lengths() -> [String: Int] {
        var out: [String: Int] = [:]
        for file in TensorBoardLog.files(in: directory) {
            var st = stat()
            if lstat(file, &st) == 0 { out[(file as NSString).lastPathComponent] = Int(st.st_size) }
        }
        return out
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
        guard let bytes = try? SafeFile.read(file, what: "the TensorBoard event file", maxBytes: 1 << 34) else { return }
        var keep = 0
        for r in TensorBoardEvents.records(bytes) {
            guard let e = TensorBoardEvents.Event(r.payload), e.step <= step else { break }
            keep = r.end
        }
        if keep < bytes.count { truncate(file, off_t(keep)) }
    }
}
