import ArgumentParser
import BiLSTM
import Formats
import Foundation
import Numerics
import Training

/// The options of a training run. A TOML file (`--config`) gives the same keys in kebab-case
/// (plus a `[synthetic]` table); the command line overrides it.
struct TrainingOptions: ParsableArguments {
    @Option(help: "TOML file with any of these options as keys (kebab-case); command-line options override it.")
    var config: String?
    @Option(help: "Training data: .npz with x float32 [N, Lmax, d_in], lengths int [N], y int [N, Lmax] (-1 on padding). Default: the built-in synthetic task.")
    var data: String?
    @Option(help: "Number of classes (default: the largest label in the data + 1).")
    var classes: Int?
    @Option(help: "Synthetic task: number of training sequences (default 2048).")
    var syntheticSequences: Int?
    @Option(help: "Synthetic task: input features per frame, d_in (default 16).")
    var syntheticInput: Int?
    @Option(help: "Synthetic task: number of classes (default 8).")
    var syntheticClasses: Int?
    @Option(help: "Synthetic task: shortest sequence (default 20).")
    var minLength: Int?
    @Option(help: "Synthetic task: longest sequence (default 100).")
    var maxLength: Int?
    @Option(help: "Training steps (optimizer updates). Default 300 unless --epochs is given.")
    var steps: Int?
    @Option(help: "Training epochs (passes over the data); an alternative to --steps.")
    var epochs: Int?
    @Option(help: "Sequences per global batch (default 32).")
    var batchSize: Int?
    @Option(help: "Sequences per shard, the fixed unit of work sent to a worker (default 8). Part of the math: changing it changes the result.")
    var shardSize: Int?
    @Option(help: "LSTM hidden size H per direction (default 64).")
    var hidden: Int?
    @Option(help: "Number of stacked LSTM layers (default 2).")
    var layers: Int?
    @Option(help: "stacked: nn.LSTM(bidirectional=True); split: two independent stacks, one over reversed input (default stacked).")
    var arch: Arch?
    @Flag(help: "A forward-only LSTM instead of a BiLSTM.")
    var unidirectional = false
    @Option(help: "Dropout probability on every layer's output but the last, training only (default 0.1).")
    var dropout: Float?
    @Option(help: "sgd (momentum, weight decay) or adam (default adam).")
    var optimizer: OptimizerKind?
    @Option(help: "Learning rate (default 0.01).")
    var lr: Float?
    @Option(help: "SGD momentum (default 0.9).")
    var momentum: Float?
    @Option(help: "L2 weight decay added to the gradient, as torch.optim does (default 0).")
    var weightDecay: Float?
    @Option(help: "Clip the global gradient L2 norm to this, like clip_grad_norm_; 0 turns clipping off (default 1.0).")
    var maxNorm: Float?
    @Option(help: "Seed of every random number: init, shuffle, dropout, synthetic data (default 1).")
    var seed: UInt64?
    @Option(help: "On a non-finite loss or gradient: stop (name the step and shard; the last checkpoint stays) or skip the update (default stop).")
    var onNonfinite: NonfinitePolicy?
    @Option(help: "Learning-rate schedule, as torch.optim.lr_scheduler computes it, stepped every optimizer step: constant; step (StepLR: × --lr-gamma every --lr-step-size steps); cosine (CosineAnnealingLR down to --min-lr at the last step); plateau (ReduceLROnPlateau on the validation loss: × --lr-gamma after --plateau-patience validations without improvement, not below --min-lr). Default constant.")
    var lrSchedule: LRScheduleKind?
    @Option(help: "Warm up linearly over the first N steps, lr·(t+1)/(N+1), before the schedule starts (LinearLR then SequentialLR; default 0).")
    var warmupSteps: Int?
    @Option(help: "step schedule: steps between reductions (default 100).")
    var lrStepSize: Int?
    @Option(help: "step and plateau schedules: the factor of each reduction (default 0.1).")
    var lrGamma: Float?
    @Option(help: "cosine and plateau schedules: the lowest learning rate (default 0).")
    var minLr: Float?
    @Option(help: "plateau schedule: validations without improvement before the rate is reduced (default 10).")
    var plateauPatience: Int?
    @Option(help: "How matrix products are computed: portable (Lockstep's own kernels, fused multiply-adds in a fixed order: one hash on any x86-64 or ARM64 CPU) or openblas (OpenBLAS's kernel for this CPU: faster on CPUs without AVX-512, and the hash depends on the kernel). Part of the math (default portable; --resume keeps the checkpoint's).")
    var numerics: NumericsMode?
    @Option(help: "Start from these weights with a fresh optimizer: a Lockstep checkpoint (e.g. best.safetensors) or a PyTorch state_dict saved as safetensors with the seed's names. Hidden size, layers and architecture come from the file. Not with --resume.")
    var `init`: String?
    @Option(help: "Validation data (.npz, like --data): forward only, no dropout, at the end of every epoch (or every --valid-every steps) and at the end of the run. valid_loss, valid_accuracy and per-class recall go to the progress line and metrics.jsonl; the best weights to best.safetensors. The same bits at any worker count.")
    var validData: String?
    @Option(help: "Validate on this fraction of the training data instead of --valid-data (0 < F <= 0.5): which sequences are held out is decided by their id and --seed alone, so the split is the same at any worker count, through --resume, and from an .npz or its packed copy; it is part of the run's config. A packed set is then read whole.")
    var validSplit: Float?
    @Option(help: ArgumentHelp("Weight each class's frames in the loss, as PyTorch's NLLLoss(weight=): the mean is Σ w[y]·nll / Σ w[y] over labelled frames. auto: balanced weights from the training set, frames / (classes × frames of the class); or one number per class in class order, e.g. 1,4,4,2. Both sums are tree-summed, so the bits are the same at any worker count. Part of the math; the validation loss stays unweighted (default: none).", valueName: "auto|w0,w1,…"))
    var classWeights: String?
    @Option(help: "Validate every N steps instead of at the end of every epoch (0: every epoch; default 0).")
    var validEvery: Int?
    @Option(help: "The validation figure that picks best.safetensors and counts for --patience: loss (lower is better), accuracy, or macro-f1 (the mean F1 over the classes: for skewed data) (default loss).")
    var select: SelectBy?
    @Option(help: "Stop after this many validations in a row without improvement (by --select); the reason is on the last line and in metrics.jsonl (0: never; default 0).")
    var patience: Int?
    @Option(help: "Directory for checkpoint.safetensors, metrics.jsonl and, with --spawn, worker-N.log (default runs/lockstep).")
    var checkpointDir: String?
    @Option(help: "Write a checkpoint every N steps (and always at the end); 0: only at the end (default 50).")
    var checkpointEvery: Int?
    @Option(help: "Also keep the last K checkpoints as checkpoint-step-N.safetensors (hard links, no copies), so a damaged or unwanted checkpoint has an older one to fall back on; 0: none (default 0).")
    var keepLast: Int?

