import Foundation

/// One array from a `.npy` member: its dtype string, shape, and raw little-endian bytes (read in
/// place: `owner` keeps them valid).
public struct NPYArray {
    public let descr: String
    public let shape: [Int]
    public let data: UnsafeRawBufferPointer
    package let owner: AnyObject?

    public var count: Int { shape.reduce(1, *) }

    public static func parse(_ b: [UInt8], file: String, array: String) throws -> NPYArray {
        let bytes = Bytes.copy(b)
        return try parse(bytes.raw, owner: bytes, file: file, array: array)
    }

    /// What a `.npy` header says: dtype, shape, and where the data starts.
    package struct Header {
        package let descr: String
        package let shape: [Int]
        let dataStart: Int
        package var count: Int { shape.reduce(1, *) }
    }

    package static func bad(_ file: String, _ array: String, _ why: String) -> LockstepError {
        LockstepError("\(file): array '\(array)' is not a valid .npy member: \(why)",
                      hint: "save arrays with numpy.savez(path, x=x, lengths=lengths, y=y)")
    }

    /// Bytes of the header: 0 while `b` is too short to say (`b` holds the first 12 bytes or fewer).
    package static func headerLength(_ b: UnsafeRawBufferPointer, file: String, array: String) throws -> Int {
        guard b.count >= 10, b[0] == 0x93, Array(b[1...5]) == Array("NUMPY".utf8) else { throw bad(file, array, "missing NUMPY magic") }
        guard b[6] != 1 || b[7] == 0 else { throw bad(file, array, "unsupported format version \(b[6]).\(b[7])") }
        switch b[6] {
        case 1: return 10 + (Int(b[8]) | Int(b[9]) << 8)
        case 2, 3:
            guard b.count >= 12 else { throw bad(file, array, "truncated header") }
            return 12 + (Int(b[8]) | Int(b[9]) << 8 | Int(b[10]) << 16 | Int(b[11]) << 24)
        default: throw bad(file, array, "unsupported format version \(b[6])")
        }
    }

    /// Parses the header of NPY format versions 1–3 (numpy's `format.py`): magic, header dict.
    package static func header(_ b: UnsafeRawBufferPointer, file: String, array: String) throws -> Header {
        let end = try headerLength(b, file: file, array: array)
        let start = b[6] == 1 ? 10 : 12
        guard end <= b.count else { throw bad(file, array, "truncated header") }
        let header = String(decoding: UnsafeRawBufferPointer(rebasing: b[start..<end]), as: UTF8.self)
        guard let descr = field(header, "descr").flatMap(quoted) else { throw bad(file, array, "header has no 'descr'") }
        guard let fortran = field(header, "fortran_order") else { throw bad(file, array, "header has no 'fortran_order'") }
        guard let shapeText = field(header, "shape") else { throw bad(file, array, "header has no 'shape'") }
        var shape: [Int] = []
        let inner = shapeText.trimmingCharacters(in: CharacterSet(charactersIn: "() "))
        for part in inner.split(separator: ",") {
            let s = part.trimmingCharacters(in: .whitespaces)
            if s.isEmpty { continue }
            guard let v = Int(s), v >= 0 else { throw bad(file, array, "bad shape \(shapeText)") }
            shape.append(v)
        }
        if fortran.hasPrefix("True") {
            throw LockstepError("\(file): array '\(array)' is stored in Fortran order",
                                hint: "save numpy.ascontiguousarray(\(array)) instead")
        }
        guard itemSize(descr) != nil else {
            throw LockstepError("\(file): array '\(array)' has dtype \(descr), which Lockstep does not read",
                                hint: "use little-endian float32 for x and integers for lengths and y")
        }
        // Refuse impossible declared shapes before computing anything from them.
        var n = 1
        for d in shape {
            let (m, overflow) = n.multipliedReportingOverflow(by: d)
            guard !overflow, m <= 1 << 40 else { throw bad(file, array, "declared shape \(shape) is absurdly large") }
            n = m
        }
        return Header(descr: descr, shape: shape, dataStart: end)
    }

