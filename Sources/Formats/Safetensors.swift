import Foundation

/// The safetensors format: u64 LE header length, a JSON header
/// `{name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}`, then raw LE data.
public struct Safetensors {
    public struct Tensor: Equatable {
        public var dtype: String   // "F32", "I64", …
        public var shape: [Int]
        public var data: [UInt8]

        public init(dtype: String, shape: [Int], data: [UInt8]) {
            self.dtype = dtype
            self.shape = shape
            self.data = data
        }

        public init(floats: [Float], shape: [Int]) {
            self.init(dtype: "F32", shape: shape, data: floats.withUnsafeBytes { Array($0) })
        }

        public init(floats: UnsafeBufferPointer<Float>, shape: [Int]) {
            self.init(dtype: "F32", shape: shape, data: Array(UnsafeRawBufferPointer(floats)))
        }

        public var floats: [Float] {
            let n = data.count / 4
            var out = [Float](repeating: 0, count: n)
            data.withUnsafeBytes { src in out.withUnsafeMutableBytes { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[0..<(n * 4)])) } }
            return out
        }
    }

    public var tensors: [String: Tensor] = [:]
    /// Tensor names in file order (writing keeps insertion order).
    public var order: [String] = []
    public var metadata: [String: String] = [:]

    public init() {}

    public mutating func add(_ name: String, _ t: Tensor) {
        if tensors[name] == nil { order.append(name) }
        tensors[name] = t
    }

    /// Deterministic bytes: keys sorted in the header, tensors in insertion order.
    public func encoded() -> [UInt8] {
        var entries: [String] = []
        var offset = 0
        var offsets: [String: (Int, Int)] = [:]
        for name in order {
            let t = tensors[name]!
            offsets[name] = (offset, offset + t.data.count)
            offset += t.data.count
        }
        for name in order.sorted() {
            let t = tensors[name]!
            let (b, e) = offsets[name]!
            entries.append("\(Safetensors.jsonString(name)):{\"dtype\":\"\(t.dtype)\",\"shape\":[\(t.shape.map(String.init).joined(separator: ","))],\"data_offsets\":[\(b),\(e)]}")
        }
        if !metadata.isEmpty {
            let m = metadata.keys.sorted().map { "\(Safetensors.jsonString($0)):\(Safetensors.jsonString(metadata[$0]!))" }
            entries.insert("\"__metadata__\":{\(m.joined(separator: ","))}", at: 0)
        }
        var header = Array("{\(entries.joined(separator: ","))}".utf8)
        while header.count % 8 != 0 { header.append(0x20) }
        var out: [UInt8] = []
        out.reserveCapacity(8 + header.count + offset)
        let n = UInt64(header.count)
        for k in 0..<8 { out.append(UInt8((n >> (8 * UInt64(k))) & 0xff)) }
        out += header
        for name in order { out += tensors[name]!.data }
        return out
    }

    package static func jsonString(_ s: String) -> String {
        var o = "\""
        for ch in s.unicodeScalars {
            switch ch {
            case "\"": o += "\\\""
            case "\\": o += "\\\\"
            case "\n": o += "\\n"
            default:
                if ch.value < 0x20 { o += String(format: "\\u%04x", ch.value) } else { o.unicodeScalars.append(ch) }
            }
        }
        return o + "\""
    }

    public static func decode(_ b: [UInt8], path: String) throws -> Safetensors {
        func bad(_ why: String) -> LockstepError {
            LockstepError("\(path): not a valid safetensors file: \(why)",
                          hint: "pass a checkpoint written by Lockstep or by safetensors.torch.save_file")
        }
        guard b.count >= 8 else { throw bad("file is \(b.count) bytes") }
        var n = 0
        for k in 0..<8 { n |= Int(b[k]) << (8 * k) }
        guard n > 0, n <= 100_000_000, 8 + n <= b.count else { throw bad("header length \(n) does not fit the file (truncated?)") }
        guard let obj = try? JSONSerialization.jsonObject(with: Data(b[8..<(8 + n)])) as? [String: Any] else {
            throw bad("header is not a JSON object")
        }
        var st = Safetensors()
        let dataStart = 8 + n
        var named: [(Int, String)] = []
        for (name, value) in obj {
            if name == "__metadata__" {
                st.metadata = (value as? [String: String]) ?? [:]
                continue
            }
            guard let d = value as? [String: Any], let dtype = d["dtype"] as? String,
                  let shape = (d["shape"] as? [Any])?.compactMap({ ($0 as? NSNumber)?.intValue }),
                  let offs = (d["data_offsets"] as? [Any])?.compactMap({ ($0 as? NSNumber)?.intValue }), offs.count == 2
            else { throw bad("tensor \(name) has a malformed entry") }
            let size: Int
            switch dtype {
            case "F32", "I32", "U32": size = 4
            case "F64", "I64", "U64": size = 8
            case "F16", "BF16", "I16", "U16": size = 2
            case "I8", "U8", "BOOL": size = 1
            default: throw bad("tensor \(name) has unknown dtype \(dtype)")
            }
            let count = shape.reduce(1, *)
            guard shape.allSatisfy({ $0 >= 0 }), offs[0] >= 0, offs[1] - offs[0] == count * size, dataStart + offs[1] <= b.count else {
                throw bad("tensor \(name) has offsets \(offs) that do not match shape \(shape) and the file size (truncated?)")
            }
            st.tensors[name] = Tensor(dtype: dtype, shape: shape, data: Array(b[(dataStart + offs[0])..<(dataStart + offs[1])]))
            named.append((offs[0], name))
        }
        st.order = named.sorted { $0.0 < $1.0 }.map(\.1)
        return st
    }
}
