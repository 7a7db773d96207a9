/// One named tensor inside the flat parameter buffer.
public struct TensorSpec: Equatable, Sendable {
    /// The seed's PyTorch `state_dict` name, e.g. `layer1.weight_ih_l0_reverse`.
    public let name: String
    public let shape: [Int]
    public let offset: Int
    public var count: Int { shape.reduce(1, *) }
}

/// Where one LSTM cell (a layer and direction of a stack) keeps its four tensors.
public struct CellSpec: Equatable, Sendable {
    public let stream: Int      // 0 for stacked; 0 (forward stack) or 1 (reverse stack) for split
    public let layer: Int
    public let reverse: Bool
    public let inputSize: Int
    public let wih: Int         // offsets into the flat buffer
    public let whh: Int
    public let bih: Int
    public let bhh: Int
    /// Column of this cell's h inside its layer's output (0 or H).
    public let column: Int
}

/// The flat parameter buffer and its named views (DESIGN.md §1, PyTorch `state_dict` order).
///
/// Parameters, gradients, momentum and Adam moments all use this one layout, so reduce, clip,
/// step and broadcast are each one loop over one buffer.
public struct ParameterLayout: Equatable, Sendable {
    public let config: ModelConfig
    public let tensors: [TensorSpec]
    /// cells[stream][layer] lists the cells of that layer in direction order.
    public let cells: [[[CellSpec]]]
    public let headWeight: Int
    public let headBias: Int
    public let count: Int

    public init(_ c: ModelConfig) {
        config = c
        var tensors: [TensorSpec] = []
        var offset = 0
        func add(_ name: String, _ shape: [Int]) -> Int {
            let t = TensorSpec(name: name, shape: shape, offset: offset)
            tensors.append(t)
            offset += t.count
            return t.offset
        }
        let H = c.hidden
        let streams: [(prefix: String, dirs: [Bool])]
        switch c.arch {
        case .stacked: streams = [("layer1.", c.bidirectional ? [false, true] : [false])]
        case .split: streams = [("layer1.0.", [false]), ("layer1.1.", [true])]
        }
        var cells: [[[CellSpec]]] = []
        for (s, stream) in streams.enumerated() {
            var layers: [[CellSpec]] = []
            for l in 0..<c.layers {
                let inSize = l == 0 ? c.inputSize : stream.dirs.count * H
                var layer: [CellSpec] = []
                for (d, reverse) in stream.dirs.enumerated() {
                    // The split arch's reverse stack is its own nn.LSTM: no `_reverse` suffix.
                    let suffix = (c.arch == .stacked && reverse) ? "_reverse" : ""
                    let p = stream.prefix
                    let wih = add("\(p)weight_ih_l\(l)\(suffix)", [4 * H, inSize])
                    let whh = add("\(p)weight_hh_l\(l)\(suffix)", [4 * H, H])
                    let bih = add("\(p)bias_ih_l\(l)\(suffix)", [4 * H])
                    let bhh = add("\(p)bias_hh_l\(l)\(suffix)", [4 * H])
                    layer.append(CellSpec(stream: s, layer: l, reverse: reverse, inputSize: inSize,
                                          wih: wih, whh: whh, bih: bih, bhh: bhh, column: d * H))
                }
                layers.append(layer)
            }
            cells.append(layers)
        }
        self.cells = cells
        headWeight = add("layer2.0.weight", [c.classes, c.headInput])
        headBias = add("layer2.0.bias", [c.classes])
        self.tensors = tensors
        count = offset
    }

    public func tensor(named name: String) -> TensorSpec? { tensors.first { $0.name == name } }

    /// Width of one stream's layer output: both directions for stacked, one for split.
    public var streamWidth: Int { config.arch == .split ? config.hidden : config.headInput }
}
