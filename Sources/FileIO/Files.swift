import Formats
import Foundation

// Every file Lockstep reads whole, maps, replaces or appends to goes through here.

extension Bytes {
    /// Maps `path` read-only: its pages are the page cache's, so a large file costs no copy.
    package static func map(path: String) throws -> Bytes {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw LockstepError("\(path): cannot read the data file (\(String(cString: strerror(errno))))",
                                hint: "pass an existing .npz with --data, or omit --data to use the built-in synthetic task")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            throw LockstepError("\(path): not a regular file", hint: "pass an .npz file")
        }
        return try map(fd: fd, size: Int(st.st_size), path: path)
    }

    /// Maps `size` bytes of an open file read-only (the descriptor may be closed afterwards).
    package static func map(fd: Int32, size: Int, path: String) throws -> Bytes {
        if size == 0 { return Bytes(raw: UnsafeRawBufferPointer(start: nil, count: 0), release: {}) }
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
            throw LockstepError("\(path): cannot map the file (\(String(cString: strerror(errno))))", hint: "check the file")
        }
        madvise(p, size, MADV_SEQUENTIAL)
        return Bytes(raw: UnsafeRawBufferPointer(start: p, count: size), release: { munmap(p, size) })
    }
}

extension Safetensors {
    public static func read(_ path: String) throws -> Safetensors {
        guard let d = FileManager.default.contents(atPath: path) else {
            throw LockstepError("\(path): cannot read the file (missing or unreadable)", hint: "check the path")
        }
        return try decode([UInt8](d), path: path)
    }

    /// Writes to a temporary name in the same directory, fsyncs, renames, fsyncs the directory:
    /// a crash leaves either the old file or the new one, never a torn one.
    public func write(atomically path: String) throws {
        try AtomicFile.write(encoded(), to: path)
    }
}

public enum AtomicFile {
    public static func write(_ bytes: [UInt8], to path: String) throws {
        try bytes.withUnsafeBytes { try write(parts: [$0], to: path) }
    }

    /// The concatenation of `parts`, written the same way without joining them in memory.
    public static func write(parts: [UnsafeRawBufferPointer], to path: String) throws {
        let dir = (path as NSString).deletingLastPathComponent
        let tmp = (dir.isEmpty ? "." : dir) + "/." + (path as NSString).lastPathComponent + ".tmp-\(getpid())"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else {
            throw LockstepError("cannot write \(tmp): \(String(cString: strerror(errno)))",
                                hint: "check that \(dir.isEmpty ? "." : dir) exists and is writable, or choose another --checkpoint-dir")
        }
        for bytes in parts where bytes.count > 0 {
            var off = 0
            while off < bytes.count {
                let n = Foundation.write(fd, bytes.baseAddress! + off, bytes.count - off)
                if n <= 0 {
                    let err = String(cString: strerror(errno))
                    close(fd)
                    unlink(tmp)
                    throw LockstepError("cannot write \(path): \(err); the previous file is untouched",
                                        hint: "free disk space or choose another --checkpoint-dir")
                }
                off += n
            }
        }
        if fsync(fd) != 0 {
            let err = String(cString: strerror(errno))
            close(fd); unlink(tmp)
            throw LockstepError("cannot sync \(path): \(err); the previous file is untouched", hint: "check the disk")
        }
        close(fd)
        guard rename(tmp, path) == 0 else {
            let err = String(cString: strerror(errno))
            unlink(tmp)
            throw LockstepError("cannot rename \(tmp) to \(path): \(err)", hint: "check permissions on the directory")
        }
        let dfd = open(dir.isEmpty ? "." : dir, O_RDONLY)
        if dfd >= 0 { fsync(dfd); close(dfd) }
    }
}

/// Writes all of `bytes` at the end of the open file `fd`; on failure (a full disk) cuts what
/// got written, so the file ends with a whole record, and throws the error with the fix.
public func appendChecked(_ bytes: [UInt8], to fd: Int32, path: String) throws {
    var off = 0
    while off < bytes.count {
        let n = bytes.withUnsafeBytes { Foundation.write(fd, $0.baseAddress! + off, bytes.count - off) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else {
            let err = String(cString: strerror(errno))
            ftruncate(fd, lseek(fd, 0, SEEK_CUR) - off_t(off))
            throw LockstepError("cannot append to \(path): \(err); the run stopped, its last checkpoint is intact",
                                hint: "free disk space, then rerun the same command with --resume: it continues to the same bits")
        }
        off += n
    }
}
