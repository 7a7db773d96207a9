import ArgumentParser
import ClusterProtocol
import Formats
import Foundation
import LockstepLog
import Logging
import Numerics
import Training
import Transport

@main
struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Lockstep worker: computes shard gradients for a coordinator.",
        subcommands: [Join.self, Relay.self, WorkerKeygen.self])
}

struct Join: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Connect to a coordinator and work until it says stop.",
        discussion: """
        The worker first proves its numerics: numerics mode, OpenBLAS kernel and version, BLAS \
        threads per shard, build, and the hash of a fixed tiny forward/backward. A coordinator \
        whose numerics differ refuses it, naming each difference. When only the BLAS kernel \
        differs and this CPU can run the coordinator's (its instruction-set flags), the worker \
        restarts itself pinned to that kernel (OPENBLAS_CORETYPE) and joins. It reconnects with back-off when \
        the coordinator goes away, so a coordinator restarted with --resume picks it up again. \
        A loopback coordinator admits only its own user's workers: they read the run's join key \
        (a 0600 file the coordinator writes) by themselves. \
        Exit codes: 0 stopped by the coordinator, 2 refused (numerics, or its key), 1 error.
        """)

    @OptionGroup var up: Upstream
    @Option(help: "Shards this worker computes at once, each on a thread of its own with single-threaded BLAS: the bits do not depend on it (default 1). Over TCP a worker of 2 or more threads is given aligned blocks of shards (the largest power of two up to this), adds each block in the reduction tree's order and sends one sum, so the coordinator takes in fewer gradients: run one worker per host with --threads set to its cores.")
    var threads = 1
    @Flag(help: "Over an ipc:// endpoint, send weights and gradients over the socket instead of through shared memory (/dev/shm).")
    var noSharedMemory = false
    @Option(help: "With shared memory: busy-wait up to this many milliseconds at each step barrier for the next step's weights, so the core stays warm (an idle VM core computed the next shard 5-15% slower). 0 sleeps at once; use 0 when this host has more workers than cores.")
    var barrierSpinMs: Double = 1000 * Timing.barrierSpin
    @Flag(help: "Talk to a coordinator that authenticates no one (one started with --insecure). Without it, a worker with no keys (no --curve-keys, no join key) leaves a coordinator that lets it in unauthenticated before reading any of its messages: something else may be listening there.")
    var insecure = false
    @Option(help: .hidden) var debugNumerics: [String] = []
    @Option(help: .hidden) var debugCpuFlags: String?
    @Option(help: .hidden) var debugBlasThreads: Int?
    @Option(help: .hidden) var debugDelay: Double = 0
    @Option(help: .hidden) var debugPoisonGradient: Float?

    func validate() throws {
        if !(1...256).contains(threads) { throw ValidationError("--threads must be in 1...256") }
        if !(barrierSpinMs >= 0 && barrierSpinMs <= 1000) { throw ValidationError("--barrier-spin-ms must be in 0...1000 (got \(barrierSpinMs))") }
    }

    func run() throws {
        var o = up.options(role: "worker")
        o.threads = threads
        o.insecure = insecure
        for kv in debugNumerics {
            let p = kv.split(separator: "=", maxSplits: 1).map(String.init)
            if p.count == 2 { o.numericsOverrides[p[0]] = p[1] }
        }
        o.cpuFlags = debugCpuFlags.map { Set($0.split(separator: " ").map(String.init)) }
        o.blasThreads = debugBlasThreads
        o.delayPerShard = debugDelay
        o.poisonGradient = debugPoisonGradient
        o.sharedMemory = !noSharedMemory
        o.barrierSpin = barrierSpinMs / 1000
        up.work(o) { try $0.curve = up.curve() }
    }
}

