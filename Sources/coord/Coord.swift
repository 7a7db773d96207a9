import ArgumentParser
import Foundation
import Training

@main
struct Coord: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coord",
        abstract: "Lockstep coordinator: trains a BiLSTM sequence labeller with bit-reproducible results.",
        discussion: """
        The final weights' SHA-256 depends on the config, the data and the CPU's OpenBLAS kernel \
        (logged as "BLAS …"; workers must match the coordinator's): not on the number of workers \
        or threads, on crashes, or on stop-and-resume. `coord start --local` is the \
        single-process reference every cluster run reproduces.
        """,
        subcommands: [Start.self, Grad.self, Keygen.self])
}

/// Prints a user-facing error and exits 1 (argument errors go through ArgumentParser: exit 64).
func fail(_ error: Error) -> Never {
    FileHandle.standardError.write(Data("error: \(error)\n".utf8))
    Foundation.exit(1)
}
