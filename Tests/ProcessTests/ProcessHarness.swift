import ClusterProtocol
import Foundation
import Numerics
import XCTest

/// Starts the real built `coord` and `worker` binaries, tracks exactly the pids it starts, and
/// kills only those. Output goes to files in a scratch directory.
final class ProcessHarness {
    let dir: String
    let bin: String
    private(set) var started: [Process] = []

    init() {
        dir = NSTemporaryDirectory() + "lockstep-proc-\(UUID().uuidString)"
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        // The test runner lives beside the built executables (.build/<triple>/debug/).
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        bin = ProcessInfo.processInfo.environment["LOCKSTEP_BIN"] ?? URL(fileURLWithPath: exe).deletingLastPathComponent().path
    }

    /// The numerics a real worker of this build announces (one BLAS thread per shard).
    static var workerNumerics: String {
        BLAS.setThreads(1)
        return NumericsIdentity.current().encoded
    }

    /// Test options shared by every run: small, dropout on, clipping active.
    static func options(steps: Int) -> [String] {
        ["--steps", "\(steps)", "--synthetic-sequences", "96", "--hidden", "16", "--min-length", "5", "--max-length", "25",
         "--batch-size", "16", "--shard-size", "4", "--dropout", "0.3", "--max-norm", "0.05", "--seed", "5", "--checkpoint-every", "4"]
    }

    @discardableResult
    func start(_ program: String, _ args: [String], name: String, env: [String: String] = [:]) throws -> Process {
        try start(path: bin + "/" + program, args, name: name, env: env)
    }

    /// Any executable (e.g. /bin/sh to place a binary in a cgroup first), tracked the same way.
    @discardableResult
    func start(path: String, _ args: [String], name: String, env: [String: String] = [:]) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        if !env.isEmpty { p.environment = ProcessInfo.processInfo.environment.merging(env) { $1 } }
        _ = FileManager.default.createFile(atPath: log(name), contents: nil)
        _ = FileManager.default.createFile(atPath: out(name), contents: nil)
        p.standardError = FileHandle(forWritingAtPath: log(name))
        p.standardOutput = FileHandle(forWritingAtPath: out(name))
        try p.run()
        started.append(p)
        return p
    }

    nonisolated(unsafe) static var references: [Int: String] = [:]

    /// The `--local` reference hash for `steps` steps of the test options (computed once per run).
    func reference(steps: Int, file: StaticString = #filePath, line: UInt = #line) throws -> String {
        if let r = ProcessHarness.references[steps] { return r }
        let p = try start("coord", ["start", "--local", "--checkpoint-dir", dir + "/ref\(steps)"] + ProcessHarness.options(steps: steps), name: "ref\(steps)")
        XCTAssertEqual(wait(p, timeout: 120), 0, text(log("ref\(steps)")), file: file, line: line)
        let r = try XCTUnwrap(hash("ref\(steps)"), text(log("ref\(steps)")), file: file, line: line)
        ProcessHarness.references[steps] = r
        return r
    }

    func log(_ name: String) -> String { dir + "/\(name).err" }
    func out(_ name: String) -> String { dir + "/\(name).out" }
    func text(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }

    func kill9(_ p: Process) {
        if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        p.waitUntilExit()
    }

    /// Waits for `p` to exit; kills it and fails when it takes longer than `timeout` seconds.
    func wait(_ p: Process, timeout: Double, file: StaticString = #filePath, line: UInt = #line) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while p.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        if p.isRunning {
            kill9(p)
            XCTFail("process \(p.executableURL!.lastPathComponent) \(p.arguments!.joined(separator: " ")) did not finish in \(timeout)s", file: file, line: line)
            return nil
        }
        return p.terminationStatus
    }

    /// Polls until `condition` holds or `timeout` passes.
    @discardableResult
    func until(_ timeout: Double, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline { if condition() { return true }; Thread.sleep(forTimeInterval: 0.05) }
        return condition()
    }

    func hash(_ name: String) -> String? {
        text(out(name)).split(separator: "\n").first { $0.hasPrefix("final weights sha256: ") }.map { String($0.dropFirst(22)) }
    }

    /// The endpoint the coordinator logged ("listening on tcp://…").
    func endpoint(_ name: String) -> String? {
        var found: String?
        until(30) {
            if let r = text(log(name)).range(of: "listening on ") {
                found = String(text(log(name))[r.upperBound...].prefix { $0 != ";" && $0 != "\n" })
            }
            return found != nil
        }
        return found
    }

    /// A plain TCP connection to the port of `endpoint` (tcp://127.0.0.1:PORT); -1 if refused.
    func rawConnect(_ endpoint: String) -> Int32 {
        let port = UInt16(endpoint.split(separator: ":").last!)!
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let ok = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if ok != 0 { close(fd); return -1 }
        return fd
    }

    func metricsLines(_ checkpointDir: String) -> [String] {
        text(checkpointDir + "/metrics.jsonl").split(separator: "\n").map(String.init)
    }

    /// At a test's end: kills what is still running, and removes the scratch dir unless the test
    /// failed (then says where its logs are).
    func finish(_ testRun: XCTestRun?) {
        if let run = testRun, run.failureCount > 0 {
            print("logs of the failed test kept in \(dir)")
            for p in started where p.isRunning { kill9(p) }
        } else {
            cleanUp()
        }
    }

    /// Kills every process this harness started that is still running; removes the scratch dir.
    func cleanUp() {
        for p in started where p.isRunning { kill9(p) }
        try? FileManager.default.removeItem(atPath: dir)
    }
}
