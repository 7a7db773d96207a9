import ArgumentParser
import BiLSTM
import Datasets
import FileIO
import Foundation
import Numerics
import Training

/// The engine benchmark: trains the standard config and reports valid frames/s, GFLOP/s,
/// inference frames/s and peak RSS, as one JSON line (scripts/bench adds PyTorch beside it).
@main
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lockstep-bench",
        abstract: "Benchmark Lockstep's engine on one thread (release build).")

    @Option(help: "Input features d_in.") var inputSize = 40
    @Option(help: "Hidden size H.") var hidden = 128
    @Option(help: "Layers.") var layers = 2
    @Option(help: "Classes.") var classes = 10
    @Option(help: "Sequences per batch.") var batchSize = 32
    @Option(help: "Shortest sequence.") var minLength = 20
    @Option(help: "Longest sequence.") var maxLength = 200
    @Option(help: "Dropout between layers.") var dropout: Float = 0.3
    @Option(help: "Timed training steps (after 2 warm-up steps).") var steps = 20
    @Option(help: "OpenBLAS threads.") var threads = 1
    @Option(help: "How products are computed: portable (Lockstep's own fixed-order kernels) or openblas (default: coord start's default).") var numerics: String?
    @Flag(help: "Skip the training figures: time inference only (for profiling).") var inferenceOnly = false
    @Option(help: "Also time `coord eval`'s path (Inference.run, one thread) on a generated set written here as .npz, for PyTorch to read the same sequences.") var evalData: String?
    @Option(help: "Sequences per batch of the inference timing (random lengths, PyTorch's `forward` mode).") var inferBatchSize = 64
    @Option(help: "Sequences per batch of the eval timing.") var evalBatchSize = 64
    @Option(help: "Batches in the eval set.") var evalBatches = 40
    @Option(help: "Instead of training: hash this many MiB with SHA-256 (checkpoints, data, shards) and print MB/s.") var hashMib: Int?
    @Flag(help: "Also measure the core's big-sgemm peak: GF/s of a 1536x1536x1536 product, one thread, by OpenBLAS and by the portable kernels (best of 3 each).") var peak = false

    func validate() throws {
        if inferBatchSize < 1 || evalBatchSize < 1 || evalBatches < 1 { throw ValidationError("batch sizes and --eval-batches must be >= 1") }
    }

    func run() throws {
        if let mib = hashMib {
            let bytes = [UInt8](repeating: 0x5a, count: mib << 20)
            _ = SHA256.hex(bytes[0..<(1 << 20)])  // warm up
            let t0 = Date()
            let digest = bytes.withUnsafeBytes { SHA256.hex($0) }
            let seconds = Date().timeIntervalSince(t0)
            print(String(format: "{\"sha256_mb_per_s\":%.0f,\"mib\":%d,\"seconds\":%.3f,\"digest\":\"%@\"}",
                         Double(bytes.count) / 1e6 / seconds, mib, seconds, digest))
            return
        }
        BLAS.setThreads(threads)
        var run = RunConfig()
        if let numerics {
            guard let m = NumericsMode(rawValue: numerics) else { throw ValidationError("--numerics must be portable or openblas") }
            run.numerics = m
        }
        BLAS.mode = run.numerics
        run.synthetic = SyntheticTask(sequences: batchSize * (steps + 2), inputSize: inputSize, classes: classes,
                                      minLength: minLength, maxLength: maxLength)
        run.hidden = hidden; run.layers = layers; run.dropout = dropout
        run.batchSize = batchSize; run.shardSize = batchSize; run.steps = steps + 2
        run.optimizer.kind = .adam
        let data = run.synthetic.generate(seed: 1)
        let trainer = try Trainer(run: run, data: data)
        let computer = ShardComputer(model: trainer.model, seed: run.seed)
        let grad = FloatBuffer(count: trainer.layout.count)
        computer.engine.reserve(rows: trainer.largestShardFrames)   // as coord start does
        var frames = 0
        var seconds = 0.0
        for s in 0..<(inferenceOnly ? 0 : steps + 2) {
            let t0 = Date()
            let shard = trainer.shards(forStep: s)[0]
            let r = computer.compute(params: trainer.params, examples: shard.map { data.examples[$0] }, step: s, into: grad)
            _ = try trainer.apply(parts: [(grad, r)], seconds: 0)
            if s >= 2 { seconds += Date().timeIntervalSince(t0); frames += shard.reduce(0) { $0 + data.examples[$1].length } }
        }
        // Inference: forward only, no dropout, --steps batches of --infer-batch-size sequences of
        // random lengths after 2 warm-up batches, as PyTorch's `forward` mode draws and times them.
        let engine = computer.engine
        let inferSet = SyntheticTask(sequences: inferBatchSize * (steps + 2), inputSize: inputSize, classes: classes,
                                     minLength: minLength, maxLength: maxLength).generate(seed: 3)
        engine.reserve(rows: (0..<(steps + 2)).map { s in
            inferSet.examples[(s * inferBatchSize)..<((s + 1) * inferBatchSize)].reduce(0) { $0 + $1.length }
        }.max() ?? 0)   // as coord eval's longest-first batches do: no growth while timed
        var inferFrames = 0
        var ti = Date()
        for s in 0..<(steps + 2) {
            if s == 2 { ti = Date() }
            let b = Array(inferSet.examples[(s * inferBatchSize)..<((s + 1) * inferBatchSize)])
            engine.forward(params: trainer.params, batch: PackedBatch(b, inputSize: inputSize), dropout: nil, forBackward: false)
            if s >= 2 { inferFrames += b.reduce(0) { $0 + $1.length } }
        }
        let inferSeconds = Date().timeIntervalSince(ti)
        var evalFields = ""
        if peak {
            let saved = BLAS.mode
            var fields: [String] = []
            for mode in [NumericsMode.openblas, .portable] {
                BLAS.mode = mode
                fields.append(String(format: "\"peak_gflops_%@\":%.1f", mode.rawValue, Bench.bigSgemmGFlops()))
            }
            BLAS.mode = saved
            evalFields += "," + fields.joined(separator: ",")
        }
        if let path = evalData {
            // What `coord eval --threads 1` runs per batch: packing, forward, argmax, sums.
            let task = SyntheticTask(sequences: evalBatchSize * evalBatches, inputSize: inputSize, classes: classes,
                                     minLength: minLength, maxLength: maxLength)
            let set = task.generate(seed: 7)
            try AtomicFile.write(set.npzBytes(), to: path)
            _ = try Inference.run(model: trainer.model, params: trainer.params, data: set, batchSize: evalBatchSize, threads: 1)  // warm up
            let te = Date()
            let out = try Inference.run(model: trainer.model, params: trainer.params, data: set, batchSize: evalBatchSize, threads: 1, predictions: true)
            let evalSeconds = Date().timeIntervalSince(te)
            evalFields += String(format: ",\"eval_frames_per_s\":%.0f,\"eval_batch\":%d,\"eval_frames\":%d", Double(set.frames) / evalSeconds, evalBatchSize, out.sums.frames)
        }
        let fps = frames > 0 ? Double(frames) / seconds : 0
        let flopsPerFrame = Bench.trainingFlopsPerFrame(trainer.model)
        var usage = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
        let rssMiB = Double(usage.ru_maxrss) / 1024
        print(String(format: "{\"engine\":\"lockstep\",\"train_frames_per_s\":%.0f,\"gflops\":%.2f,\"infer_frames_per_s\":%.0f,\"infer_batch\":%d,\"peak_rss_mib\":%.1f,\"frames\":%d,\"mflop_per_frame\":%.2f,\"blas_core\":\"%@\",\"numerics\":\"%@\",\"gemm_path\":\"%@\"%@}",
                     fps, fps * flopsPerFrame / 1e9, Double(inferFrames) / inferSeconds, inferBatchSize, rssMiB, frames, flopsPerFrame / 1e6, BLAS.coreName,
                     run.numerics.rawValue, BLAS.portablePathName, evalFields))
    }

    /// GF/s of one big square product in the current mode, one thread: the most this core does.
    static func bigSgemmGFlops(n: Int = 1536) -> Double {
        let a = FloatBuffer((0..<(n * n)).map { Float($0 % 97) / 97 - 0.5 }), b = FloatBuffer((0..<(n * n)).map { Float($0 % 89) / 89 - 0.5 })
        let c = FloatBuffer(count: n * n)
        var best = Double.infinity
        for _ in 0..<3 {
            let t0 = Date()
            BLAS.sgemm(transA: false, transB: false, m: n, n: n, k: n, a: a.ptr, lda: n, b: b.ptr, ldb: n, beta: 0, c: c.ptr, ldc: n)
            best = min(best, Date().timeIntervalSince(t0))
        }
        return 2 * pow(Double(n), 3) / best / 1e9
    }

    /// Multiply-adds ×2 of forward + backward per valid frame (backward ≈ 2× forward).
    static func trainingFlopsPerFrame(_ m: ModelConfig) -> Double {
        let H = Double(m.hidden), G = 4 * H
        var fwd = 0.0
        for l in 0..<m.layers {
            let inSize = Double(l == 0 ? m.inputSize : m.headInput)
            fwd += Double(m.directions) * 2 * G * (inSize + H)
        }
        fwd += 2 * Double(m.classes) * Double(m.headInput)
        return 3 * fwd
    }
}
