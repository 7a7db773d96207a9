import BiLSTM
import Formats
import FileIO
import Foundation
import Numerics

/// `--config FILE.toml`: the long options of `coord start` as keys (kebab-case), a
/// `[synthetic]` table for the built-in task. Training keys fill a `RunConfig`; the command's
/// own keys (`local`, `bind`, …) are handed back in `Other`.
public enum TOMLConfig {
    /// Keys of the file that belong to the command rather than to the training run (`local`,
    /// `bind`, `spawn`, …): the command reads them with these typed getters.
    public struct Other {
        public let path: String
        public var values: [String: ConfigValue] = [:]
        /// Every top-level key the file set (an option given explicitly, even at its default).
        public var given: Set<String> = []
        public init(path: String) { self.path = path }

        public func bad(_ key: String, _ want: String) -> LockstepError {
            LockstepError("\(path): key '\(key)' must be \(want)", hint: "see `coord start --help` for every key")
        }
        public func bool(_ k: String) throws -> Bool? {
            guard let v = values[k] else { return nil }
            guard let b = v.bool else { throw bad(k, "true or false") }
            return b
        }
        public func int(_ k: String) throws -> Int? {
            guard let v = values[k] else { return nil }
            guard let i = v.int else { throw bad(k, "an integer") }
            return i
        }
        public func double(_ k: String) throws -> Double? {
            guard let v = values[k] else { return nil }
            if let d = v.double { return d }
            guard let i = v.int else { throw bad(k, "a number") }
            return Double(i)
        }
        public func string(_ k: String) throws -> String? {
            guard let v = values[k] else { return nil }
            guard let s = v.string else { throw bad(k, "a string") }
            return s
        }
    }

    /// The keys `coord start` takes beyond the training options.
    public static let startKeys: Set<String> = ["local", "resume", "fresh", "bind", "spawn", "min-workers", "max-workers",
                                         "curve-keys", "allow", "insecure", "wait", "threads",
                                         "metrics-port", "metrics-host", "log-level", "log-format"]

    public static func apply(path: String, to c: inout RunConfig) throws {
        var other = Other(path: path)
        try apply(path: path, to: &c, other: &other)
    }

    public static func apply(path: String, to c: inout RunConfig, other: inout Other) throws {
        guard FileManager.default.fileExists(atPath: path) else {
            throw LockstepError("\(path): cannot read the config file (missing or unreadable)", hint: "check the path given to --config")
        }
        try apply(bytes: Data(try SafeFile.read(path, what: "the config file", maxBytes: 1 << 20)), path: path, to: &c, other: &other)
    }

