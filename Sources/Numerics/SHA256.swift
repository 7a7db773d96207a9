import CCrypto

/// SHA-256 (FIPS 180-4), the project's identity for weights, configs and data files: OpenSSL's
/// libcrypto, which uses the CPU's SHA extensions where it has them (about ten times the
/// speed of the portable Swift version it replaced; `lockstep-bench --hash-mib`).
public struct SHA256 {
    /// The digest context; a hasher is used once, by one owner.
    private final class Context {
        let ctx: OpaquePointer
        init() {
            guard let c = EVP_MD_CTX_new(), EVP_DigestInit_ex(c, EVP_sha256(), nil) == 1 else {
                fatalError("OpenSSL cannot make a SHA-256 context (out of memory)")
            }
            ctx = c
        }
        deinit { EVP_MD_CTX_free(ctx) }
    }
    private let context = Context()

    public init() {}

    public mutating func update(_ data: UnsafeRawBufferPointer) {
        guard data.count > 0 else { return }
        EVP_DigestUpdate(context.ctx, data.baseAddress, data.count)
    }

    public mutating func update<S: Sequence>(_ bytes: S) where S.Element == UInt8 {
        if let done = bytes.withContiguousStorageIfAvailable({ update(UnsafeRawBufferPointer($0)) }) { return done }
        let a = Array(bytes)
        a.withUnsafeBytes { update($0) }
    }

    public mutating func finalize() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        EVP_DigestFinal_ex(context.ctx, &out, &length)
        return out
    }

    public static func hex(_ data: UnsafeRawBufferPointer) -> String {
        var s = SHA256()
        s.update(data)
        return s.finalize().hexString
    }

    public static func hex<S: Sequence>(_ bytes: S) -> String where S.Element == UInt8 {
        var s = SHA256()
        s.update(bytes)
        return s.finalize().hexString
    }
}

extension Array where Element == UInt8 {
    public var hexString: String {
        let digits = Swift.Array<Character>("0123456789abcdef")
        var s = ""
        s.reserveCapacity(count * 2)
        for b in self { s.append(digits[Int(b >> 4)]); s.append(digits[Int(b & 15)]) }
        return s
    }
}
