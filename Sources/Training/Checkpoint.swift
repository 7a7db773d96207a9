import BiLSTM
import Foundation
import Numerics

/// A checkpoint: weights under the seed's PyTorch names, optimizer state under
/// `optimizer.<state>.<name>`, and metadata strings (DESIGN.md §5). Weights-only files written
/// by PyTorch are read too: the model shape comes from the tensors' names and shapes.
public struct Checkpoint {
    public var model: ModelConfig
    public var params: FloatBuffer
    public var optimizerKind: OptimizerKind?
    public var optimizerState: [FloatBuffer]
    public var step: Int
    public var metadata: [String: String]

    public static let format = "lockstep-1"

    public static func save(path: String, layout: ParameterLayout, params: FloatBuffer,
                            optimizer: Optimizer?, step: Int, metadata: [String: String]) throws {
        var st = Safetensors()
        func views(_ buf: FloatBuffer, prefix: String) {
            for t in layout.tensors {
                st.add(prefix + t.name, .init(floats: UnsafeBufferPointer(start: buf.ptr + t.offset, count: t.count), shape: t.shape))
            }
        }
        views(params, prefix: "")
        if let optimizer {
            for (name, buf) in zip(optimizer.stateNames, optimizer.state) { views(buf, prefix: "optimizer.\(name).") }
        }
        var meta = metadata
        meta["format"] = format
        meta["step"] = String(step)
        meta["model"] = String(decoding: try JSONEncoder.sorted.encode(layout.config), as: UTF8.self)
        meta["weights_sha256"] = params.sha256
        if let optimizer { meta["optimizer"] = optimizer.config.kind.rawValue; meta["optimizer_steps"] = String(optimizer.steps) }
        st.metadata = meta
        try st.write(atomically: path)
    }

    public static func load(path: String) throws -> Checkpoint {
        let st = try Safetensors.read(path)
        let model: ModelConfig
        if let m = st.metadata["model"], let data = m.data(using: .utf8) {
            guard let decoded = try? JSONDecoder().decode(ModelConfig.self, from: data) else {
                throw LockstepError("\(path): metadata 'model' is not a model description", hint: "the file may come from another Lockstep version")
            }
            model = decoded
        } else {
            model = try inferModel(st, path: path)
        }
        let layout = ParameterLayout(model)
        func gather(prefix: String) throws -> FloatBuffer {
            let buf = FloatBuffer(count: layout.count)
            for t in layout.tensors {
                guard let v = st.tensors[prefix + t.name] else {
                    throw LockstepError("\(path): tensor '\(prefix + t.name)' is missing", hint: "the checkpoint must hold every tensor of the model's state_dict")
                }
                guard v.dtype == "F32", v.shape == t.shape else {
                    throw LockstepError("\(path): tensor '\(prefix + t.name)' is \(v.dtype) \(v.shape); expected F32 \(t.shape)",
                                        hint: "save float32 weights of the same model shape")
                }
                v.data.withUnsafeBytes { UnsafeMutableRawPointer(buf.ptr + t.offset).copyMemory(from: $0.baseAddress!, byteCount: t.count * 4) }
            }
            return buf
        }
        let params = try gather(prefix: "")
        let kind = st.metadata["optimizer"].flatMap(OptimizerKind.init(rawValue:))
        var state: [FloatBuffer] = []
        if let kind {
            let names = kind == .adam ? ["exp_avg", "exp_avg_sq"] : ["momentum_buffer"]
            state = try names.map { try gather(prefix: "optimizer.\($0).") }
        }
        let step = Int(st.metadata["step"] ?? "0") ?? 0
        return Checkpoint(model: model, params: params, optimizerKind: kind, optimizerState: state, step: step, metadata: st.metadata)
    }

    /// Reads the model shape off a PyTorch `state_dict` of the seed's `Net`.
    static func inferModel(_ st: Safetensors, path: String) throws -> ModelConfig {
        func shape(_ n: String) -> [Int]? { st.tensors[n]?.shape }
        let split = shape("layer1.0.weight_ih_l0") != nil
        let prefix = split ? "layer1.0." : "layer1."
        guard let wih = shape(prefix + "weight_ih_l0"), wih.count == 2, let whh = shape(prefix + "weight_hh_l0"), whh.count == 2,
              let head = shape("layer2.0.weight"), head.count == 2 else {
            throw LockstepError("\(path): cannot tell the model shape: expected tensors layer1.weight_ih_l0 (or layer1.0.weight_ih_l0), layer1.weight_hh_l0 and layer2.0.weight",
                                hint: "save the seed Net's state_dict with safetensors.torch.save_file")
        }
        var layers = 0
        while shape("\(prefix)weight_ih_l\(layers)") != nil { layers += 1 }
        let bidirectional = split || shape("layer1.weight_ih_l0_reverse") != nil
        return ModelConfig(inputSize: wih[1], hidden: whh[1], layers: layers, classes: head[0],
                           bidirectional: bidirectional, arch: split ? .split : .stacked, dropout: 0)
    }
}

extension JSONEncoder {
    public static var sorted: JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return e
    }
}