    /// The same from the file's bytes (`path` names it in errors).
    public static func apply(bytes raw: Data, path: String, to c: inout RunConfig, other: inout Other) throws {
        guard let text = String(data: raw, encoding: .utf8) else {
            let at = (0..<raw.count).first { String(data: raw.prefix($0 + 1), encoding: .utf8) == nil && String(data: raw.prefix($0 + 4), encoding: .utf8) == nil } ?? 0
            throw LockstepError("\(path): the config file is not UTF-8 text (invalid byte 0x\(String(format: "%02x", raw[at])) at offset \(at))",
                                hint: "save it as UTF-8 (TOML files must be UTF-8)")
        }
        let table: ConfigTable
        // CRLF line endings (a file saved on Windows) read as LF.
        do { table = try ConfigFile.parse(text.replacingOccurrences(of: "\r\n", with: "\n")) } catch let e as ConfigFile.ParseError {
            throw LockstepError("\(path): \(e)", hint: "fix the TOML syntax")
        }
        func bad(_ key: String, _ want: String) -> LockstepError {
            LockstepError("\(path): key '\(key)' must be \(want)", hint: "see `coord start --help` for every key")
        }
        func int(_ k: String, _ v: ConfigValue) throws -> Int { guard let i = v.int else { throw bad(k, "an integer") }; return i }
        func float(_ k: String, _ v: ConfigValue) throws -> Float {
            if let d = v.double { return Float(d) }
            if let i = v.int { return Float(i) }
            throw bad(k, "a number")
        }
        func str(_ k: String, _ v: ConfigValue) throws -> String { guard let s = v.string else { throw bad(k, "a string") }; return s }
        func bool(_ k: String, _ v: ConfigValue) throws -> Bool { guard let b = v.bool else { throw bad(k, "true or false") }; return b }
        func pick<E: CaseIterable & RawRepresentable>(_ k: String, _ v: ConfigValue) throws -> E where E.RawValue == String {
            guard let e = E(rawValue: try str(k, v)) else { throw bad(k, "one of " + E.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", ")) }
            return e
        }
        for key in table.keys {
            other.given.insert(key)
            let v = table[key]!
            switch key {
            case "data": c.data = try str(key, v)
            case "classes": c.classes = try int(key, v)
            case "steps":
                guard table["epochs"] == nil else { throw LockstepError("\(path): give steps or epochs, not both", hint: "keep one of the two keys") }
                c.steps = try int(key, v)
            case "epochs": c.epochs = try int(key, v)
            case "batch-size": c.batchSize = try int(key, v)
            case "shard-size": c.shardSize = try int(key, v)
            case "hidden": c.hidden = try int(key, v)
            case "layers": c.layers = try int(key, v)
            case "arch": c.arch = try pick(key, v)
            case "unidirectional": c.bidirectional = !(try bool(key, v))
            case "synthetic-sequences": c.synthetic.sequences = try int(key, v)
            case "synthetic-input": c.synthetic.inputSize = try int(key, v)
            case "synthetic-classes": c.synthetic.classes = try int(key, v)
            case "min-length": c.synthetic.minLength = try int(key, v)
            case "max-length": c.synthetic.maxLength = try int(key, v)
            case "config": throw LockstepError("\(path): key 'config' cannot name another file", hint: "put every key in this file")
            case "dropout": c.dropout = try float(key, v)
            case "optimizer": c.optimizer.kind = try pick(key, v)
            case "lr": c.optimizer.lr = try float(key, v)
            case "momentum": c.optimizer.momentum = try float(key, v)
            case "weight-decay": c.optimizer.weightDecay = try float(key, v)
            case "max-norm": c.maxNorm = try float(key, v)
            case "seed":
                let seed = try int(key, v)
                guard seed >= 0 else { throw bad(key, "a non-negative integer (got \(seed))") }
                c.seed = UInt64(seed)
            case "checkpoint-dir": c.checkpointDir = try str(key, v)
            case "checkpoint-every": c.checkpointEvery = try int(key, v)
            case let k where startKeys.contains(k): other.values[k] = v
            case "keep-last": c.keepLast = try int(key, v)
            case "lr-schedule": c.schedule.kind = try pick(key, v)
            case "warmup-steps": c.schedule.warmupSteps = try int(key, v)
            case "lr-step-size": c.schedule.stepSize = try int(key, v)
            case "lr-gamma": c.schedule.gamma = try float(key, v)
            case "min-lr": c.schedule.minLR = try float(key, v)
            case "plateau-patience": c.schedule.plateauPatience = try int(key, v)
            case "init": c.initFrom = try str(key, v)
            case "valid-data": c.validData = try str(key, v)
            case "valid-split": c.validSplit = try float(key, v)
            case "class-weights":
                guard let t = v.string, let spec = ClassWeights.parse(t) else {
                    throw bad(key, "\"auto\" or a string of one number per class (at most \(ModelConfig.maxClasses)), e.g. \"1,4,4,2\"")
                }
                c.autoClassWeights = spec.auto; c.classWeights = spec.weights
            case "valid-every": c.validEvery = try int(key, v)
            case "select": c.select = try pick(key, v)
            case "patience": c.patience = try int(key, v)
            case "schedule-segments":
                guard let t = v.string, let segs = RunConfig.decodeSegments(t) else { throw bad(key, "a string of until:total pairs, e.g. \"72:72\"") }
                c.segments = segs.isEmpty ? nil : segs
            case "numerics": c.numerics = try pick(key, v)
            case "on-nonfinite": c.onNonfinite = try pick(key, v)
            case "synthetic":
                guard let t = v.table else { throw bad(key, "a table [synthetic]") }
                for k in t.keys {
                    let sv = t[k]!
                    switch k {
                    case "sequences": c.synthetic.sequences = try int("synthetic.\(k)", sv)
                    case "input-size": c.synthetic.inputSize = try int("synthetic.\(k)", sv)
                    case "classes": c.synthetic.classes = try int("synthetic.\(k)", sv)
                    case "min-length": c.synthetic.minLength = try int("synthetic.\(k)", sv)
                    case "max-length": c.synthetic.maxLength = try int("synthetic.\(k)", sv)
                    case "noise": c.synthetic.noise = try float("synthetic.\(k)", sv)
                    default: throw LockstepError("\(path): unknown key 'synthetic.\(ConfigFile.shown(k))'", hint: "known: sequences, input-size, classes, min-length, max-length, noise")
                    }
                }
            default:
                throw LockstepError("\(path): unknown key '\(ConfigFile.shown(key))'", hint: "keys are the long options of `coord start` without dashes in front, e.g. batch-size = 32")
            }
        }
    }
}

