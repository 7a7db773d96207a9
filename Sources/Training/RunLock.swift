import Formats
import Foundation

/// One owner per run directory: an exclusive `flock` on `DIR/.lock`, held for the life of the
/// process. The kernel releases it on any death, `kill -9` included, so no stale lock is left;
/// the file names the holder (pid, host, start time) for whoever is refused.
public final class RunLock {
    public let path: String
    private let fd: Int32

    /// How often a waiting coordinator tries the lock again (seconds).
    static let retryInterval = 0.1

    /// Takes the lock of `directory` (created if missing). Waits up to `wait` seconds for a
    /// holder to let go, saying so once through `log`; then refuses, naming the holder.
    public init(directory: String, wait: Double = 0, log: (String) -> Void = { _ in }) throws {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: directory, isDirectory: &isDir), !isDir.boolValue {
            throw LockstepError("--checkpoint-dir \(directory) is a file, not a directory",
                                hint: "choose a directory path (it is created if missing)")
        }
        do { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) } catch {
            throw LockstepError("cannot create --checkpoint-dir \(directory): \(error.localizedDescription)",
                                hint: "choose a writable directory")
        }
        path = (directory as NSString).appendingPathComponent(".lock")
        var st = stat()
        if lstat(path, &st) == 0, (st.st_mode & S_IFMT) != S_IFREG {
            throw LockstepError("\(path) is not a regular file (a link?): the run's lock is never taken through one",
                                hint: "remove \(path); a run recreates it")
        }
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0o644)
        guard fd >= 0 else {
            throw LockstepError("cannot open \(path): \(String(cString: strerror(errno)))", hint: "make \(directory) writable, and \(path) a regular file")
        }
        let deadline = monotonicSeconds() + wait
        var said = false
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let err = errno
            guard err == EWOULDBLOCK || err == EINTR else {
                close(fd)
                throw LockstepError("cannot lock \(path): \(String(cString: strerror(err)))",
                                    hint: "use a --checkpoint-dir on a file system that supports flock")
            }
            let holder = RunLock.holder(fd: fd)
            if monotonicSeconds() >= deadline {
                close(fd)
                throw LockstepError("\(directory) is in use by another run: \(holder)",
                                    hint: wait > 0 ? "it did not let go within \(Int(wait)) s; stop it or wait for it to finish"
                                        : "wait for it to finish, stop it, or choose another --checkpoint-dir; with --resume a coordinator waits for the previous one (--wait)")
            }
            if !said {
                said = true
                log("waiting up to \(Int(wait)) s for \(holder) to release \(directory)")
            }
            Thread.sleep(forTimeInterval: RunLock.retryInterval)
        }
        var host = [CChar](repeating: 0, count: 256)
        gethostname(&host, host.count - 1)
        let text = "pid \(getpid()) on host \(String(cString: host)), since \(ISO8601DateFormatter().string(from: Date()))\n"
        ftruncate(fd, 0)
        _ = text.withCString { pwrite(fd, $0, strlen($0), 0) }
    }

    deinit { close(fd) }

    /// What the lock file says of its holder.
    static func holder(fd: Int32) -> String {
        var buf = [UInt8](repeating: 0, count: 512)
        let n = pread(fd, &buf, buf.count, 0)
        let s = n > 0 ? String(decoding: buf[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) : ""
        return s.isEmpty ? "a process that has not written its name yet" : s
    }
}

/// Seconds on the monotonic clock (for timeouts and intervals; never for the math).
public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