    /// Defaults, then the TOML file, then the command line; with the file's keys that are not
    /// training options (`coord start`'s own).
    func resolve() throws -> (run: RunConfig, other: TOMLConfig.Other) {
        var c = RunConfig()
        var other = TOMLConfig.Other(path: config ?? "")
        if let config { try TOMLConfig.apply(path: config, to: &c, other: &other) }
        if steps != nil && epochs != nil { throw LockstepError("give --steps or --epochs, not both", hint: "--steps counts optimizer updates, --epochs passes over the data") }
        if let data { c.data = data }
        if let classes { c.classes = classes }
        if let v = syntheticSequences { c.synthetic.sequences = v }
        if let v = syntheticInput { c.synthetic.inputSize = v }
        if let v = syntheticClasses { c.synthetic.classes = v }
        if let v = minLength { c.synthetic.minLength = v }
        if let v = maxLength { c.synthetic.maxLength = v }
        if let steps { c.steps = steps; c.epochs = nil }
        if let epochs { c.epochs = epochs; c.steps = nil }
        if let v = batchSize { c.batchSize = v }
        if let v = shardSize { c.shardSize = v }
        if let v = hidden { c.hidden = v }
        if let v = layers { c.layers = v }
        if let v = arch { c.arch = v }
        if unidirectional { c.bidirectional = false }
        if let v = dropout { c.dropout = v }
        if let v = optimizer { c.optimizer.kind = v }
        if let v = lr { c.optimizer.lr = v }
        if let v = momentum { c.optimizer.momentum = v }
        if let v = weightDecay { c.optimizer.weightDecay = v }
        if let v = maxNorm { c.maxNorm = v }
        if let v = seed { c.seed = v }
        if let v = checkpointDir { c.checkpointDir = v }
        if let v = onNonfinite { c.onNonfinite = v }
        if let v = checkpointEvery { c.checkpointEvery = v }
        if let v = keepLast { c.keepLast = v }
        if let v = lrSchedule { c.schedule.kind = v }
        if let v = warmupSteps { c.schedule.warmupSteps = v }
        if let v = lrStepSize { c.schedule.stepSize = v }
        if let v = lrGamma { c.schedule.gamma = v }
        if let v = minLr { c.schedule.minLR = v }
        if let v = plateauPatience { c.schedule.plateauPatience = v }
        if let v = `init` { c.initFrom = v }
        if let v = numerics { c.numerics = v }
        if let v = validData { c.validData = v }
        if let v = validSplit { c.validSplit = v }
        if let v = classWeights {
            guard let spec = ClassWeights.parse(v) else {
                throw LockstepError("--class-weights \(v.prefix(40)): not auto and not a list of at most \(ModelConfig.maxClasses) numbers", hint: "give --class-weights auto, or one weight per class: --class-weights 1,4,4,2")
            }
            c.autoClassWeights = spec.auto; c.classWeights = spec.weights
        }
        if let v = validEvery { c.validEvery = v }
        if let v = select { c.select = v }
        if let v = patience { c.patience = v }
        return (c, other)
    }

    /// The model options given explicitly, on the command line or in the --config file, even at
    /// their default value: `--init` refuses each that contradicts its file.
    func explicitModel(_ file: TOMLConfig.Other) -> Set<String> {
        var out: Set<String> = []
        if hidden != nil || file.given.contains("hidden") { out.insert("hidden") }
        if layers != nil || file.given.contains("layers") { out.insert("layers") }
        if arch != nil || file.given.contains("arch") { out.insert("arch") }
        if unidirectional || file.given.contains("unidirectional") { out.insert("unidirectional") }
        if numerics != nil || file.given.contains("numerics") { out.insert("numerics") }
        return out
    }
}

extension Arch: ExpressibleByArgument {}
extension OptimizerKind: ExpressibleByArgument {}
extension NonfinitePolicy: ExpressibleByArgument {}
extension LRScheduleKind: ExpressibleByArgument {}
extension SelectBy: ExpressibleByArgument {}
extension NumericsMode: ExpressibleByArgument {}

