import CZlib
import Foundation

/// Reads the members of a ZIP archive (what `np.savez` and `np.savez_compressed` write):
/// stored or deflated, ZIP64 sizes and offsets, CRC-32 checked.
struct ZipArchive {
    struct Entry {
        let name: String
        let method: UInt16
        let crc: UInt32
        let compressedSize: Int
        let size: Int
        let localHeaderOffset: Int
    }

    let data: [UInt8]
    let path: String
    let entries: [Entry]

    init(data: [UInt8], path: String) throws {
        self.data = data
        self.path = path
        entries = try ZipArchive.readDirectory(data, path)
    }

    private static func corrupt(_ path: String, _ why: String) -> LockstepError {
        LockstepError("\(path): not a readable .npz (zip) file: \(why)",
                      hint: "write it with numpy.savez or numpy.savez_compressed; if it was copied, check the copy is complete")
    }

    private static func u16(_ d: [UInt8], _ o: Int) -> Int { Int(d[o]) | Int(d[o + 1]) << 8 }
    private static func u32(_ d: [UInt8], _ o: Int) -> Int { u16(d, o) | u16(d, o + 2) << 16 }
    private static func u64(_ d: [UInt8], _ o: Int) -> Int { u32(d, o) | u32(d, o + 4) << 32 }

    private static func readDirectory(_ d: [UInt8], _ path: String) throws -> [Entry] {
        guard d.count >= 22 else { throw corrupt(path, "file is \(d.count) bytes, too short for a zip") }
        var eocd = -1
        var i = d.count - 22
        let lowest = max(0, d.count - 22 - 65_535)
        while i >= lowest {
            if d[i] == 0x50 && d[i + 1] == 0x4b && d[i + 2] == 0x05 && d[i + 3] == 0x06 { eocd = i; break }
            i -= 1
        }
        guard eocd >= 0 else { throw corrupt(path, "no end-of-central-directory record (truncated?)") }
        var count = u16(d, eocd + 10)
        var dirSize = u32(d, eocd + 12)
        var dirOffset = u32(d, eocd + 16)
        // ZIP64: the locator sits just before the classic record.
        if eocd >= 20 && u32(d, eocd - 20) == 0x0706_4b50 {
            let rec = u64(d, eocd - 20 + 8)
            guard rec >= 0, rec + 56 <= d.count, u32(d, rec) == 0x0606_4b50 else { throw corrupt(path, "bad ZIP64 record") }
            count = u64(d, rec + 32)
            dirSize = u64(d, rec + 40)
            dirOffset = u64(d, rec + 48)
        }
        guard dirOffset >= 0, dirSize >= 0, dirOffset + dirSize <= d.count, count < 1_000_000 else {
            throw corrupt(path, "central directory out of range (truncated?)")
        }
        var entries: [Entry] = []
        var o = dirOffset
        for _ in 0..<count {
            guard o + 46 <= d.count, u32(d, o) == 0x0201_4b50 else { throw corrupt(path, "bad central directory entry") }
            let method = UInt16(u16(d, o + 10))
            let crc = UInt32(u32(d, o + 16))
            var csize = u32(d, o + 20), size = u32(d, o + 24)
            let nameLen = u16(d, o + 28), extraLen = u16(d, o + 30), commentLen = u16(d, o + 32)
            var local = u32(d, o + 42)
            guard o + 46 + nameLen + extraLen + commentLen <= d.count else { throw corrupt(path, "entry runs past the end") }
            let name = String(decoding: d[(o + 46)..<(o + 46 + nameLen)], as: UTF8.self)
            var e = o + 46 + nameLen
            let extraEnd = e + extraLen
            while e + 4 <= extraEnd {
                let id = u16(d, e), len = u16(d, e + 2)
                if id == 1 {
                    var f = e + 4
                    if size == 0xFFFF_FFFF, f + 8 <= e + 4 + len { size = u64(d, f); f += 8 }
                    if csize == 0xFFFF_FFFF, f + 8 <= e + 4 + len { csize = u64(d, f); f += 8 }
                    if local == 0xFFFF_FFFF, f + 8 <= e + 4 + len { local = u64(d, f); f += 8 }
                }
                e += 4 + len
            }
            entries.append(Entry(name: name, method: method, crc: crc, compressedSize: csize, size: size, localHeaderOffset: local))
            o += 46 + nameLen + extraLen + commentLen
        }
        return entries
    }

