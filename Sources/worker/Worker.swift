import ArgumentParser
import Cluster
import Foundation

@main
struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Lockstep worker: computes shard gradients for a coordinator.",
        subcommands: [Join.self])
}

struct Join: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Connect to a coordinator and work until it says stop.",
        discussion: """
        The worker first proves its numerics (a fixed tiny forward/backward hashed with its BLAS
        core); a coordinator with a different hash refuses it. It reconnects with back-off when
        the coordinator goes away, so a coordinator restarted with --resume picks it up again.
        Exit codes: 0 stopped by the coordinator, 2 refused, 1 error.
        """)

    @Argument(help: "Coordinator address: HOST[:PORT] (port 5555 by default) or a tcp:// endpoint.")
    var address: String
    @Option(help: "OpenBLAS threads in this worker (processes are the unit of parallelism: default 1).")
    var threads = 1
    @Option(help: .hidden) var parentPid: Int32?
    @Option(help: .hidden) var debugFingerprint: String?
    @Option(help: .hidden) var debugDelay: Double = 0

    var endpoint: String {
        if address.hasPrefix("tcp://") { return address }
        return address.contains(":") ? "tcp://\(address)" : "tcp://\(address):5555"
    }

    func validate() throws {
        if !(1...256).contains(threads) { throw ValidationError("--threads must be in 1...256") }
        let parts = endpoint.dropFirst(6).split(separator: ":")
        guard parts.count == 2, let port = Int(parts[1]), (1...65535).contains(port) else {
            throw ValidationError("cannot read the address \(address). HINT: give HOST:PORT, e.g. 127.0.0.1:5555")
        }
    }

    func run() throws {
        var o = WorkerClient.Options(endpoint: endpoint)
        o.threads = threads
        o.parentPid = parentPid
        o.fingerprint = debugFingerprint
        o.delayPerShard = debugDelay
        let pid = getpid()
        do {
            let client = try WorkerClient(o, log: { FileHandle.standardError.write(Data("[worker \(pid)] \($0)\n".utf8)) })
            Foundation.exit(try client.run())
        } catch {
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            Foundation.exit(1)
        }
    }
}
