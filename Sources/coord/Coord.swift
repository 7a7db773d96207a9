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
        (model, batch and shard sizes, optimizer, clipping, schedule, --init weights, seed, \
        non-finite policy, --numerics), the data, and, with --numerics openblas (the default), \
        the numerics printed under the hash (OpenBLAS version and the kernel it picked for the \
        CPU, overridable with OPENBLAS_CORETYPE; the build). With --numerics portable it depends \
        on nothing else: the same on any CPU with FMA. It never depends on the number of workers \
        or threads, on crashes, or on stop-and-resume: workers whose numerics differ are \
        refused, or pin the coordinator's kernel. `coord start --local` is the \
        single-process reference every cluster run reproduces.
        """,
        subcommands: [Start.self, Eval.self, Predict.self, DataCommand.self, Synthetic.self, Report.self, Status.self, Grad.self, Keygen.self])
}

/// Prints a user-facing error and exits 1 (argument errors go through ArgumentParser: exit 64).
func fail(_ error: Error) -> Never {
    LockstepLog.error(error)
    Foundation.exit(1)
}

/// `--log-level` and `--log-format`, on every command that runs for long.
struct LogOptions: ParsableArguments {
    @Option(help: "Least level of the lines logged: trace, debug, info, notice, warning, error or critical (default info).")
    var logLevel: String = "info"
    @Option(help: "text (for people) or json (one object a line: ts, level, role, pid, step where known, message, hint on errors) (default text).")
    var logFormat: String = "text"

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level must be one of \(Logger.Level.names.joined(separator: ", ")) (got \(logLevel))")
        }
        guard LogFormat(rawValue: logFormat) != nil else { throw ValidationError("--log-format must be text or json (got \(logFormat))") }
    }

    func setup(role: String) {
        let format = LogFormat(rawValue: logFormat) ?? .text
        LockstepLog.setup(role: role, level: Logger.Level(rawValue: logLevel) ?? .info, format: format)
        if format == .json { ProgressLine.sink = { LockstepLog.logger.info("\($0)", metadata: ["event": "progress"]) } }
    }
}
