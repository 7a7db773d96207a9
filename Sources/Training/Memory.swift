import Foundation

/// What this process may allocate, so that a declared size too large is refused with a reason
/// before the allocation that would abort: the least of physical memory, the address-space
/// limit (`ulimit -v`, `prlimit --as`) and the cgroup's `memory.max`.
public enum Memory {
    /// Tests set a small limit here instead of shrinking the test process's own.
    nonisolated(unsafe) public static var testLimit: Int? = nil

    public static var limit: Int {
        if let testLimit { return testLimit }
        var best = Int(sysconf(Int32(_SC_PHYS_PAGES))) * Int(sysconf(Int32(_SC_PAGESIZE)))
        var rl = rlimit()
        if getrlimit(Int32(RLIMIT_AS.rawValue), &rl) == 0, rl.rlim_cur < UInt64(Int.max) {
            best = min(best, Int(rl.rlim_cur))
        }
        if let s = try? String(contentsOfFile: "/sys/fs/cgroup/memory.max", encoding: .utf8),
           let v = Int(s.trimmingCharacters(in: .whitespacesAndNewlines)) {
            best = min(best, v)
        }
        return best
    }

    public static func gib(_ bytes: Int) -> String { String(format: "%.1f GiB", Double(bytes) / Double(1 << 30)) }

    /// Throws when `bytes` cannot be had: `what` names the file and part that asked for it.
    public static func check(_ bytes: Int, for what: String) throws {
        let have = limit
        guard bytes <= have else {
            throw LockstepError("\(what) needs \(gib(bytes)) of memory, more than this process may use (\(gib(have)))",
                                hint: "train on a machine with more memory, or split the data into smaller files")
        }
    }
}
