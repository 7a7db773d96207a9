import ArgumentParser
import BiLSTM
import Datasets
import Formats
import Foundation
import Numerics
import Training

/// Options `eval` and `predict` share.
struct InferenceOptions: ParsableArguments {
    @Option(help: "Checkpoint with the weights: a Lockstep checkpoint (checkpoint.safetensors, best.safetensors) or a PyTorch state_dict saved as safetensors with the seed's names.")
    var checkpoint: String
    @Option(help: "Data (.npz): x float32 [N, Lmax, d_in], lengths int [N], and y int [N, Lmax] (-1 on padding).")
    var data: String
    @Option(help: "Sequences per forward batch (default 64). Memory grows with it, not with the file; the loss's last bits depend on it (sums are added per batch in a fixed tree), the predictions do not.")
    var batchSize = 64
    @Option(help: "Batches computed at once, each on a thread of its own with single-threaded BLAS: the results do not depend on it (default 1).")
    var threads = 1
    @Option(help: "portable or openblas: how products are computed (default: the checkpoint's, else portable).")
    var numerics: NumericsMode?

    /// The checkpoint and data, checked against each other, with this process set to compute in
    /// the option's numerics mode, else the one the checkpoint was trained with.
    func load(labels: Dataset.Labels) throws -> (Checkpoint, Dataset) {
        BLAS.setThreads(1)
        let (ck, set) = try Inference.load(checkpoint: checkpoint, data: data, labels: labels)
        BLAS.mode = numerics ?? ck.metadata["numerics"].map { $0.hasPrefix("portable") ? .portable : .openblas } ?? RunConfig().numerics
        return (ck, set)
    }

    func problems() -> [String] {
        var p: [String] = []
        if !(1...RunConfig.maxShardSize).contains(batchSize) { p.append("--batch-size must be in 1...\(RunConfig.maxShardSize) (got \(batchSize))") }
        if !(1...256).contains(threads) { p.append("--threads must be in 1...256 (got \(threads))") }
        return p
    }

    /// Sequences done, on stderr about once a second (and at the end).
    func progress(total: Int, what: String) -> (Int) -> Void {
        let started = Date()
        var last = Date.distantPast
        return { done in
            let now = Date()
            guard now.timeIntervalSince(last) >= 1 || done == total else { return }
            last = now
            let rate = Double(done) / max(now.timeIntervalSince(started), 1e-9)
            log(String(format: "%@: %d/%d sequences, %.0f sequences/s", what, done, total, rate))
        }
    }
}

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Evaluate a checkpoint on labelled data: loss, accuracy, per-class precision/recall/F1, confusion matrix.",
        discussion: """
        Forward only, no dropout, in batches (memory bounded by --batch-size). Prints frames, mean \
        NLL per frame, frame accuracy, a per-class table and the confusion matrix (rows: true \
        class, columns: predicted); --json prints one object instead. Frames labelled -1 are not \
        counted. The same checkpoint and data give the same figures at any --threads. For data \
        without labels use `coord predict`.
        """)

    @OptionGroup var inference: InferenceOptions
    @OptionGroup var logging: LogOptions
    @Flag(help: "Print one JSON object (frames, loss, accuracy, per_class, confusion) instead of tables.")
    var json = false

    func validate() throws {
        let p = inference.problems()
        if !p.isEmpty { throw ValidationError(p.joined(separator: "\n")) }
    }

    func run() throws {
        keepLargeAllocationsInTheHeap()
        logging.setup(role: "eval")
        do {
            let o = inference
            let (ck, set) = try o.load(labels: .forModel(
                o.checkpoint, missingHint: "eval needs labels; to label unlabelled data use `coord predict --checkpoint \(o.checkpoint) --data \(o.data) --out PRED.npz`"))
            log("eval: \(set.count) sequences, \(set.frames) frames of \(o.data) on the \(ck.model.hidden)-unit \(ck.model.layers)-layer model in \(o.checkpoint)")
            let out = try Inference.run(model: ck.model, params: ck.params, data: set, batchSize: o.batchSize, threads: o.threads,
                                    progress: o.progress(total: set.count, what: "eval"))
            guard out.sums.frames > 0 else {
                throw LockstepError("\(o.data): no frame has a label (every y on a valid frame is -1)", hint: "eval needs labelled frames; use `coord predict` for unlabelled data")
            }
            print(json ? try EvalReport.json(out.sums, checkpoint: o.checkpoint, data: o.data) : EvalReport.text(out.sums))
        } catch { fail(error) }
    }
}

