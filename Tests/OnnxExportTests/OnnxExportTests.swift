import BiLSTM
import Foundation
import Numerics
@testable import OnnxExport
import SwiftProtobuf
import XCTest

/// Tier 1: the exported graph read back with ONNX's own schema: its interface, one LSTM node per
/// layer and stream with the right direction, and every weight where ONNX expects it (gates
/// reordered i, f, g, o → i, o, f, c; the head transposed). scripts/check-onnx runs the graphs
/// in ONNX Runtime against `coord predict --logprobs`.
final class OnnxExportTests: XCTestCase {
    func exported(_ m: ModelConfig) throws -> (Onnx_ModelProto, ParameterLayout, FloatBuffer) {
        let layout = ParameterLayout(m)
        let params = FloatBuffer((0..<layout.count).map { Float($0) })  // each value names its slot
        let bytes = try OnnxExport.export(model: m, params: params, producerVersion: "test")
        return (try Onnx_ModelProto(serializedBytes: bytes), layout, params)
    }

    func tensor(_ g: Onnx_GraphProto, _ name: String) throws -> (dims: [Int64], floats: [Float]) {
        let t = try XCTUnwrap(g.initializer.first { $0.name == name }, "no initializer \(name)")
        let floats = t.rawData.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        return (t.dims, floats)
    }

    func dims(_ v: Onnx_ValueInfoProto) -> [String] {
        v.type.tensorType.shape.dim.map { if case .dimParam(let p)? = $0.value { return p }; return String($0.dimValue) }
    }

    func attribute(_ n: Onnx_NodeProto, _ name: String) -> Onnx_AttributeProto? { n.attribute.first { $0.name == name } }

    func testTheInterfaceIsBatchFirstLikeTheNpz() throws {
        let (m, _, _) = try exported(ModelConfig(inputSize: 5, hidden: 3, layers: 2, classes: 4))
        XCTAssertEqual(m.opsetImport.map(\.version), [17])
        XCTAssertEqual(m.irVersion, 8)
        XCTAssertEqual(m.graph.input.map(\.name), ["x", "lengths"])
        XCTAssertEqual(dims(m.graph.input[0]), ["N", "T", "5"])
        XCTAssertEqual(m.graph.input[0].type.tensorType.elemType, Int32(Onnx_TensorProto.DataType.float.rawValue))
        XCTAssertEqual(dims(m.graph.input[1]), ["N"])
        XCTAssertEqual(m.graph.input[1].type.tensorType.elemType, Int32(Onnx_TensorProto.DataType.int64.rawValue))
        XCTAssertEqual(m.graph.output.map(\.name), ["logprobs"])
        XCTAssertEqual(dims(m.graph.output[0]), ["N", "T", "4"])
        XCTAssertEqual(m.graph.node.last?.opType, "LogSoftmax")
        XCTAssertEqual(attribute(m.graph.node.last!, "axis")?.i, 2)
    }

    func testOneLSTMNodePerLayerAndStreamWithItsDirectionAndTheSequenceLengths() throws {
        for (config, expected) in [
            (ModelConfig(inputSize: 5, hidden: 3, layers: 2, classes: 4), ["bidirectional", "bidirectional"]),
            (ModelConfig(inputSize: 5, hidden: 3, layers: 3, classes: 4, bidirectional: false), ["forward", "forward", "forward"]),
            (ModelConfig(inputSize: 5, hidden: 3, layers: 2, classes: 4, arch: .split), ["forward", "forward", "reverse", "reverse"]),
        ] {
            let (m, _, _) = try exported(config)
            let lstms = m.graph.node.filter { $0.opType == "LSTM" }
            XCTAssertEqual(lstms.map { String(decoding: attribute($0, "direction")?.s ?? Data(), as: UTF8.self) }, expected, "\(config)")
            for n in lstms {
                XCTAssertEqual(n.input.last, "lengths_i32")
                XCTAssertEqual(attribute(n, "hidden_size")?.i, 3)
            }
            XCTAssertEqual(m.graph.node.contains { $0.opType == "Concat" }, config.arch == .split)
            // Every node's inputs are graph inputs, initializers or earlier outputs.
            var known = Set(m.graph.input.map(\.name) + m.graph.initializer.map(\.name))
            for n in m.graph.node {
                for i in n.input { XCTAssertTrue(known.contains(i), "\(n.name) reads \(i) before it exists") }
                known.formUnion(n.output)
            }
        }
    }

    /// PyTorch's gate blocks i, f, g, o go to ONNX's i, o, f, c; B is [b_ih; b_hh]; both directions stack.
    func testWeightsAreWhereONNXExpectsThem() throws {
        let H = 3, D = 5
        let (m, layout, params) = try exported(ModelConfig(inputSize: D, hidden: H, layers: 2, classes: 4))
        let cells = layout.cells[0][0]
        func slice(_ offset: Int, _ count: Int) -> [Float] { Array(UnsafeBufferPointer(start: params.ptr + offset, count: count)) }
        func reordered(_ offset: Int, _ cols: Int) -> [Float] {
            let b = H * cols
            return slice(offset, b) + slice(offset + 3 * b, b) + slice(offset + b, b) + slice(offset + 2 * b, b)
        }
        let w = try tensor(m.graph, "W_s0_l0"), r = try tensor(m.graph, "R_s0_l0"), b = try tensor(m.graph, "B_s0_l0")
        XCTAssertEqual(w.dims, [2, Int64(4 * H), Int64(D)])
        XCTAssertEqual(w.floats, reordered(cells[0].wih, D) + reordered(cells[1].wih, D))
        XCTAssertEqual(r.dims, [2, Int64(4 * H), Int64(H)])
        XCTAssertEqual(r.floats, reordered(cells[0].whh, H) + reordered(cells[1].whh, H))
        XCTAssertEqual(b.dims, [2, Int64(8 * H)])
        XCTAssertEqual(b.floats, reordered(cells[0].bih, 1) + reordered(cells[0].bhh, 1) + reordered(cells[1].bih, 1) + reordered(cells[1].bhh, 1))
        let head = try tensor(m.graph, "head_weight_t")
        XCTAssertEqual(head.dims, [Int64(2 * H), 4])
        for c in 0..<4 { for d in 0..<(2 * H) { XCTAssertEqual(head.floats[d * 4 + c], params[layout.headWeight + c * 2 * H + d]) } }
        XCTAssertEqual(try tensor(m.graph, "head_bias").floats, slice(layout.headBias, 4))
        // Every weight is exported once: the initializers' floats are the parameter count (plus the reshape shapes).
        let floats = m.graph.initializer.filter { $0.dataType == Int32(Onnx_TensorProto.DataType.float.rawValue) }.reduce(0) { $0 + $1.rawData.count / 4 }
        XCTAssertEqual(floats, layout.count)
    }
}
