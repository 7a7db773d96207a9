import Formats
import Foundation

// Every file Lockstep reads whole, maps, replaces or appends to goes through here.

extension Bytes {
    /// Maps `path` read-only: its pages are the page cache's, so a large file costs no copy.
    package static func map(path: String) throws -> Bytes {
        let (fd, size) = try SafeFile.openRegular(path, what: "the data file")
        defer { close(fd) }
        return try map(fd: fd, size: size, path: path)
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
        try decode(try SafeFile.read(path, what: "the safetensors file", maxBytes: 1 << 40), path: path)
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
        try SafeFile.checkOutput(path, what: "the output")
        unlink(tmp)  // a leftover of a crash, or something planted: never written through
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
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

/// Opening files that came from outside: never through a symbolic link, never blocking on a
/// FIFO or a device, and only when they are regular files.
public enum SafeFile {
    /// Opens `path` read-only, refusing a symlink (`O_NOFOLLOW`), a FIFO, a device or a
    /// directory (`O_NONBLOCK`, then `fstat`). `what` names the file's role in the error.
    public static func openRegular(_ path: String, what: String) throws -> (fd: Int32, size: Int) {
        try openChecked(path, O_RDONLY, what: what, cannot: "cannot read \(what)", hint: "give a regular file, not a link to it")
    }

    /// `open(2)` with `flags` plus no link, no blocking, close-on-exec; then `fstat` must say a
    /// regular file. The errors start with `cannot` and end with `hint`.
    private static func openChecked(_ path: String, _ flags: Int32, what: String, cannot: String, hint: String) throws -> (fd: Int32, size: Int) {
        let fd = open(path, flags | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0o644)
        guard fd >= 0 else {
            let e = errno
            throw LockstepError("\(path): \(cannot) (\(e == ELOOP ? "it is a symbolic link" : String(cString: strerror(e))))",
                                hint: e == ELOOP ? hint : "check the path, and that its directory is readable and writable")
        }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            close(fd)
            throw LockstepError("\(path): \(what) is not a regular file", hint: hint)
        }
        return (fd, Int(st.st_size))
    }

    /// The whole of a regular file of at most `maxBytes`, read without following a link.
    public static func read(_ path: String, what: String, maxBytes: Int) throws -> [UInt8] {
        let (fd, size) = try openRegular(path, what: what)
        defer { close(fd) }
        guard size <= maxBytes else {
            throw LockstepError("\(path): \(what) has \(size) bytes, more than the \(maxBytes) it may have", hint: "check that this is the right file")
        }
        var out = [UInt8](repeating: 0, count: size)
        var done = 0
        while done < size {
            let n = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, size - done, off_t(done)) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { throw LockstepError("\(path): \(what) could not be read whole (\(n < 0 ? String(cString: strerror(errno)) : "it got shorter"))", hint: "check the file") }
            done += n
        }
        return out
    }

    /// Opens (creating it, 0644) a file Lockstep appends to in a run directory, never through a
    /// link and only when it is a regular file; `truncate` empties it.
    public static func openForAppend(_ path: String, truncate: Bool, what: String) throws -> Int32 {
        var pre = stat()
        if lstat(path, &pre) == 0, (pre.st_mode & S_IFMT) != S_IFREG {
            throw LockstepError("\(path) (\(what)) is not a regular file (a link, a FIFO, a device or a directory)",
                                hint: "move it away: Lockstep writes only regular files in a run directory")
        }
        return try openChecked(path, O_RDWR | O_APPEND | O_CREAT | (truncate ? O_TRUNC : 0), what: what, cannot: "cannot write \(what)",
                               hint: "move it away: Lockstep writes only regular files in a run directory").fd
    }

    /// Refuses an output path that exists and is not a regular file (a device, a FIFO, a
    /// directory, a symbolic link): Lockstep never writes through or replaces one.
    public static func checkOutput(_ path: String, what: String) throws {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        let kind: String
        switch st.st_mode & S_IFMT {
        case S_IFREG: return
        case S_IFLNK: kind = "a symbolic link"
        case S_IFDIR: kind = "a directory"
        case S_IFCHR, S_IFBLK: kind = "a device"
        case S_IFIFO: kind = "a FIFO"
        default: kind = "not a regular file"
        }
        throw LockstepError("\(path): \(what) exists and is \(kind); Lockstep writes only regular files",
                            hint: "choose another path, or remove what is there")
    }
}
