/// Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11).
///
/// Every random number in Lockstep is `philox(key: seed, counter: (purpose, …))`: a pure
/// function of where it is used, never of a generator's running state. That is what lets any
/// worker compute any sequence's dropout mask and get the same bits (DESIGN.md §3.4).
public enum Philox {
    @inline(__always)
    static func mulhilo(_ a: UInt32, _ b: UInt32) -> (hi: UInt32, lo: UInt32) {
        let p = UInt64(a) &* UInt64(b)
        return (UInt32(truncatingIfNeeded: p >> 32), UInt32(truncatingIfNeeded: p))
    }

    /// Ten rounds of Philox-4x32 on `counter` under `key`.
    @inline(__always)
    public static func block(key: UInt64, counter: SIMD4<UInt32>) -> SIMD4<UInt32> {
        var c = counter
        var k0 = UInt32(truncatingIfNeeded: key)
        var k1 = UInt32(truncatingIfNeeded: key >> 32)
        for _ in 0..<10 {
            let (hi0, lo0) = mulhilo(0xD251_1F53, c[0])
            let (hi1, lo1) = mulhilo(0xCD9E_8D57, c[2])
            c = SIMD4(hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0)
            k0 &+= 0x9E37_79B9
            k1 &+= 0xBB67_AE85
        }
        return c
    }

    /// A uniform float in [0, 1) with 24 random bits.
    @inline(__always)
    public static func unit(_ bits: UInt32) -> Float {
        Float(bits >> 8) * (1.0 / 16_777_216.0)
    }
}

/// What a random number is for; part of every Philox counter so uses never collide.
public enum RandomPurpose: UInt32 {
    case initWeights = 1
    case shuffle = 2
    case dropout = 3
    case syntheticData = 4
    case batchOrder = 5
    case validSplit = 6
}
