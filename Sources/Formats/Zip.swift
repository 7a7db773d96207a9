import CZlib
import Foundation

/// Bytes that stay valid while this object lives: a read-only map of a file, or memory of our own.
package final class Bytes {
    package let raw: UnsafeRawBufferPointer
    private let release: () -> Void

    package init(raw: UnsafeRawBufferPointer, release: @escaping () -> Void) {
        self.raw = raw
        self.release = release
    }

    deinit { release() }

    package static func allocate(_ count: Int) -> Bytes {
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1), alignment: 64)
        return Bytes(raw: UnsafeRawBufferPointer(start: p, count: count), release: { p.deallocate() })
    }

    package static func copy(_ a: [UInt8]) -> Bytes {
        let b = allocate(a.count)
        a.withUnsafeBytes { UnsafeMutableRawPointer(mutating: b.raw.baseAddress!).copyMemory(from: $0.baseAddress!, byteCount: a.count) }
        return b
    }
}

/// Reads the members of a ZIP archive (what `np.savez` and `np.savez_compressed` write):
/// stored or deflated, ZIP64 sizes and offsets, CRC-32 checked. Every size the archive declares
/// is checked against the file before anything is allocated, a stored member is read in place
/// from the map, and a deflated one is inflated straight into its own buffer in chunks.
package struct ZipArchive {
    package struct Entry {
        package let name: String
        package let method: UInt16
        package let crc: UInt32
        package let compressedSize: Int
        package let size: Int
        package let localHeaderOffset: Int
    }

    package let bytes: Bytes
    package let path: String
    /// What an inflated member may take: a size the archive declares is checked before allocating.
    package let memory: MemoryBudget
    package let entries: [Entry]

    /// Deflate cannot shrink data by more than about 1032:1; a larger declared ratio is a lie.
    static let maxDeflateRatio = 1032
    /// The most zlib is handed at once (its counters are 32-bit); tests lower it to cover the loop.
    nonisolated(unsafe) static var chunk = Int(UInt32.max / 2)

    package init(bytes: Bytes, path: String, memory: MemoryBudget) throws {
        self.bytes = bytes
        self.path = path
        self.memory = memory
        entries = try ZipArchive.readDirectory(bytes.raw, path)
        var seen: Set<String> = []
        for e in entries where !seen.insert(e.name).inserted {
            throw ZipArchive.corrupt(path, "it holds two members named \(e.name) (NumPy would read the last, so which is meant is unclear)")
        }
    }

    package static func corrupt(_ path: String, _ why: String) -> LockstepError {
        LockstepError("\(path): not a readable .npz (zip) file: \(why)",
                      hint: "write it with numpy.savez or numpy.savez_compressed; if it was copied, check the copy is complete")
    }

    package static func u16(_ d: UnsafeRawBufferPointer, _ o: Int) -> Int { Int(d[o]) | Int(d[o + 1]) << 8 }
    package static func u32(_ d: UnsafeRawBufferPointer, _ o: Int) -> Int { u16(d, o) | u16(d, o + 2) << 16 }
    /// 64-bit fields are read as unsigned and refused past 2^62, so no size wraps negative.
    private static func u64(_ d: UnsafeRawBufferPointer, _ o: Int) -> Int {
        let v = UInt64(u32(d, o)) | UInt64(u32(d, o + 4)) << 32
        return v > (1 << 62) ? Int.max / 4 : Int(v)
    }

    private static func readDirectory(_ d: UnsafeRawBufferPointer, _ path: String) throws -> [Entry] {
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
            guard rec >= 0, rec <= d.count - 56, u32(d, rec) == 0x0606_4b50 else { throw corrupt(path, "bad ZIP64 record") }
            count = u64(d, rec + 32)
            dirSize = u64(d, rec + 40)
            dirOffset = u64(d, rec + 48)
        }
        guard dirOffset >= 0, dirSize >= 0, dirOffset <= d.count, dirSize <= d.count - dirOffset, count < 1_000_000,
              count * 46 <= dirSize else {
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
            let name = String(decoding: UnsafeRawBufferPointer(rebasing: d[(o + 46)..<(o + 46 + nameLen)]), as: UTF8.self)
            var e = o + 46 + nameLen
            let extraEnd = e + extraLen
            while e + 4 <= extraEnd {
                let id = u16(d, e), len = u16(d, e + 2)
                if id == 1 {
                    var f = e + 4
                    let end = min(e + 4 + len, extraEnd)
                    if size == 0xFFFF_FFFF, f + 8 <= end { size = u64(d, f); f += 8 }
                    if csize == 0xFFFF_FFFF, f + 8 <= end { csize = u64(d, f); f += 8 }
                    if local == 0xFFFF_FFFF, f + 8 <= end { local = u64(d, f); f += 8 }
                }
                e += 4 + len
            }
            // Declared sizes against the file itself, before anything is allocated from them.
            guard csize <= d.count, local <= d.count - 30 else {
                throw corrupt(path, "member \(name) declares \(csize) compressed bytes at offset \(local), beyond the file's \(d.count) bytes (truncated?)")
            }
            if method == 0 && size != csize {
                throw corrupt(path, "stored member \(name) declares \(size) bytes but holds \(csize)")
            }
            if method == 8 && size / maxDeflateRatio > csize + 64 {
                throw corrupt(path, "member \(name) declares \(size) bytes from \(csize) compressed ones, more than deflate can expand")
            }
            entries.append(Entry(name: name, method: method, crc: crc, compressedSize: csize, size: size, localHeaderOffset: local))
            o += 46 + nameLen + extraLen + commentLen
        }
        return entries
    }

    /// The uncompressed bytes of one member, CRC-checked: a view of the map when stored.
    package func read(_ entry: Entry) throws -> (bytes: UnsafeRawBufferPointer, owner: Bytes) {
        let d = bytes.raw, o = entry.localHeaderOffset
        guard o >= 0, o + 30 <= d.count, ZipArchive.u32(d, o) == 0x0403_4b50 else {
            throw ZipArchive.corrupt(path, "member \(entry.name): bad local header")
        }
        let start = o + 30 + ZipArchive.u16(d, o + 26) + ZipArchive.u16(d, o + 28)
        guard entry.compressedSize >= 0, entry.size >= 0, start <= d.count, entry.compressedSize <= d.count - start else {
            throw ZipArchive.corrupt(path, "member \(entry.name) runs past the end of the file (truncated?)")
        }
        let out: UnsafeRawBufferPointer, owner: Bytes
        switch entry.method {
        case 0:
            out = UnsafeRawBufferPointer(rebasing: d[start..<(start + entry.compressedSize)])
            owner = bytes
        case 8:
            try memory.check(entry.size, for: "\(path): member \(entry.name)")
            owner = Bytes.allocate(entry.size)
            out = owner.raw
            var stream = z_stream()
            guard inflateInit2_(&stream, -15, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
                throw ZipArchive.corrupt(path, "zlib could not start")
            }
            defer { inflateEnd(&stream) }
            // Fed in chunks: zlib's counters are 32-bit, members (ZIP64) may be far larger.
            var inOff = 0, outOff = 0
            let src = d.baseAddress!, dst = UnsafeMutableRawPointer(mutating: out.baseAddress!)
            stream.next_out = dst.assumingMemoryBound(to: UInt8.self)
            stream.avail_out = 0
            var rc: Int32
            while true {
                if stream.avail_in == 0 && inOff < entry.compressedSize {
                    let n = min(ZipArchive.chunk, entry.compressedSize - inOff)
                    stream.next_in = UnsafeMutablePointer(mutating: (src + start + inOff).assumingMemoryBound(to: UInt8.self))
                    stream.avail_in = UInt32(n)
                    inOff += n
                }
                if stream.avail_out == 0 && outOff < entry.size {
                    let n = min(ZipArchive.chunk, entry.size - outOff)
                    stream.next_out = (dst + outOff).assumingMemoryBound(to: UInt8.self)
                    stream.avail_out = UInt32(n)
                    outOff += n
                }
                rc = inflate(&stream, Z_NO_FLUSH)
                if rc == Z_OK { continue }
                // No progress is possible only once the input or the declared output has run out.
                if rc == Z_BUF_ERROR && !(stream.avail_in == 0 && inOff >= entry.compressedSize)
                    && !(stream.avail_out == 0 && outOff >= entry.size) { continue }
                break
            }
            guard rc == Z_STREAM_END, Int(stream.total_out) == entry.size else {
                throw ZipArchive.corrupt(path, "member \(entry.name): deflate data is corrupt")
            }
        default:
            throw ZipArchive.corrupt(path, "member \(entry.name) uses compression method \(entry.method)")
        }
        var crc: UInt = 0
        var off = 0
        while off < out.count {
            let n = min(ZipArchive.chunk, out.count - off)
            crc = crc32(crc, out.baseAddress!.advanced(by: off).assumingMemoryBound(to: UInt8.self), UInt32(n))
            off += n
        }
        guard UInt32(crc) == entry.crc else { throw ZipArchive.corrupt(path, "member \(entry.name): CRC mismatch (file damaged)") }
        return (out, owner)
    }

    /// A zip of the given members: stored, or raw-deflated (`deflate`, as `np.savez_compressed`
    /// writes); with `zip64` every size and offset goes in ZIP64 fields and records, as NumPy
    /// writes members over 4 GiB. `declaredSize` overrides what the directory claims a member
    /// inflates to (tests of hostile files).
    package static func write(_ members: [(name: String, bytes: [UInt8])], deflate: Bool = false, zip64: Bool = false,
                      declaredSize: [String: Int] = [:]) -> [UInt8] {
        var out: [UInt8] = []
        var central: [UInt8] = []
        func le16(_ v: Int, _ a: inout [UInt8]) { a += [UInt8(v & 0xff), UInt8((v >> 8) & 0xff)] }
        func le32(_ v: Int, _ a: inout [UInt8]) { le16(v & 0xffff, &a); le16((v >> 16) & 0xffff, &a) }
        func le64(_ v: Int, _ a: inout [UInt8]) { le32(v & 0xffff_ffff, &a); le32(v >> 32, &a) }
        for m in members {
            let crc = m.bytes.withUnsafeBufferPointer { Int(crc32(0, $0.baseAddress, UInt32($0.count))) }
            let body = deflate ? rawDeflate(m.bytes) : m.bytes
            let size = declaredSize[m.name] ?? m.bytes.count
            let name = Array(m.name.utf8)
            let offset = out.count
            var extra: [UInt8] = []
            if zip64 { le16(1, &extra); le16(24, &extra); le64(size, &extra); le64(body.count, &extra); le64(offset, &extra) }
            let (s32, c32, o32) = zip64 ? (0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF) : (size, body.count, offset)
            let method = deflate ? 8 : 0
            le32(0x0403_4b50, &out); le16(45, &out); le16(0, &out); le16(method, &out); le16(0, &out); le16(0, &out)
            le32(crc, &out); le32(c32, &out); le32(s32, &out); le16(name.count, &out); le16(zip64 ? 20 : 0, &out)
            out += name
            if zip64 { le16(1, &out); le16(16, &out); le64(size, &out); le64(body.count, &out) }
            out += body
            le32(0x0201_4b50, &central); le16(45, &central); le16(45, &central); le16(0, &central); le16(method, &central)
            le16(0, &central); le16(0, &central); le32(crc, &central); le32(c32, &central); le32(s32, &central)
            le16(name.count, &central); le16(extra.count, &central); le16(0, &central); le16(0, &central); le16(0, &central)
            le32(0, &central); le32(o32, &central)
            central += name
            central += extra
        }
        let dirOffset = out.count
        out += central
        if zip64 {
            let rec = out.count
            le32(0x0606_4b50, &out); le64(44, &out); le16(45, &out); le16(45, &out); le32(0, &out); le32(0, &out)
            le64(members.count, &out); le64(members.count, &out); le64(central.count, &out); le64(dirOffset, &out)
            le32(0x0706_4b50, &out); le32(0, &out); le64(rec, &out); le32(1, &out)
        }
        le32(0x0605_4b50, &out); le16(0, &out); le16(0, &out)
        le16(zip64 ? 0xFFFF : members.count, &out); le16(zip64 ? 0xFFFF : members.count, &out)
        le32(zip64 ? 0xFFFF_FFFF : central.count, &out); le32(zip64 ? 0xFFFF_FFFF : dirOffset, &out); le16(0, &out)
        return out
    }

    /// Raw deflate (no zlib header), as zip members hold it.
    package static func rawDeflate(_ input: [UInt8]) -> [UInt8] {
        var stream = z_stream()
        guard deflateInit2_(&stream, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else { return [] }
        defer { deflateEnd(&stream) }
        var out = [UInt8](repeating: 0, count: Int(deflateBound(&stream, UInt(input.count))) + 16)
        var input = input
        let produced: Int = input.withUnsafeMutableBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                stream.next_in = src.baseAddress
                stream.avail_in = UInt32(src.count)
                stream.next_out = dst.baseAddress
                stream.avail_out = UInt32(dst.count)
                _ = CZlib.deflate(&stream, Z_FINISH)
                return Int(stream.total_out)
            }
        }
        return Array(out.prefix(produced))
    }
}

