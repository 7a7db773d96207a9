import ArgumentParser
import Foundation
import LockstepLog
import Logging
import Observe
import Training

@main
struct Coord: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coord",
        abstract: "Lockstep coordinator: trains a BiLSTM sequence labeller with bit-reproducible results.",
        discussion: """
        The final weights' SHA-256 depends on exactly these: the options that define the math \
        (model, batch and shard sizes, optimizer, clipping, schedule, class weights, validation \
        split, --init weights, seed, non-finite policy, --numerics) and the data. With \
        --numerics portable (the default: Lockstep's own kernels, one fixed chain of fused \
        multiply-adds per element) it depends on nothing else: the same hash on any x86-64 or \
        ARM64 CPU, whatever vector path the kernels take. With --numerics openblas it also \
        depends on the numerics printed under the hash (OpenBLAS version and the kernel it \
        picked for the CPU, overridable with OPENBLAS_CORETYPE; the build). It never depends on \
        the number of workers or threads, on crashes, or on stop-and-resume: workers whose \
        numerics differ are refused, or pin the coordinator's kernel. `coord start --local` is \
        the single-process reference every cluster run reproduces.
        """,
        subcommands: [Start.self, Eval.self, Predict.self, Export.self, DataCommand.self, Synthetic.self, Report.self, Status.self, Grad.self, Keygen.self])
}

/// Prints a user-facing error and exits 1 (argument errors go through ArgumentParser: exit 64).
func fail(_ error: Error) -> Never {
    LockstepLog.error(error)
    Foundation.exit(1)
}

/// `--log-level` and `--log-format`, on every command that runs for long.
struct LogOptions: ParsableArguments {
    @Option(help: "Least level of the lines logged: trace, debug, info, notice, warning, error or critical (default info; key log-level in a --config file).")
    var logLevel: String?
    @Option(help: "text (for people) or json (one object a line: ts, level, role, pid, step where known, message, hint on errors) (default text; key log-format in a --config file).")
    var logFormat: String?

    func validate() throws { try LogOptions.check(level: logLevel, format: logFormat, from: "--") }

    /// Refuses an unknown level or format; `from` is "--" for options, or the config file's name.
    static func check(level: String?, format: String?, from: String) throws {
        let (l, f) = from == "--" ? ("--log-level", "--log-format") : ("\(from): key 'log-level'", "\(from): key 'log-format'")
        if let level, Logger.Level(rawValue: level) == nil {
            throw ValidationError("\(l) must be one of \(Logger.Level.names.joined(separator: ", ")) (got \(level.prefix(40)))")
        }
        if let format, LogFormat(rawValue: format) == nil { throw ValidationError("\(f) must be text or json (got \(format.prefix(40)))") }
    }

    /// Sets up the log: these options, else the config file's keys, else info and text.
    func setup(role: String, fileLevel: String? = nil, fileFormat: String? = nil) {
        let format = LogFormat(rawValue: logFormat ?? fileFormat ?? "text") ?? .text
        LockstepLog.setup(role: role, level: Logger.Level(rawValue: logLevel ?? fileLevel ?? "info") ?? .info, format: format)
        if format == .json { ProgressLine.sink = { LockstepLog.logger.info("\($0)", metadata: ["event": "progress"]) } }
    }
}