    /// Parses a whole `.npy` member: header, then the data it declares.
    package static func parse(_ b: UnsafeRawBufferPointer, owner: AnyObject?, file: String, array: String) throws -> NPYArray {
        let h = try header(b, file: file, array: array)
        let need = h.count * itemSize(h.descr)!
        guard b.count - h.dataStart >= need else {
            throw bad(file, array, "declared shape \(h.shape) needs \(need) bytes of data but the member has \(b.count - h.dataStart) (truncated?)")
        }
        return NPYArray(descr: h.descr, shape: h.shape, data: UnsafeRawBufferPointer(rebasing: b[h.dataStart..<(h.dataStart + need)]),
                        owner: owner)
    }

    private static func field(_ header: String, _ key: String) -> String? {
        guard let r = header.range(of: "'\(key)':") else { return nil }
        let rest = header[r.upperBound...].drop(while: { $0 == " " })
        if rest.first == "(" {
            guard let close = rest.firstIndex(of: ")") else { return nil }
            return String(rest[...close])
        }
        let end = rest.firstIndex(where: { $0 == "," || $0 == "}" }) ?? rest.endIndex
        return String(rest[..<end]).trimmingCharacters(in: .whitespaces)
    }

    private static func quoted(_ s: String) -> String? {
        let t = s.trimmingCharacters(in: CharacterSet(charactersIn: "'\" "))
        return t.isEmpty ? nil : t
    }

    package static func itemSize(_ descr: String) -> Int? {
        switch descr {
        case "<f4", "<i4", "<u4": return 4
        case "<f8", "<i8", "<u8": return 8
        case "<i2", "<u2": return 2
        case "|i1", "|u1", "|b1": return 1
        default: return nil
        }
    }

    /// The values as Float, only for float32 (x must be float32: the math is float32).
    public func floats(file: String, array: String) throws -> [Float] {
        guard descr == "<f4" else {
            throw LockstepError("\(file): array '\(array)' has dtype \(descr); Lockstep needs float32 (<f4)",
                                hint: "save \(array).astype(numpy.float32)")
        }
        var out = [Float](repeating: 0, count: count)
        out.withUnsafeMutableBytes { $0.copyMemory(from: data) }
        return out
    }

    /// Checks that x is float32, for reading it in place.
    public func requireFloat32(file: String, array: String) throws {
        guard descr == "<f4" else {
            throw LockstepError("\(file): array '\(array)' has dtype \(descr); Lockstep needs float32 (<f4)",
                                hint: "save \(array).astype(numpy.float32)")
        }
    }

    /// The values as Int, for any integer dtype.
    public func ints(file: String, array: String) throws -> [Int] {
        try NPYArray.ints(data, descr: descr, count: count, file: file, array: array)
    }

    /// `count` integers of dtype `descr` from little-endian bytes.
    package static func ints(_ raw: UnsafeRawBufferPointer, descr: String, count: Int, file: String, array: String) throws -> [Int] {
        func le(_ o: Int, _ n: Int) -> UInt64 {
            var v: UInt64 = 0
            for k in 0..<n { v |= UInt64(raw[o + k]) << (8 * UInt64(k)) }
            return v
        }
        switch descr {
        case "<i8": return (0..<count).map { Int(Int64(bitPattern: le($0 * 8, 8))) }
        case "<i4": return (0..<count).map { Int(Int32(truncatingIfNeeded: le($0 * 4, 4))) }
        case "<i2": return (0..<count).map { Int(Int16(truncatingIfNeeded: le($0 * 2, 2))) }
        case "|i1": return (0..<count).map { Int(Int8(truncatingIfNeeded: le($0, 1))) }
        case "<u4": return (0..<count).map { Int(le($0 * 4, 4)) }
        case "<u2": return (0..<count).map { Int(le($0 * 2, 2)) }
        case "|u1": return (0..<count).map { Int(raw[$0]) }
        case "<u8": return (0..<count).map { Int(clamping: le($0 * 8, 8)) }
        default:
            throw LockstepError("\(file): array '\(array)' has dtype \(descr); it must hold integers",
                                hint: "save \(array).astype(numpy.int64)")
        }
    }

    /// A version-1 `.npy` member (C order).
    public static func encode(descr: String, shape: [Int], data: [UInt8]) -> [UInt8] {
        let dims = shape.map(String.init).joined(separator: ", ") + (shape.count == 1 ? "," : "")
        var header = "{'descr': '\(descr)', 'fortran_order': False, 'shape': (\(dims)), }"
        while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        let len = header.utf8.count
        return [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(len & 0xff), UInt8(len >> 8)] + Array(header.utf8) + data
    }
}
