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

    /// Directions whose outputs reach the head: 2 for a BiLSTM of either arch, else 1.
    public var directions: Int { (arch == .split || bidirectional) ? 2 : 1 }
    public var headInput: Int { directions * hidden }

    /// Every reason this config cannot be built, as user-facing sentences.
    public func problems() -> [String] {
        var p: [String] = []
        if inputSize < 1 { p.append("input size must be at least 1 (got \(inputSize))") }
        if !(1...4096).contains(hidden) { p.append("hidden must be in 1...4096 (got \(hidden))") }
        if !(1...64).contains(layers) { p.append("layers must be in 1...64 (got \(layers))") }
        if classes < 2 { p.append("classes must be at least 2 (got \(classes))") }
        if !(dropout >= 0 && dropout < 1) { p.append("dropout must be in [0, 1) (got \(dropout))") }
        if arch == .split && !bidirectional {
            p.append("arch split is a bidirectional model; HINT: drop --unidirectional or use --arch stacked")
        }
        return p
    }
}