extension RunConfig {
    /// This run's resolved options as a `--config` file: every training key, so that
    /// `coord start --config FILE` reproduces the run (and its hash) without the original command.
    public var toml: String { toml(mode: []) }

    /// The same with the run mode's keys (`local = true`, `spawn = 2`, `bind = "…"`).
    public func toml(mode: [String]) -> String {
        func q(_ s: String) -> String { quotedString(s) }
        func abs(_ p: String) -> String { URL(fileURLWithPath: p).standardizedFileURL.path }
        var lines = ["# The resolved options of this run (written by coord start). Rerun with:",
                     "#   coord start --config THIS_FILE --checkpoint-dir NEW_DIR"]
        if let data { lines.append("data = \(q(abs(data)))") }
        if let classes { lines.append("classes = \(classes)") }
        if let epochs { lines.append("epochs = \(epochs)") } else { lines.append("steps = \(steps ?? RunConfig.defaultSteps)") }
        if let segments, !segments.isEmpty {
            lines.append("# Extended: steps before each `until` took their rate from a schedule that ran to its `total`.")
            lines.append("schedule-segments = \(q(RunConfig.encode(segments)))")
        }
        lines += ["batch-size = \(batchSize)", "shard-size = \(shardSize)", "hidden = \(hidden)", "layers = \(layers)",
                  "arch = \(q(arch.rawValue))", "unidirectional = \(!bidirectional)", "dropout = \(dropout)",
                  "optimizer = \(q(optimizer.kind.rawValue))", "lr = \(optimizer.lr)", "momentum = \(optimizer.momentum)",
                  "weight-decay = \(optimizer.weightDecay)", "max-norm = \(maxNorm)", "seed = \(seed)",
                  "on-nonfinite = \(q(onNonfinite.rawValue))",
                  "lr-schedule = \(q(schedule.kind.rawValue))", "warmup-steps = \(schedule.warmupSteps)",
                  "lr-step-size = \(schedule.stepSize)", "lr-gamma = \(schedule.gamma)", "min-lr = \(schedule.minLR)",
                  "plateau-patience = \(schedule.plateauPatience)", "numerics = \(q(numerics.rawValue))"]
        if let initFrom { lines.append("init = \(q(abs(initFrom)))") }
        if let validData { lines.append("valid-data = \(q(abs(validData)))") }
        if let validSplit { lines.append("valid-split = \(validSplit)") }
        if let classWeights { lines.append("class-weights = \(q(classWeights.map { "\($0)" }.joined(separator: ",")))") }
        else if autoClassWeights { lines.append("class-weights = \"auto\"") }
        lines += ["valid-every = \(validEvery)", "select = \(q(select.rawValue))", "patience = \(patience)",
                  "checkpoint-dir = \(q(abs(checkpointDir)))", "checkpoint-every = \(checkpointEvery)", "keep-last = \(keepLast)"]
        if !mode.isEmpty { lines += ["# How it ran (any mode gives the same bits; the command line overrides)."] + mode }
        if data == nil {
            let s = synthetic
            lines += ["", "[synthetic]", "sequences = \(s.sequences)", "input-size = \(s.inputSize)", "classes = \(s.classes)",
                      "min-length = \(s.minLength)", "max-length = \(s.maxLength)", "noise = \(s.noise)"]
        }
        return lines.joined(separator: "\n") + "\n"
    }
}
