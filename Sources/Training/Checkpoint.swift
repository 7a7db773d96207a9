import BiLSTM
import CZlib
import FileIO
import Formats
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
    /// The file carried checksums and they matched (false only for files without them: PyTorch's
    /// own, and Lockstep's before format 2).
    public var verified = false

    /// 2: `file_sha256` covers every byte; `part_crc32` names what was damaged.
    public static let format = "lockstep-2"

    /// Writes the checkpoint atomically; returns its `file_sha256` (what a later checkpoint
    /// records of `best.safetensors`).
    @discardableResult
    public static func save(path: String, layout: ParameterLayout, params: FloatBuffer,
                            optimizer: Optimizer?, step: Int, metadata: [String: String]) throws -> String {
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
        let bytes = CheckpointIntegrity.seal(&st)
        try AtomicFile.write(bytes, to: path)
        let at = CheckpointIntegrity.valueOffset(bytes)!
        return String(decoding: bytes[at..<(at + 64)], as: UTF8.self)
    }

    /// Reads and verifies a checkpoint. A damaged file is refused naming what was damaged and,
    /// when one exists beside it, the newest older checkpoint that is intact.
    public static func load(path: String) throws -> Checkpoint {
        guard FileManager.default.fileExists(atPath: path) else {
            throw LockstepError("\(path): cannot read the file (missing or unreadable)", hint: "check the path")
        }
        return try decode(try SafeFile.read(path, what: "the checkpoint", maxBytes: 1 << 40), path: path)
    }

    /// The same from a file's bytes (`path` names it in errors).
    public static func decode(_ bytes: [UInt8], path: String) throws -> Checkpoint {
        let verified: Bool
        do { verified = try CheckpointIntegrity.verify(bytes, path: path) } catch let e as LockstepError {
            let older = CheckpointIntegrity.newestIntactSibling(of: path)
            throw LockstepError(e.message, hint: older.map {
                "an older intact checkpoint is \($0.path) (step \($0.step)): copy it over \(path) to resume from there, or start again with --fresh"
            } ?? "restore the file from a copy, or start again with --fresh (keep older checkpoints with --keep-last)")
        }
        let st = try Safetensors.decode(bytes, path: path)
        let model: ModelConfig
        if let m = st.metadata["model"], let data = m.data(using: .utf8) {
            guard let decoded = try? JSONDecoder().decode(ModelConfig.self, from: data) else {
                throw LockstepError("\(path): metadata 'model' is not a model description", hint: "the file may come from another Lockstep version")
            }
            model = decoded
            let problems = model.problems()
            guard problems.isEmpty else {
                throw LockstepError("\(path): metadata 'model' describes a model Lockstep cannot build: \(problems.joined(separator: "; "))",
                                    hint: "the file may come from another Lockstep version")
            }
        } else {
            model = try inferModel(st, path: path)
            let problems = model.problems()
            guard problems.isEmpty else {
                throw LockstepError("\(path): its tensors describe a model Lockstep cannot build: \(problems.joined(separator: "; "))",
                                    hint: "save the seed Net's state_dict with safetensors.torch.save_file")
            }
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
                if let k = (0..<t.count).first(where: { !buf.ptr[t.offset + $0].isFinite }) {
                    throw LockstepError("\(path): tensor '\(prefix + t.name)' holds \(buf.ptr[t.offset + k]) at element \(k); weights must be finite",
                                        hint: "use weights from a run that did not diverge (an earlier checkpoint, or best.safetensors)")
                }
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
        return Checkpoint(model: model, params: params, optimizerKind: kind, optimizerState: state, step: step,
                          metadata: st.metadata, verified: verified)
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

/// Every byte of a Lockstep checkpoint is covered by `file_sha256`: the SHA-256 of the whole
/// file as written with that value's 64 hex digits set to `0`. `part_crc32` holds a CRC-32 of
/// each tensor's bytes and of each metadata value, so that a damaged file is refused naming the
/// tensor or field that changed (the file hash alone could only say "damaged").
public enum CheckpointIntegrity {
    static let fileKey = "file_sha256"
    static let partsKey = "part_crc32"
    static let placeholder = [UInt8](repeating: UInt8(ascii: "0"), count: 64)

    static func parts(_ st: Safetensors) -> [String: String] {
        var p: [String: String] = [:]
        for (name, t) in st.tensors { p["tensor " + name] = crc32Hex(t.data) }
        for (k, v) in st.metadata where k != fileKey && k != partsKey { p["metadata " + k] = crc32Hex(Array(v.utf8)) }
        return p
    }

    /// Adds both checksums to `st` and returns the file's bytes.
    public static func seal(_ st: inout Safetensors) -> [UInt8] {
        let p = parts(st)
        st.metadata[partsKey] = (try? JSONEncoder.sorted.encode(p)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
        st.metadata[fileKey] = String(decoding: placeholder, as: UTF8.self)
        var bytes = st.encoded()
        let at = valueOffset(bytes)!
        let digest = Array(SHA256.hex(bytes).utf8)
        for k in 0..<64 { bytes[at + k] = digest[k] }
        return bytes
    }

    /// Where the 64 hex digits of `file_sha256` start, searched in the header only.
    static func valueOffset(_ b: [UInt8]) -> Int? {
        guard b.count >= 8 else { return nil }
        var n = 0
        for k in 0..<8 { n |= Int(b[k]) << (8 * k) }
        guard n > 0, n <= b.count - 8 else { return nil }
        let needle = Array("\"\(fileKey)\":\"".utf8)
        var i = 8
        while i + needle.count + 64 <= 8 + n {
            if b[i] == needle[0] && Array(b[i..<(i + needle.count)]) == needle { return i + needle.count }
            i += 1
        }
        return nil
    }

    /// True when the file's checksum matches; false for a file that has none and may lack one
    /// (PyTorch's, or a Lockstep checkpoint of format 1). Throws naming what was damaged.
    public static func verify(_ bytes: [UInt8], path: String) throws -> Bool {
        guard let at = valueOffset(bytes) else {
            // No checksum: fine for a file Lockstep did not write; a Lockstep file of format 2 lost it.
            let st: Safetensors
            do { st = try Safetensors.decode(bytes, path: path) } catch let e as LockstepError {
                // A file that never had a checksum gets the real decode error; ours, that it was damaged.
                let ours = bytes.prefix(min(bytes.count, 100_008)).withUnsafeBufferPointer { b in
                    String(decoding: b, as: UTF8.self).contains("\"format\":\"\(Checkpoint.format)\"")
                }
                throw ours ? LockstepError("\(path): the checkpoint is damaged: its header no longer parses (\(e.message))") : e
            }
            if st.metadata["format"] == nil || st.metadata["format"] == "lockstep-1" { return false }
            throw LockstepError("\(path): the checkpoint is damaged: its header no longer holds its checksum (\(fileKey))")
        }
        var copy = bytes
        let stored = String(decoding: bytes[at..<(at + 64)], as: UTF8.self)
        for k in 0..<64 { copy[at + k] = placeholder[k] }
        if SHA256.hex(copy) == stored { return true }
        throw LockstepError("\(path): the checkpoint is damaged: \(diagnose(bytes, path: path))")
    }

    /// Names what differs from the part checksums, as well as the header still allows.
    static func diagnose(_ bytes: [UInt8], path: String) -> String {
        let st: Safetensors
        do { st = try Safetensors.decode(bytes, path: path) } catch { return "its header cannot be read (\(error))" }
        guard let table = st.metadata[partsKey], let data = table.data(using: .utf8),
              let stored = try? JSONDecoder().decode([String: String].self, from: data) else {
            return "its table of part checksums (\(partsKey)) was altered"
        }
        let now = parts(st)
        var bad: [String] = []
        for key in Set(stored.keys).union(now.keys).sorted() {
            switch (stored[key], now[key]) {
            case let (a?, b?) where a != b: bad.append("\(key) does not match its checksum")
            case (nil, _?): bad.append("\(key) was added")
            case (_?, nil): bad.append("\(key) is missing")
            default: break
            }
        }
        if bad.isEmpty { return "the file's SHA-256 does not match \(fileKey): its header (tensor shapes or offsets, or the checksum itself) was altered" }
        return bad.prefix(8).joined(separator: "; ") + (bad.count > 8 ? "; and \(bad.count - 8) more" : "")
    }

    static func crc32Hex(_ b: [UInt8]) -> String {
        let v = b.withUnsafeBufferPointer { UInt32(crc32(0, $0.baseAddress, UInt32($0.count))) }
        return String(format: "%08x", v)
    }

    /// The newest `checkpoint-step-N.safetensors` beside `path` that verifies (`--keep-last`).
    public static func newestIntactSibling(of path: String) -> (path: String, step: Int)? {
        let dir = (path as NSString).deletingLastPathComponent
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir.isEmpty ? "." : dir)) ?? []
        let kept = names.compactMap { n -> (String, Int)? in
            guard let s = KeptCheckpoints.step(ofName: n) else { return nil }
            return ((dir as NSString).appendingPathComponent(n), s)
        }.sorted { $0.1 > $1.1 }
        for (p, s) in kept where p != path {
            if let d = FileManager.default.contents(atPath: p), (try? verify([UInt8](d), path: p)) == true { return (p, s) }
        }
        return nil
    }
}

/// `--keep-last K`: each checkpoint is also kept as `checkpoint-step-N.safetensors` (a hard link,
/// no copy), and only the newest K of those stay.
public enum KeptCheckpoints {
    public static func name(step: Int) -> String { String(format: "checkpoint-step-%08d.safetensors", step) }

    static func step(ofName n: String) -> Int? {
        guard n.hasPrefix("checkpoint-step-"), n.hasSuffix(".safetensors") else { return nil }
        return Int(n.dropFirst(16).dropLast(12))
    }

    public static func keep(_ path: String, step: Int, last k: Int) throws {
        guard k > 0 else { return }
        let dir = (path as NSString).deletingLastPathComponent
        let kept = (dir as NSString).appendingPathComponent(name(step: step))
        unlink(kept)
        guard link(path, kept) == 0 else {
            throw LockstepError("cannot keep \(kept): \(String(cString: strerror(errno)))", hint: "check the space and permissions of \(dir)")
        }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        let steps = names.compactMap(step(ofName:)).sorted(by: >)
        for s in steps.dropFirst(k) { unlink((dir as NSString).appendingPathComponent(name(step: s))) }
    }
}

extension JSONEncoder {
    public static var sorted: JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return e
    }
}
