import Formats
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
        if let v = cgroupLimit { best = min(best, v) }
        return best
    }

    /// The memory limit of this process's cgroup: v2 `memory.max`, or v1 `memory.limit_in_bytes`
    /// of the memory controller's group (from /proc/self/cgroup); nil when unlimited.
    static var cgroupLimit: Int? {
        func read(_ path: String) -> Int? {
            (try? String(contentsOfFile: path, encoding: .utf8)).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        }
        var found: [Int] = []
        if let v = read("/sys/fs/cgroup/memory.max") { found.append(v) }
        if let groups = try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8) {
            for line in groups.split(separator: "\n") {
                let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
                guard parts.count == 3 else { continue }
                if parts[1].split(separator: ",").contains("memory"), let v = read("/sys/fs/cgroup/memory\(parts[2])/memory.limit_in_bytes") {
                    found.append(v)
                } else if parts[1].isEmpty, parts[2] != "/", let v = read("/sys/fs/cgroup\(parts[2])/memory.max") {
                    found.append(v)
                }
            }
        }
        // v1 says "no limit" with a huge number (a page-rounded Int64.max).
        return found.filter { $0 < 1 << 60 }.min()
    }

    /// This process's peak resident set in bytes (VmHWM: unlike getrusage's ru_maxrss, it is not
    /// inherited across fork and exec from a large parent).
    public static var peakResident: Int {
        guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = s.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
              let kb = Int(line.split(separator: " ").dropFirst().first ?? "") else { return 0 }
        return kb * 1024
    }

    public static func gib(_ bytes: Int) -> String { MemoryBudget.gib(bytes) }

    /// What this process may allocate now, for the decoders.
    public static var budget: MemoryBudget { MemoryBudget(bytes: limit) }

    /// Throws when `bytes` cannot be had: `what` names the file and part that asked for it.
    public static func check(_ bytes: Int, for what: String) throws { try budget.check(bytes, for: what) }
}
