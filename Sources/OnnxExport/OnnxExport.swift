import BiLSTM
import Foundation
import Numerics
import SwiftProtobuf

/// A trained model as an ONNX graph (`coord export`), for serving with ONNX Runtime or any
/// other ONNX consumer.
///
/// The graph is batch-first like the `.npz`: inputs `x` float32 `[N, T, d_in]` and `lengths`
/// int64 `[N]`, output `logprobs` float32 `[N, T, C]` (frames past a sequence's length hold the
/// log-softmax of the head's bias: read only the first `lengths[i]` frames, as the loss does).
/// Each LSTM layer is one ONNX `LSTM` node (opset 17) with `sequence_lens`, so the reverse
/// direction starts at each sequence's own last frame, as Lockstep's and PyTorch's packed
/// sequences do. PyTorch's gate order i, f, g, o becomes ONNX's i, o, f, c.
///
/// - stacked, bidirectional: `LSTM(direction=bidirectional)` per layer, its two directions
///   concatenated per frame (forward first) as the next layer's input;
/// - unidirectional: `LSTM(direction=forward)` per layer;
/// - split (the seed's hand-built BiLSTM): two chains, `forward` and `reverse` LSTM nodes each on
///   its own stack's previous output, concatenated only at the head.
///
/// The bytes are written by SwiftProtobuf from ONNX's own schema (`onnx.pb.swift`, generated
/// from onnx 1.23.2's `onnx.proto` by `scripts/gen-onnx-schema`).
public enum OnnxExport {
    public static let opset: Int64 = 17
    /// ONNX IR version 8 is the one opset 17 shipped with: every runtime that reads opset 17 reads it.
    public static let irVersion: Int64 = 8

    /// The serialized `ModelProto` of `model` with weights `params` (the layout's flat buffer).
    public static func export(model: ModelConfig, params: FloatBuffer, producerVersion: String, docString: String = "") throws -> [UInt8] {
        let layout = ParameterLayout(model)
        precondition(params.count == layout.count, "parameters do not fit the model")
        var g = GraphBuilder(params: params)
        let H = model.hidden

        g.input("x", [.param("N"), .param("T"), .value(model.inputSize)])
        g.input("lengths", [.param("N")], type: .int64)
        g.node("Transpose", ["x"], "x_tnd", ints: ["perm": [1, 0, 2]])
        g.node("Cast", ["lengths"], "lengths_i32", int: ["to": Int64(Onnx_TensorProto.DataType.int32.rawValue)])

        // Each stream is a stack; its layer l is one LSTM node over the stream's cells of layer l.
        var streamOutputs: [String] = []
        for (s, stream) in layout.cells.enumerated() {
            var input = "x_tnd"
            for (l, cells) in stream.enumerated() {
                let tag = "s\(s)_l\(l)", dirs = cells.count
                let direction = dirs == 2 ? "bidirectional" : (cells[0].reverse ? "reverse" : "forward")
                g.initializer("W_\(tag)", [dirs, 4 * H, cells[0].inputSize], cells.flatMap { g.gates(at: $0.wih, rows: H, cols: $0.inputSize) })
                g.initializer("R_\(tag)", [dirs, 4 * H, H], cells.flatMap { g.gates(at: $0.whh, rows: H, cols: H) })
                g.initializer("B_\(tag)", [dirs, 8 * H], cells.flatMap { g.gates(at: $0.bih, rows: H, cols: 1) + g.gates(at: $0.bhh, rows: H, cols: 1) })
                g.node("LSTM", [input, "W_\(tag)", "R_\(tag)", "B_\(tag)", "lengths_i32"], "Y_\(tag)",
                       int: ["hidden_size": Int64(H)], string: ["direction": direction])
                // Y [T, dirs, N, H] → [T, N, dirs, H] → [T, N, dirs·H]: per frame, forward then reverse.
                g.node("Transpose", ["Y_\(tag)"], "Yt_\(tag)", ints: ["perm": [0, 2, 1, 3]])
                g.initializer("shape_\(tag)", [3], [0, 0, Int64(dirs * H)])
                g.node("Reshape", ["Yt_\(tag)", "shape_\(tag)"], "h_\(tag)")
                input = "h_\(tag)"
            }
            streamOutputs.append(input)
        }
        var head = streamOutputs[0]
        if streamOutputs.count > 1 {
            g.node("Concat", streamOutputs, "h_split", int: ["axis": 2])
            head = "h_split"
        }
        // Head: [T, N, D] → [N, T, D] · Wᵀ [D, C] + b → LogSoftmax over classes.
        g.node("Transpose", [head], "h_ntd", ints: ["perm": [1, 0, 2]])
        let C = model.classes, D = model.headInput
        var wt = [Float](repeating: 0, count: D * C)
        for c in 0..<C { for d in 0..<D { wt[d * C + c] = params[layout.headWeight + c * D + d] } }
        g.initializer("head_weight_t", [D, C], wt)
        g.initializer("head_bias", [C], Array(UnsafeBufferPointer(start: params.ptr + layout.headBias, count: C)))
        g.node("MatMul", ["h_ntd", "head_weight_t"], "logits_nobias")
        g.node("Add", ["logits_nobias", "head_bias"], "logits")
        g.node("LogSoftmax", ["logits"], "logprobs", int: ["axis": 2])
        g.output("logprobs", [.param("N"), .param("T"), .value(C)])

        var m = Onnx_ModelProto()
        m.irVersion = irVersion
        m.producerName = "lockstep"
        m.producerVersion = producerVersion
        m.docString = docString
        var op = Onnx_OperatorSetIdProto()
        op.domain = ""
        op.version = opset
        m.opsetImport = [op]
        g.graph.name = "lockstep_bilstm"
        m.graph = g.graph
        return Array(try m.serializedData())
    }
}

