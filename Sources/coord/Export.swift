import ArgumentParser
import FileIO
import Foundation
import OnnxExport
import Training

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a checkpoint as an ONNX model (opset 17) for serving, e.g. with ONNX Runtime.",
        discussion: """
        The graph is batch-first like the .npz: inputs `x` float32 [N, T, d_in] and `lengths` \
        int64 [N], output `logprobs` float32 [N, T, C]. Frames past a sequence's length are not \
        meaningful (the loss never reads them): read the first lengths[i] frames of sequence i. \
        Each LSTM layer is one ONNX LSTM node with sequence_lens, so the reverse direction starts \
        at each sequence's own last frame. Every model Lockstep trains exports: stacked \
        bidirectional, unidirectional, and the split arch (two LSTM chains, forward and reverse, \
        concatenated at the head). scripts/check-onnx compares ONNX Runtime's log-probabilities \
        with `coord predict --logprobs` and times both.
        """)

    @Option(help: "The checkpoint to export (checkpoint.safetensors, best.safetensors, or a PyTorch state_dict saved as safetensors with the seed's names).")
    var checkpoint: String
    @Option(help: "The .onnx file to write (atomically; refused when it is a device, directory or link).")
    var out: String

    func validate() throws {
        func canonical(_ p: String) -> String { URL(fileURLWithPath: p).resolvingSymlinksInPath().standardizedFileURL.path }
        if canonical(out) == canonical(checkpoint) {
            throw ValidationError("--out \(out) is the --checkpoint file itself. HINT: choose another --out, e.g. model.onnx")
        }
    }

    func run() throws {
        do {
            let ck = try Checkpoint.load(path: checkpoint)
            let m = ck.model
            var doc = "Lockstep BiLSTM: \(m.layers) layer(s), hidden \(m.hidden), \(m.arch.rawValue)\(m.bidirectional ? "" : " unidirectional"), d_in \(m.inputSize), \(m.classes) classes; weights SHA-256 \(ck.params.sha256)"
            if let step = ck.metadata["step"] { doc += "; step \(step)" }
            let bytes = try OnnxExport.export(model: m, params: ck.params, producerVersion: Checkpoint.format, docString: doc)
            try SafeFile.checkOutput(out, what: "--out")
            try AtomicFile.write(bytes, to: out)
            print("wrote \(out): ONNX opset \(OnnxExport.opset), \(bytes.count) bytes; inputs x float32 [N, T, \(m.inputSize)], lengths int64 [N]; output logprobs float32 [N, T, \(m.classes)]")
            print("weights sha256: \(ck.params.sha256)")
        } catch { fail(error) }
    }
}