/// What `worker join` and `worker relay` share: the coordinator above, how to prove this
/// process to it, the data copy, and the logs.
struct Upstream: ParsableArguments {
    @Argument(help: "Coordinator address: HOST[:PORT] (port 5555 by default), or a tcp:// or ipc:// endpoint.")
    var address: String
    @Option(help: "CURVE: this worker's keypair file (from `worker keygen`); its public key must be on the coordinator's allow-list.")
    var curveKeys: String?
    @Option(help: "CURVE: the coordinator's public key: 40-character Z85, or the path of its .pub file.")
    var serverKey: String?
    @Option(help: "The run's join key file. By default a worker joining a loopback coordinator without --curve-keys reads the key that coordinator wrote for this user (see `coord start --help`); give the path when this worker's HOME or XDG_RUNTIME_DIR differs from the coordinator's.")
    var joinKey: String?
    @Option(help: "The run to join (the id `coord start` prints with its worker join command): a coordinator of any other run is left at once (exit 2), so a worker never works for a run it was not meant for.")
    var run: String?
    @Option(help: "This host's copy of the run's packed data (a directory from `coord data pack`, on a shared file system or copied here): the worker reads its sequences there instead of receiving them from the coordinator, when its content hash is the run's. Each shard's SHA-256 is checked on first use; a bad copy falls back to receiving sequences (same result).")
    var dataRoot: String?
    @Option(help: "With --data-root: the most MiB of sequences this worker keeps in memory once read (least recently used dropped first); its memory is about this plus the model. Sequences are read with pread, not mapped, so no file pages are held. 0 reads every sequence from the files (the OS page cache) each time. Default: 256, or an eighth of this process's memory limit (its cgroup's) when that is less.")
    var cacheMb: Int?
    @Option(help: "Least level of the lines logged: trace, debug, info, notice, warning, error or critical (default info).")
    var logLevel: String = "info"
    @Option(help: "text (for people) or json (one object a line: ts, level, role, pid, worker id, message, hint on errors) (default text).")
    var logFormat: String = "text"
    @Option(help: .hidden) var parentPid: Int32?
    @Flag(help: "Do not restart pinned to the coordinator's BLAS kernel when only the kernel differs: be refused instead.")
    var noPin = false

    var endpoint: String {
        if address.hasPrefix("tcp://") || address.hasPrefix("ipc://") { return address }
        return address.contains(":") ? "tcp://\(address)" : "tcp://\(address):5555"
    }

    func validate() throws {
        if endpoint.hasPrefix("ipc://") {
            guard endpoint.count > 6 else { throw ValidationError("ipc:// needs a socket path, e.g. ipc:///tmp/lockstep.sock") }
        } else {
            let parts = endpoint.dropFirst(6).split(separator: ":")
            guard parts.count == 2, let port = Int(parts[1]), (1...65535).contains(port) else {
                throw ValidationError("cannot read the address \(address). HINT: give HOST:PORT, e.g. 127.0.0.1:5555")
            }
        }
        if let run, UInt64(run, radix: 16) == nil { throw ValidationError("--run \(run.prefix(40)) is not a run id (up to 16 hexadecimal digits, as coord start prints it)") }
        if let mb = cacheMb, mb < 0 || mb > 1 << 24 { throw ValidationError("--cache-mb must be in 0...16777216 (MiB). HINT: 256 keeps 256 MiB of sequences") }
        if (curveKeys == nil) != (serverKey == nil) { throw ValidationError("--curve-keys and --server-key go together") }
        if joinKey != nil && curveKeys != nil { throw ValidationError("--join-key and --curve-keys are two ways to authenticate: give one") }
        if Logger.Level(rawValue: logLevel) == nil {
            throw ValidationError("--log-level must be one of \(Logger.Level.names.joined(separator: ", ")) (got \(logLevel))")
        }
        if LogFormat(rawValue: logFormat) == nil { throw ValidationError("--log-format must be text or json (got \(logFormat))") }
    }


    /// The client's options from these; logging set up for `role`.
    func options(role: String) -> WorkerClient.Options {
        keepLargeAllocationsInTheHeap()
        LockstepLog.setup(role: role, level: Logger.Level(rawValue: logLevel) ?? .info, format: LogFormat(rawValue: logFormat) ?? .text)
        var o = WorkerClient.Options(endpoint: endpoint)
        o.parentPid = parentPid
        o.pin = !noPin
        o.joinKeyPath = joinKey
        o.runId = run.flatMap { UInt64($0, radix: 16) }
        o.dataRoot = dataRoot
        o.cacheMB = cacheMb
        return o
    }

    /// The CURVE keys toward the coordinator, when given.
    func curve() throws -> (keys: CurveKeypair, serverKey: String)? {
        guard let curveKeys, let serverKey else { return nil }
        return (try CurveKeypair.read(curveKeys), try CurveKeypair.publicKey(serverKey))
    }

    /// Runs the client until the coordinator says stop; exits with its code (re-executing
    /// pinned to the coordinator's BLAS kernel when asked). `prepare` may throw a user error.
    func work(_ options: WorkerClient.Options, prepare: (inout WorkerClient.Options) throws -> Void) -> Never {
        var o = options
        do {
            try prepare(&o)
            let client = try WorkerClient(o, log: { LockstepLog.line($0) })
            let id = String(client.incarnation, radix: 16)
            LockstepLog.context = { ["worker": "\(id)"] }
            let code = try client.run()
            if code == 3, let kernel = client.pinKernel { try restart(pinnedTo: kernel) }
            Foundation.exit(code)
        } catch {
            LockstepLog.error(error)
            Foundation.exit(1)
        }
    }
}

