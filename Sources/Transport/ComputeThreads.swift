import Foundation

/// N threads of our own that take jobs in order (GCD would run no more jobs at once than there
/// are cores, whatever `--threads` says).
final class ComputeThreads: @unchecked Sendable {
    private let condition = NSCondition()
    private var jobs: [() -> Void] = []

    init(count: Int) {
        for i in 0..<max(count, 1) {
            let t = Thread { [self] in run() }
            t.name = "lockstep.compute-\(i)"
            t.start()
        }
    }

    func submit(_ job: @escaping () -> Void) {
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    private func run() {
        while true {
            condition.lock()
            while jobs.isEmpty { condition.wait() }
            let job = jobs.removeFirst()
            condition.unlock()
            job()
        }
    }
}
