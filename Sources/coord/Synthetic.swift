import ArgumentParser
import Datasets
import FileIO
import Foundation
import Training

struct Synthetic: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write sequences of the built-in synthetic task to an .npz (x, lengths, y).",
        discussion: """
        Sequence i of the task is a pure function of (--seed, i): `coord start` without --data \
        trains on sequences 0..<--synthetic-sequences (2048 by default), so sequences from there \
        on are held out. This writes --count sequences from --first, for --valid-data, \
        `coord eval` or `coord predict` (e.g. --first 2048 --count 256 for validation, --first \
        2304 --count 256 for a test set). The task options must match the training run's.
        """)

    @Option(help: "Output .npz (written atomically).")
    var out: String
    @Option(help: "The first sequence id (default 2048: the first one the default training run does not use).")
    var first = 2048
    @Option(help: "Number of sequences (default 256).")
    var count = 256
    @Option(help: "Seed of the task: the training run's --seed (default 1).")
    var seed: UInt64 = 1
    @Option(help: "Input features per frame, d_in (default 16).")
    var syntheticInput = 16
    @Option(help: "Number of classes (default 8).")
    var syntheticClasses = 8
    @Option(help: "Shortest sequence (default 20).")
    var minLength = 20
    @Option(help: "Longest sequence (default 100).")
    var maxLength = 100

    var task: SyntheticTask {
        SyntheticTask(sequences: count, inputSize: syntheticInput, classes: syntheticClasses, minLength: minLength, maxLength: maxLength)
    }

    func validate() throws {
        var p = task.problems()
        if first < 0 { p.append("--first must be >= 0 (got \(first))") }
        if first > Int(UInt32.max) - count { p.append("--first + --count must stay below \(UInt32.max)") }
        if !p.isEmpty { throw ValidationError(p.joined(separator: "\n")) }
    }

    func run() throws {
        do {
            let data = task.generate(seed: seed, firstId: first, count: count)
            try AtomicFile.write(data.npzBytes(), to: out)
            print("wrote \(out): sequences \(first)..<\(first + count) of the synthetic task (seed \(seed)), \(data.frames) frames, d_in \(syntheticInput), \(syntheticClasses) classes")
        } catch { fail(error) }
    }
}