/// Builds one `GraphProto`: named initializers, inputs, outputs and nodes in order.
struct GraphBuilder {
    let params: FloatBuffer
    var graph = Onnx_GraphProto()

    enum Dim { case param(String), value(Int) }

    /// A cell tensor's 4 gate blocks of `rows` rows each (PyTorch's i, f, g, o) in ONNX's order i, o, f, c.
    func gates(at offset: Int, rows: Int, cols: Int) -> [Float] {
        let block = rows * cols
        return [0, 3, 1, 2].flatMap { k in Array(UnsafeBufferPointer(start: params.ptr + offset + k * block, count: block)) }
    }

    mutating func input(_ name: String, _ dims: [Dim], type: Onnx_TensorProto.DataType = .float) {
        graph.input.append(valueInfo(name, dims, type))
    }

    mutating func output(_ name: String, _ dims: [Dim]) { graph.output.append(valueInfo(name, dims, .float)) }

    func valueInfo(_ name: String, _ dims: [Dim], _ type: Onnx_TensorProto.DataType) -> Onnx_ValueInfoProto {
        var v = Onnx_ValueInfoProto()
        v.name = name
        var t = Onnx_TypeProto.Tensor()
        t.elemType = Int32(type.rawValue)
        t.shape.dim = dims.map { d in
            var x = Onnx_TensorShapeProto.Dimension()
            switch d {
            case .param(let p): x.dimParam = p
            case .value(let n): x.dimValue = Int64(n)
            }
            return x
        }
        v.type.tensorType = t
        return v
    }

    mutating func initializer(_ name: String, _ dims: [Int], _ values: [Float]) {
        precondition(dims.reduce(1, *) == values.count, "\(name): \(values.count) values for \(dims)")
        var t = Onnx_TensorProto()
        t.name = name
        t.dims = dims.map(Int64.init)
        t.dataType = Int32(Onnx_TensorProto.DataType.float.rawValue)
        // raw_data is little-endian, as the floats are in memory on every platform Lockstep runs on.
        t.rawData = values.withUnsafeBytes { Data($0) }
        graph.initializer.append(t)
    }

    mutating func initializer(_ name: String, _ dims: [Int], _ values: [Int64]) {
        var t = Onnx_TensorProto()
        t.name = name
        t.dims = dims.map(Int64.init)
        t.dataType = Int32(Onnx_TensorProto.DataType.int64.rawValue)
        t.int64Data = values
        graph.initializer.append(t)
    }

    mutating func node(_ op: String, _ inputs: [String], _ output: String, int: [String: Int64] = [:], ints: [String: [Int64]] = [:],
                       string: [String: String] = [:]) {
        var n = Onnx_NodeProto()
        n.opType = op
        n.name = "\(op)_\(graph.node.count)"
        n.input = inputs
        n.output = [output]
        for (k, v) in int.sorted(by: { $0.key < $1.key }) {
            var a = Onnx_AttributeProto(); a.name = k; a.type = .int; a.i = v; n.attribute.append(a)
        }
        for (k, v) in ints.sorted(by: { $0.key < $1.key }) {
            var a = Onnx_AttributeProto(); a.name = k; a.type = .ints; a.ints = v; n.attribute.append(a)
        }
        for (k, v) in string.sorted(by: { $0.key < $1.key }) {
            var a = Onnx_AttributeProto(); a.name = k; a.type = .string; a.s = Data(v.utf8); n.attribute.append(a)
        }
        graph.node.append(n)
    }
}
