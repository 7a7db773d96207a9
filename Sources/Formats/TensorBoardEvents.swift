import Foundation

/// TensorBoard event records: TFRecord framing — length (u64 LE), masked CRC-32C of the length
/// (u32), the bytes, masked CRC-32C of the bytes — around protobuf `Event`s {wall_time = 1
/// (double), step = 2 (int64), file_version = 3, summary = 5 {value = 1 {tag = 1, simple_value
/// = 2 (float)}}}. Bytes in, values out: the writer and its files are `Observe.TensorBoardLog`.
public enum TensorBoardEvents {
    // MARK: framing

    public static func record(_ payload: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        let length = withUnsafeBytes(of: UInt64(payload.count).littleEndian, Array.init)
        out += length
        out += withUnsafeBytes(of: masked(crc32c(length)).littleEndian, Array.init)
        out += payload
        out += withUnsafeBytes(of: masked(crc32c(payload)).littleEndian, Array.init)
        return out
    }

    /// Every whole record whose two checksums hold, in order; stops at the first that does not.
    public static func records(_ b: [UInt8]) -> [(payload: [UInt8], end: Int)] {
        func u32(_ o: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(b[o + $1]) << (8 * $1) } }
        var out: [(payload: [UInt8], end: Int)] = []
        var at = 0
        while at + 12 <= b.count {
            let length = Array(b[at..<(at + 8)])
            let n = length.enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
            guard u32(at + 8) == masked(crc32c(length)), n >= 0, n <= b.count - at - 16 else { break }
            let payload = Array(b[(at + 12)..<(at + 12 + n)])
            guard u32(at + 12 + n) == masked(crc32c(payload)) else { break }
            at += 16 + n
            out.append((payload, at))
        }
        return out
    }

    static func masked(_ crc: UInt32) -> UInt32 { ((crc >> 15) | (crc << 17)) &+ 0xA282_EAD8 }

    /// CRC-32C (Castagnoli), as TFRecord uses.
    public static func crc32c(_ bytes: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes { c = crcTable[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return c ^ 0xFFFF_FFFF
    }

    static let crcTable: [UInt32] = (0..<256).map { i -> UInt32 in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 != 0 ? 0x82F6_3B78 ^ (c >> 1) : c >> 1 }
        return c
    }

    // MARK: protobuf

    static func varint(_ v: UInt64) -> [UInt8] {
        var v = v, out: [UInt8] = []
        repeat {
            var byte = UInt8(v & 0x7F)
            v >>= 7
            if v != 0 { byte |= 0x80 }
            out.append(byte)
        } while v != 0
        return out
    }

    static func lengthDelimited(_ field: UInt64, _ bytes: [UInt8]) -> [UInt8] {
        varint(field << 3 | 2) + varint(UInt64(bytes.count)) + bytes
    }

    public static func event(wallTime: Double, step: Int, fileVersion: String? = nil, scalars: [(String, Double)] = []) -> [UInt8] {
        var e = varint(1 << 3 | 1) + withUnsafeBytes(of: wallTime.bitPattern.littleEndian, Array.init)
        e += varint(2 << 3 | 0) + varint(UInt64(bitPattern: Int64(step)))
        if let fileVersion { e += lengthDelimited(3, Array(fileVersion.utf8)) }
        if !scalars.isEmpty {
            var summary: [UInt8] = []
            for (tag, value) in scalars {
                let v = lengthDelimited(1, Array(tag.utf8)) + varint(2 << 3 | 5)
                    + withUnsafeBytes(of: Float(value).bitPattern.littleEndian, Array.init)
                summary += lengthDelimited(1, v)
            }
            e += lengthDelimited(5, summary)
        }
        return e
    }

    /// A decoded `Event` (the fields this writer uses), for the resume cut and for tests.
    public struct Event: Equatable {
        public var wallTime = 0.0
        public var step = 0
        public var fileVersion: String? = nil
        public var scalars: [String: Float] = [:]

        public init?(_ b: [UInt8]) {
            var at = 0
            func readVarint() -> UInt64? {
                var v: UInt64 = 0, shift: UInt64 = 0
                while at < b.count, shift < 64 {
                    let byte = b[at]; at += 1
                    v |= UInt64(byte & 0x7F) << shift
                    if byte & 0x80 == 0 { return v }
                    shift += 7
                }
                return nil
            }
            func fields(_ end: Int, _ body: (UInt64, Int, Int) -> Bool) -> Bool {
                while at < end {
                    guard let key = readVarint() else { return false }
                    let (field, type) = (key >> 3, key & 7)
                    switch type {
                    case 0: guard let v = readVarint() else { return false }; if !body(field, Int(truncatingIfNeeded: v), 0) { return false }
                    case 1: guard at + 8 <= end else { return false }; if !body(field, at, 8) { return false }; at += 8
                    case 5: guard at + 4 <= end else { return false }; if !body(field, at, 4) { return false }; at += 4
                    case 2:
                        guard let n = readVarint(), at + Int(n) <= end else { return false }
                        let start = at
                        if !body(field, start, Int(n) | 1 << 62) { return false }
                        at = start + Int(n)
                    default: return false
                    }
                }
                return true
            }
            func u64(_ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(b[o + $1]) << (8 * $1) } }
            func u32(_ o: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(b[o + $1]) << (8 * $1) } }
            var ok = fields(b.count) { field, value, size in
                switch (field, size) {
                case (1, 8): wallTime = Double(bitPattern: u64(value))
                case (2, 0): step = value
                case (3, let s) where s & (1 << 62) != 0:
                    fileVersion = String(decoding: b[value..<(value + (s & ~(1 << 62)))], as: UTF8.self)
                case (5, let s) where s & (1 << 62) != 0:
                    let end = value + (s & ~(1 << 62))
                    at = value
                    return fields(end) { f, v, sz in
                        guard f == 1, sz & (1 << 62) != 0 else { return true }
                        let vend = v + (sz & ~(1 << 62))
                        var tag = "", simple: Float? = nil
                        at = v
                        let inner = fields(vend) { f2, v2, s2 in
                            if f2 == 1, s2 & (1 << 62) != 0 { tag = String(decoding: b[v2..<(v2 + (s2 & ~(1 << 62)))], as: UTF8.self) }
                            if f2 == 2, s2 == 4 { simple = Float(bitPattern: u32(v2)) }
                            return true
                        }
                        if let simple { scalars[tag] = simple }
                        at = vend
                        return inner
                    }
                default: break
                }
                return true
            }
            ok = ok && at == b.count
            if !ok { return nil }
        }
    }
}