/// How `eval` prints its figures.
enum EvalReport {
    static func text(_ s: EvalSums) -> String {
        func pct(_ v: Double?) -> String { v.map { String(format: "%6.2f%%", 100 * $0) } ?? "     -" }
        var out = String(format: "frames    %d\nloss      %.6f (mean NLL per frame)\naccuracy  %.4f%% (%d of %d frames)\n\n",
                         s.frames, s.loss, 100 * s.accuracy, s.correct, s.frames)
        let per = s.perClass
        out += "class  precision   recall       F1   support\n"
        for c in 0..<s.classes where per.truth[c] > 0 || per.predicted[c] > 0 || s.classes <= 64 {
            out += String(format: "%5d  %@  %@  %@  %8d\n", c, pct(per.precision(c)), pct(per.recall(c)), pct(per.f1(c)), per.truth[c])
        }
        guard s.classes <= EvalReport.widestMatrix else {
            return out + "\nconfusion matrix: \(s.confusion.count) non-zero cells of \(s.classes)×\(s.classes); --json lists them\n"
        }
        out += "\nconfusion (rows: true class, columns: predicted)\n"
        let width = max(5, String(s.confusion.values.max() ?? 0).count + 1)
        func cell(_ v: String) -> String { String(repeating: " ", count: max(0, width - v.count)) + v }
        out += "     " + (0..<s.classes).map { cell(String($0)) }.joined() + "\n"
        for t in 0..<s.classes {
            out += cell(String(t)) + (0..<s.classes).map { cell(String(s.cell(true: t, predicted: $0))) }.joined() + "\n"
        }
        return out
    }

    /// Classes up to which the confusion matrix is printed whole (and given dense in --json).
    static let widestMatrix = 32

    static func json(_ s: EvalSums, checkpoint: String, data: String) throws -> String {
        // JSON has no NaN: a figure that is not a number (weights gone non-finite) is null.
        func num(_ v: Double?) -> Any { v.flatMap { $0.isFinite ? $0 as Any : nil } ?? NSNull() }
        let per = s.perClass
        let perClass: [[String: Any]] = (0..<s.classes).map {
            ["class": $0, "precision": num(per.precision($0)), "recall": num(per.recall($0)), "f1": num(per.f1($0)), "support": per.truth[$0]]
        }
        // Dense rows for a readable matrix; [true, predicted, frames] triples beyond that.
        let confusion: Any = s.classes <= 256
            ? (0..<s.classes).map { t in (0..<s.classes).map { s.cell(true: t, predicted: $0) } }
            : s.confusion.keys.sorted().map { [$0 / s.classes, $0 % s.classes, s.confusion[$0]!] }
        let object: [String: Any] = ["checkpoint": checkpoint, "data": data, "frames": s.frames, "loss": num(s.loss),
                                     "accuracy": num(s.accuracy), "correct": s.correct, "per_class": perClass, "confusion": confusion]
        return String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self)
    }
}

struct Predict: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Label data with a checkpoint: writes the predicted class of every frame (and optionally log-probabilities).",
        discussion: """
        Writes an .npz with `pred` int64 [N, Lmax] (the argmax class; -1 on padding) and, with \
        --logprobs, `logprobs` float32 [N, Lmax, C] (0 on padding), in the input's sequence order \
        and Lmax. `y` in the input is optional; when present, accuracy is printed too. Forward \
        only, no dropout, in batches; the output is the same at any --threads or --batch-size.
        """)

    @OptionGroup var inference: InferenceOptions
    @OptionGroup var logging: LogOptions
    @Option(help: "Output .npz (written atomically).")
    var out: String
    @Flag(help: "Also write logprobs float32 [N, Lmax, C] (N·Lmax·C·4 bytes).")
    var logprobs = false

    func validate() throws {
        var p = inference.problems()
        func canonical(_ p: String) -> String { URL(fileURLWithPath: p).resolvingSymlinksInPath().standardizedFileURL.path }
        for (name, path) in [("--data", inference.data), ("--checkpoint", inference.checkpoint)] where canonical(out) == canonical(path) {
            p.append("--out \(out) is the \(name) file itself: writing there would replace it. HINT: choose another --out")
        }
        if !p.isEmpty { throw ValidationError(p.joined(separator: "\n")) }
    }

    func run() throws {
        keepLargeAllocationsInTheHeap()
        logging.setup(role: "predict")
        do {
            let o = inference
            let (ck, set) = try o.load(labels: .optional(o.checkpoint))
            if logprobs {
                try Memory.check(set.count * set.paddedLength * ck.model.classes * 4 * 2, for: "--logprobs of \(o.data)")
            }
            log("predict: \(set.count) sequences, \(set.frames) frames of \(o.data)")
            let result = try Inference.run(model: ck.model, params: ck.params, data: set, batchSize: o.batchSize, threads: o.threads,
                                       predictions: true, logprobs: logprobs, progress: o.progress(total: set.count, what: "predict"))
            try Inference.writePredictions(result, data: set, classes: ck.model.classes, to: out)
            print("wrote \(out): pred [\(set.count), \(set.paddedLength)]" + (logprobs ? ", logprobs [\(set.count), \(set.paddedLength), \(ck.model.classes)]" : ""))
            if result.sums.frames > 0 {
                print(String(format: "accuracy %.4f%% (%d of %d labelled frames), loss %.6f", 100 * result.sums.accuracy,
                             result.sums.correct, result.sums.frames, result.sums.loss))
            }
        } catch { fail(error) }
    }
}