struct Relay: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Join a coordinator as one wide worker and pass its work on to the workers that join here: the level of the reduction tree between hosts.",
        discussion: """
        The coordinator gives a relay aligned blocks of shards (subtrees of the fixed reduction \
        tree, the largest power of two up to --threads) as it does a worker of that many threads. \
        The relay hands them out to its own workers (`worker join` this relay's address; they may \
        take sub-blocks), adds what they send back in the subtree's own order, and sends one sum \
        up per block: the coordinator takes in one gradient per relay block instead of one per \
        shard, and the result has the bits of `coord start --local`. Relays nest (a relay may \
        join a relay). Workers joining a loopback --bind read this relay's join key by themselves; \
        beyond loopback use CURVE (--allow, with --listen-keys or --curve-keys as this relay's \
        server keypair: workers join with --server-key RELAY.pub) or --insecure. A relay keeps the sequences the \
        coordinator sends it, to pass on to workers without a copy of the data (--data-root \
        lets it read its own copy instead). \
        Exit codes: 0 stopped by the coordinator, 2 refused, 1 error.
        """)

    @OptionGroup var up: Upstream
    @Option(help: "Where this relay's workers join: tcp://HOST:PORT (tcp://127.0.0.1:0 picks a free port; the address is logged as 'relay listening on').")
    var bind: String
    @Option(help: "Shards this relay's workers compute at once, in all (the sum of their --threads): the coordinator gives it blocks of the largest power of two up to this. The bits do not depend on it.")
    var threads = 16
    @Option(help: "CURVE below: allow-list of the public keys of the workers that may join this relay (one 40-character Z85 key per line). Needs --listen-keys or --curve-keys.")
    var allow: String?
    @Option(help: "CURVE below: this relay's server keypair (from `worker keygen`; its workers join with --server-key of its .pub). Default: --curve-keys, the keypair it shows the coordinator.")
    var listenKeys: String?
    @Flag(help: "Accept workers at a --bind beyond loopback without authentication (a network you trust); a loopback --bind then takes no join key either, and its workers join with --insecure. Upstream, the relay may then talk to a coordinator started with --insecure.")
    var insecure = false
    @Option(help: "The most workers that may join this relay.")
    var maxWorkers = 256

    func validate() throws {
        if !(2...CoordinatorCore.maxThreads).contains(threads) { throw ValidationError("--threads must be in 2...\(CoordinatorCore.maxThreads): a relay of one shard at once sums nothing") }
        if let why = RouterShell.bindProblem(bind) { throw ValidationError(why) }
        if JoinKey.loopback(bind) == nil && !insecure && allow == nil {
            throw ValidationError("binding \(bind) exposes the relay beyond this machine without authentication. HINT: use CURVE (--curve-keys with --allow), bind tcp://127.0.0.1:PORT, or pass --insecure on a network you trust")
        }
        if allow != nil && (listenKeys ?? up.curveKeys) == nil {
            throw ValidationError("--allow needs this relay's server keypair. HINT: --listen-keys relay.key (from `worker keygen --out relay`), or --curve-keys")
        }
        if listenKeys != nil && allow == nil { throw ValidationError("--listen-keys needs --allow: the workers' public keys this relay admits") }
        if !(1...4096).contains(maxWorkers) { throw ValidationError("--max-workers must be in 1...4096") }
    }

    func run() throws {
        var o = up.options(role: "relay")
        o.threads = threads
        o.insecure = insecure
        var r = RelayServer.Options(bind: bind)
        r.authenticate = !insecure
        r.maxWorkers = maxWorkers
        up.work(o) { o in
            o.curve = try up.curve()
            if let allow, let keys = listenKeys ?? up.curveKeys {
                r.curve = (try CurveKeypair.read(keys), try CurveKeypair.allowList(allow))
            }
            o.relay = r
        }
    }
}

/// Replaces this process (same pid, same arguments) by one whose OpenBLAS loads `kernel`.
/// libzmq opens its descriptors close-on-exec, so the old connections end here.
func restart(pinnedTo kernel: String) throws -> Never {
    setenv("OPENBLAS_CORETYPE", kernel, 1)
    setenv(WorkerClient.pinEnvironment, kernel, 1)
    let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    let argv = CommandLine.arguments.map { strdup($0) } + [nil]
    execv(exe, argv)
    throw LockstepError("cannot restart \(exe) pinned to \(kernel): \(String(cString: strerror(errno)))")
}

struct WorkerKeygen: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keygen",
        abstract: "Write a CURVE keypair for a worker: NAME.key (secret, mode 0600) and NAME.pub.",
        discussion: "Add the line of NAME.pub to the coordinator's --allow file; join with --curve-keys NAME.key --server-key COORD.pub.")

    @Option(help: "Path prefix of the files to write.")
    var out = "worker"

    func run() throws {
        do { print(try CurveKeypair.keygen(out: out)) } catch {
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            Foundation.exit(1)
        }
    }
}
