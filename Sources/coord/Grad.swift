import ArgumentParser
import BiLSTM
import Datasets
import Formats
import Foundation
import Numerics
import Training

struct Grad: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "One forward/backward of a checkpoint on a whole data file, written as safetensors.",
        discussion: """
        Writes `loss` (mean NLL over valid frames), `logprobs` [B, T, C] in the file's sequence \
        order (0 on padding; T is the longest sequence, which may be less than the file's Lmax — \
        `coord predict` writes the file's own width), and `grad.<name>` for every parameter (the gradient of that mean). \
        Reads Lockstep checkpoints and weights saved from PyTorch (shape inferred from the names). \
        The tool for comparing Lockstep with PyTorch tensor by tensor.
        """)

    @Option(help: "Checkpoint (.safetensors) with the weights.")
    var checkpoint: String
    @Option(help: "Data (.npz) to run as one batch.")
    var data: String
    @Option(help: "Output .safetensors file.")
    var out: String
    @Option(help: "Apply dropout with this probability (default: none, as in evaluation).")
    var dropout: Float?
    @Option(help: "Seed of the dropout masks (with --dropout).")
    var seed: UInt64 = 1
    @Option(help: "Step number keyed into the dropout masks (with --dropout).")
    var step: Int = 0

    func validate() throws {
        if let d = dropout, !(d >= 0 && d < 1) { throw ValidationError("--dropout must be in [0, 1)") }
        func canonical(_ p: String) -> String {
            URL(fileURLWithPath: p).resolvingSymlinksInPath().standardizedFileURL.path
        }
        if canonical(out) == canonical(checkpoint) {
            throw ValidationError("--out \(out) is the --checkpoint itself: writing there would replace the weights. HINT: choose another --out")
        }
    }

    func run() throws {
        do {
            BLAS.setThreads(1)
            let ck = try Checkpoint.load(path: checkpoint)
            var model = ck.model
            model.dropout = dropout ?? 0
            let set = try Dataset.load(npz: data, classes: model.classes)
            guard set.inputSize == model.inputSize else {
                throw LockstepError("\(data): x has d_in = \(set.inputSize) but the checkpoint's model takes \(model.inputSize)",
                                    hint: "use data with the model's input width")
            }
            let key = dropout != nil ? Dropout.Key(seed: seed, step: step) : nil
            let st = GradientReport.compute(model: model, params: ck.params, data: set, dropout: key)
            try st.write(atomically: out)
            print("loss \(st.tensors["loss"]!.floats[0]) over \(st.metadata["frames"]!) frames; wrote \(out)")
        } catch { fail(error) }
    }
}
