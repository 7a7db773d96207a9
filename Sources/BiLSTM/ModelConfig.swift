import Foundation

/// How the recurrent stacks are built (DESIGN.md §1).
public enum Arch: String, Codable, Sendable, CaseIterable {
    /// `nn.LSTM(bidirectional:)`: each layer reads both directions of the layer below.
    case stacked
    /// The seed's hand-built BiLSTM: two independent unidirectional stacks, one over the
    /// reversed sequences, concatenated only at the head.
    case split
}

/// The shape of the model. Everything the math needs and nothing about training.
public struct ModelConfig: Equatable, Codable, Sendable {
    public var inputSize: Int
    public var hidden: Int
    public var layers: Int
    public var classes: Int
    public var bidirectional: Bool
    public var arch: Arch
    /// Dropout probability on the output of every layer but the last (training only).
    public var dropout: Float

    public init(inputSize: Int, hidden: Int, layers: Int, classes: Int,
                bidirectional: Bool = true, arch: Arch = .stacked, dropout: Float = 0) {
        self.inputSize = inputSize
        self.hidden = hidden
        self.layers = layers
        self.classes = classes
        self.bidirectional = bidirectional
        self.arch = arch
        self.dropout = dropout
    }

    /// The same weights' shapes (everything but dropout).
    public func sameShape(as o: ModelConfig) -> Bool {
        var a = self
        a.dropout = o.dropout
        return a == o
    }

    /// Directions whose outputs reach the head: 2 for a BiLSTM of either arch, else 1.
    public var directions: Int { (arch == .split || bidirectional) ? 2 : 1 }
    public var headInput: Int { directions * hidden }

    /// The most classes a model may have, in every mode (the head is C × 2H, its logits C per frame).
    public static let maxClasses = 1 << 16
    /// The widest input frame.
    public static let maxInputSize = 1 << 16

    /// Parameters of this shape: 4H × (in + H + 2) per layer and direction, and the head.
    public var parameterCount: Int {
        var n = 0
        let stacks = arch == .split ? 2 : 1, dirs = arch == .split ? 1 : directions
        for l in 0..<layers {
            let input = l == 0 ? inputSize : (arch == .split ? hidden : directions * hidden)
            n += stacks * dirs * 4 * hidden * (input + hidden + 2)
        }
        return n + classes * (headInput + 1)
    }

    /// Every reason this config cannot be built, as user-facing sentences.
    public func problems() -> [String] {
        var p: [String] = []
        if !(1...ModelConfig.maxInputSize).contains(inputSize) { p.append("input size must be in 1...\(ModelConfig.maxInputSize) (got \(inputSize))") }
        if !(1...4096).contains(hidden) { p.append("hidden must be in 1...4096 (got \(hidden))") }
        if !(1...64).contains(layers) { p.append("layers must be in 1...64 (got \(layers))") }
        if !(2...ModelConfig.maxClasses).contains(classes) { p.append("classes must be in 2...\(ModelConfig.maxClasses) (got \(classes))") }
        if !(dropout >= 0 && dropout < 1) { p.append("dropout must be in [0, 1) (got \(dropout))") }
        if arch == .split && !bidirectional {
            p.append("arch split is a bidirectional model; HINT: drop --unidirectional or use --arch stacked")
        }
        return p
    }
}

/// `--class-weights`: the loss's per-class weights (PyTorch's `NLLLoss(weight=)`).
public enum ClassWeights {
    /// Why `weights` cannot weight a loss over `classes` classes, or nil when they can.
    public static func problem(_ weights: [Float], classes: Int) -> String? {
        if weights.count != classes { return "\(weights.count) weights for \(classes) classes (give one per class, in class order)" }
        if let i = weights.firstIndex(where: { !($0.isFinite && $0 >= 0 && $0 <= 1e6) }) {
            return "class \(i) has weight \(weights[i]); each must be a number in [0, 1e6]"
        }
        if !weights.contains(where: { $0 > 0 }) { return "every weight is 0; at least one class must count" }
        return nil
    }

    /// Reads `auto` (nil weights, auto true) or `w0,w1,…`; nil when it is neither.
    public static func parse(_ text: String) -> (auto: Bool, weights: [Float]?)? {
        let t = text.trimmingCharacters(in: .whitespaces)
        if t == "auto" { return (true, nil) }
        let parts = t.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        guard !parts.isEmpty, parts.count <= ModelConfig.maxClasses else { return nil }
        var out: [Float] = []
        for p in parts { guard let v = Float(p) else { return nil }; out.append(v) }
        return (false, out)
    }

    /// `auto`: sklearn's "balanced" weights, `frames / (classes · frames_c)`, from the training
    /// set's labelled-frame counts per class; a class with no frame gets 1 (it never counts).
    public static func balanced(counts: [Int]) -> [Float] {
        let total = Double(counts.reduce(0, +)), c = Double(counts.count)
        return counts.map { $0 == 0 ? 1 : Float(total / (c * Double($0))) }
    }
}
