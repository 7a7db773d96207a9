import ArgumentParser
import Foundation
import Training

@main
struct Coord: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coord",
        abstract: "Lockstep coordinator: trains a BiLSTM sequence labeller with bit-reproducible results.",
        discussion: """
        The final weights' SHA-256 depends on exactly these: the options that define the math \
        (model, batch and shard sizes, optimizer, clipping, seed, non-finite policy), the data, \
        and the numerics printed under the hash (OpenBLAS version and the kernel it picked for \
        the CPU, overridable with OPENBLAS_CORETYPE; the build). It does not depend on the number \
        of workers or threads, on crashes, or on stop-and-resume: workers whose numerics differ \
        are refused, or pin the coordinator's kernel. `coord start --local` is the \
        single-process reference every cluster run reproduces.
        """,
        subcommands: [Start.self, Eval.self, Predict.self, Synthetic.self, Report.self, Status.self, Grad.self, Keygen.self])
}

/// Prints a user-facing error and exits 1 (argument errors go through ArgumentParser: exit 64).
func fail(_ error: Error) -> Never {
    FileHandle.standardError.write(Data("error: \(error)\n".utf8))
    Foundation.exit(1)
}