/// One member's uncompressed bytes, front to back, as many as asked at a time: memory is
/// the caller's buffer, not the member (the packer reads inputs larger than RAM this way).
/// Pages of the mapped archive already read are dropped from memory as it goes, and the
/// member's CRC-32 is checked when the last byte has been read (`finish`).
package final class ZipMemberStream {
    package let archive: ZipArchive
    package let entry: ZipArchive.Entry
    private let start: Int
    private var inOff = 0          // compressed bytes consumed
    private(set) var outOff = 0    // uncompressed bytes delivered
    private var crc: UInt = 0
    private var stream = z_stream()
    private var released = 0       // bytes of the map already given back
    static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    package init(_ archive: ZipArchive, _ entry: ZipArchive.Entry) throws {
        self.archive = archive
        self.entry = entry
        let d = archive.bytes.raw, o = entry.localHeaderOffset
        guard o >= 0, o + 30 <= d.count, ZipArchive.u32(d, o) == 0x0403_4b50 else {
            throw ZipArchive.corrupt(archive.path, "member \(entry.name): bad local header")
        }
        start = o + 30 + ZipArchive.u16(d, o + 26) + ZipArchive.u16(d, o + 28)
        guard entry.compressedSize >= 0, entry.size >= 0, start <= d.count, entry.compressedSize <= d.count - start else {
            throw ZipArchive.corrupt(archive.path, "member \(entry.name) runs past the end of the file (truncated?)")
        }
        switch entry.method {
        case 0: break
        case 8:
            guard inflateInit2_(&stream, -15, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
                throw ZipArchive.corrupt(archive.path, "zlib could not start")
            }
        default: throw ZipArchive.corrupt(archive.path, "member \(entry.name) uses compression method \(entry.method)")
        }
    }

    deinit { if entry.method == 8 { inflateEnd(&stream) } }

    package var remaining: Int { entry.size - outOff }

    /// Exactly `count` bytes into `dst`, or an error naming the member when it has fewer.
    package func read(into dst: UnsafeMutableRawPointer, count: Int) throws {
        guard count <= remaining else {
            throw ZipArchive.corrupt(archive.path, "member \(entry.name) ends after \(entry.size) bytes; \(outOff + count) were needed (truncated?)")
        }
        if count == 0 { return }
        let src = archive.bytes.raw.baseAddress! + start
        if entry.method == 0 {
            dst.copyMemory(from: src + outOff, byteCount: count)
            inOff = outOff + count
        } else {
            var done = 0
            while done < count {
                if stream.avail_in == 0 {
                    let n = min(1 << 20, entry.compressedSize - inOff)
                    stream.next_in = UnsafeMutablePointer(mutating: (src + inOff).assumingMemoryBound(to: UInt8.self))
                    stream.avail_in = UInt32(n)
                    inOff += n
                }
                let want = min(count - done, 1 << 30)
                stream.next_out = (dst + done).assumingMemoryBound(to: UInt8.self)
                stream.avail_out = UInt32(want)
                let rc = inflate(&stream, Z_NO_FLUSH)
                let got = want - Int(stream.avail_out)
                done += got
                if rc == Z_STREAM_END && done < count || rc != Z_OK && rc != Z_STREAM_END && !(rc == Z_BUF_ERROR && got > 0) {
                    throw ZipArchive.corrupt(archive.path, "member \(entry.name): deflate data is corrupt or short")
                }
            }
        }
        crc = crc32(crc, dst.assumingMemoryBound(to: UInt8.self), UInt32(count))
        outOff += count
        giveBack()
    }

    /// Drops the mapped pages already consumed, so the resident set stays the caller's buffers.
    private func giveBack() {
        let page = ZipMemberStream.pageSize
        let base = archive.bytes.raw.baseAddress!
        let upTo = ((start + inOff) / page) * page
        if upTo - released >= 8 << 20 {
            madvise(UnsafeMutableRawPointer(mutating: base + released), upTo - released, MADV_DONTNEED)
            released = upTo
        }
    }

    /// Reads whatever is left (without keeping it) and checks the member's CRC-32.
    package func finish() throws {
        var buf = [UInt8](repeating: 0, count: 1 << 20)
        while remaining > 0 { let n = min(remaining, buf.count); try buf.withUnsafeMutableBytes { try read(into: $0.baseAddress!, count: n) } }
        guard UInt32(crc) == entry.crc else { throw ZipArchive.corrupt(archive.path, "member \(entry.name): CRC mismatch (file damaged)") }
    }
}