    /// The uncompressed bytes of one member, CRC-checked.
    func read(_ entry: Entry) throws -> [UInt8] {
        let d = data, o = entry.localHeaderOffset
        guard o >= 0, o + 30 <= d.count, ZipArchive.u32(d, o) == 0x0403_4b50 else {
            throw ZipArchive.corrupt(path, "member \(entry.name): bad local header")
        }
        let start = o + 30 + ZipArchive.u16(d, o + 26) + ZipArchive.u16(d, o + 28)
        guard entry.compressedSize >= 0, entry.size >= 0, start + entry.compressedSize <= d.count else {
            throw ZipArchive.corrupt(path, "member \(entry.name) runs past the end of the file (truncated?)")
        }
        var out: [UInt8]
        switch entry.method {
        case 0:
            out = Array(d[start..<(start + entry.compressedSize)])
        case 8:
            out = [UInt8](repeating: 0, count: entry.size)
            var stream = z_stream()
            guard inflateInit2_(&stream, -15, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
                throw ZipArchive.corrupt(path, "zlib could not start")
            }
            defer { inflateEnd(&stream) }
            let rc: Int32 = d.withUnsafeBufferPointer { src in
                out.withUnsafeMutableBufferPointer { dst in
                    stream.next_in = UnsafeMutablePointer(mutating: src.baseAddress! + start)
                    stream.avail_in = UInt32(entry.compressedSize)
                    stream.next_out = dst.baseAddress
                    stream.avail_out = UInt32(entry.size)
                    return inflate(&stream, Z_FINISH)
                }
            }
            guard rc == Z_STREAM_END, Int(stream.total_out) == entry.size else {
                throw ZipArchive.corrupt(path, "member \(entry.name): deflate data is corrupt")
            }
        default:
            throw ZipArchive.corrupt(path, "member \(entry.name) uses compression method \(entry.method)")
        }
        let crc = out.withUnsafeBufferPointer { UInt32(crc32(0, $0.baseAddress, UInt32($0.count))) }
        guard crc == entry.crc else { throw ZipArchive.corrupt(path, "member \(entry.name): CRC mismatch (file damaged)") }
        return out
    }

    /// A stored (uncompressed) zip of the given members: enough for tests and exports.
    static func write(_ members: [(name: String, bytes: [UInt8])]) -> [UInt8] {
        var out: [UInt8] = []
        var central: [UInt8] = []
        func le16(_ v: Int, _ a: inout [UInt8]) { a += [UInt8(v & 0xff), UInt8((v >> 8) & 0xff)] }
        func le32(_ v: Int, _ a: inout [UInt8]) { le16(v & 0xffff, &a); le16((v >> 16) & 0xffff, &a) }
        for m in members {
            let crc = m.bytes.withUnsafeBufferPointer { Int(crc32(0, $0.baseAddress, UInt32($0.count))) }
            let name = Array(m.name.utf8)
            let offset = out.count
            le32(0x0403_4b50, &out); le16(20, &out); le16(0, &out); le16(0, &out); le16(0, &out); le16(0, &out)
            le32(crc, &out); le32(m.bytes.count, &out); le32(m.bytes.count, &out); le16(name.count, &out); le16(0, &out)
            out += name
            out += m.bytes
            le32(0x0201_4b50, &central); le16(20, &central); le16(20, &central); le16(0, &central); le16(0, &central)
            le16(0, &central); le16(0, &central); le32(crc, &central); le32(m.bytes.count, &central); le32(m.bytes.count, &central)
            le16(name.count, &central); le16(0, &central); le16(0, &central); le16(0, &central); le16(0, &central)
            le32(0, &central); le32(offset, &central)
            central += name
        }
        let dirOffset = out.count
        out += central
        le32(0x0605_4b50, &out); le16(0, &out); le16(0, &out); le16(members.count, &out); le16(members.count, &out)
        le32(central.count, &out); le32(dirOffset, &out); le16(0, &out)
        return out
    }
}
