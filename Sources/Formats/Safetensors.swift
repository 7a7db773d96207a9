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

    package static func jsonString(_ s: String) -> String { quotedString(s) }

    public static func decode(_ b: [UInt8], path: String) throws -> Safetensors {
        func bad(_ why: String) -> LockstepError {
            LockstepError("\(path): not a valid safetensors file: \(why)",
                          hint: "pass a checkpoint written by Lockstep or by safetensors.torch.save_file")
        }
        guard b.count >= 8 else { throw bad("the file is \(b.count) bytes, shorter than the 8-byte header length") }
        var declared: UInt64 = 0
        for k in 0..<8 { declared |= UInt64(b[k]) << (8 * UInt64(k)) }
        guard declared >= 2, declared <= 100_000_000, declared <= UInt64(b.count - 8) else {
            throw bad("header length \(declared) does not fit the file of \(b.count) bytes (truncated, or not safetensors)")
        }
        let n = Int(declared)
        let obj: [String: Any]
        do {
            guard let o = try JSONSerialization.jsonObject(with: Data(b[8..<(8 + n)])) as? [String: Any] else { throw bad("the header is JSON but not an object") }
            obj = o
        } catch let e as LockstepError { throw e } catch {
            throw bad("the header is not JSON (\(String(describing: error).prefix(120)))")
        }
        /// A JSON number that is a whole number in 0...2^53 (a size or an offset), else nil.
        func whole(_ v: Any) -> Int? {
            guard let num = v as? NSNumber else { return nil }
            let d = num.doubleValue
            guard d >= 0, d <= 9_007_199_254_740_992, d == d.rounded(.towardZero) else { return nil }
            return Int(d)
        }
        var st = Safetensors()
        let dataStart = 8 + n, dataBytes = b.count - dataStart
        var ranges: [(start: Int, end: Int, name: String)] = []
        for (name, value) in obj {
            let shown = String(name.prefix(80))
            if name == "__metadata__" {
                guard let m = value as? [String: Any] else { throw bad("__metadata__ is not an object") }
                for (k, v) in m {
                    guard let text = v as? String else { throw bad("__metadata__ value of \(k.prefix(80)) is not a string") }
                    st.metadata[k] = text
                }
                continue
            }
            guard let d = value as? [String: Any] else { throw bad("tensor \(shown): its entry is not an object") }
            guard let dtype = d["dtype"] as? String else { throw bad("tensor \(shown): dtype is missing or not a string") }
            guard let rawShape = d["shape"] as? [Any] else { throw bad("tensor \(shown): shape is missing or not a list") }
            let shape = rawShape.compactMap(whole)
            guard shape.count == rawShape.count, shape.count <= 8 else {
                throw bad("tensor \(shown): shape \(rawShape.prefix(8)) is not a list of at most 8 whole numbers")
            }
            guard let rawOffs = d["data_offsets"] as? [Any], rawOffs.count == 2, let start = whole(rawOffs[0]), let end = whole(rawOffs[1]) else {
                throw bad("tensor \(shown): data_offsets is not two whole numbers")
            }
            let size: Int
            switch dtype {
            case "F32", "I32", "U32": size = 4
            case "F64", "I64", "U64": size = 8
            case "F16", "BF16", "I16", "U16": size = 2
            case "I8", "U8", "BOOL": size = 1
            default: throw bad("tensor \(shown): unknown dtype \(dtype.prefix(16))")
            }
            var bytes = size
            for dim in shape {
                let (p, overflow) = bytes.multipliedReportingOverflow(by: dim)
                guard !overflow, p <= dataBytes else { throw bad("tensor \(shown): shape \(shape) of \(dtype) needs more bytes than the file holds") }
                bytes = p
            }
            guard start <= end, end <= dataBytes else {
                throw bad("tensor \(shown): data_offsets [\(start), \(end)] run past the \(dataBytes) bytes of data (truncated?)")
            }
            guard end - start == bytes else {
                throw bad("tensor \(shown): data_offsets [\(start), \(end)] hold \(end - start) bytes; shape \(shape) of \(dtype) takes \(bytes)")
            }
            st.tensors[name] = Tensor(dtype: dtype, shape: shape, data: Array(b[(dataStart + start)..<(dataStart + end)]))
            ranges.append((start, end, name))
        }
        // The safetensors rule: the tensors tile the data exactly, without overlaps or holes.
        ranges.sort { ($0.start, $0.end, $0.name) < ($1.start, $1.end, $1.name) }
        var at = 0
        for r in ranges {
            guard r.start == at else {
                throw bad(r.start < at ? "tensor \(r.name.prefix(80)) shares bytes \(r.start)..<\(min(at, r.end)) with another tensor"
                                       : "bytes \(at)..<\(r.start) of the data belong to no tensor")
            }
            at = r.end
        }
        guard at == dataBytes else { throw bad("bytes \(at)..<\(dataBytes) of the data belong to no tensor") }
        let named = ranges.map { ($0.start, $0.name) }
        st.order = named.sorted { $0.0 < $1.0 }.map(\.1)
        return st
    }
}

/// `s` as a double-quoted string, `"`, `\` and control characters escaped: valid in JSON and as a
/// TOML basic string alike (the safetensors header and config.toml both write it).
public func quotedString(_ s: String) -> String {
    var o = "\""
    for ch in s.unicodeScalars {
        switch ch {
        case "\"": o += "\\\""
        case "\\": o += "\\\\"
        case "\n": o += "\\n"
        default:
            if ch.value < 0x20 || ch.value == 0x7f { o += String(format: "\\u%04x", ch.value) } else { o.unicodeScalars.append(ch) }
        }
    }
    return o + "\""
}
