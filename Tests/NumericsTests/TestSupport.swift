/// Reproducible test values: a 64-bit LCG giving multiples of 1/500 in [-2, 2].
struct Rand {
    var s: UInt64
    mutating func next() -> Float {
        s = s &* 6364136223846793005 &+ 1442695040888963407
        return Float(Int64(bitPattern: s >> 11) % 2001 - 1000) / 500
    }
}
