/// The project's own `exp`, `log`, `sigmoid` and `tanh`.
///
/// libm picks different code paths on different CPUs (glibc has FMA variants chosen at load
/// time), so its results can differ by an ulp between hosts. These functions use only
/// IEEE-754 `+ - * /` in a fixed order, no FMA and no branches that vectorization could
/// reorder, so they give the same bits on every x86-64 and ARM64 host (DESIGN.md §3.5).
/// Accuracy: `detExp` within 2 ulp on [-87, 88]; `detLog` within 2 ulp; `detTanh` within
/// 1e-7 absolute.
/// Scalar forms are lane 0 of the eight-lane forms: one formula, so the fused loops (eight
/// lanes) and their tails (scalar) agree bit for bit by construction.
@inlinable @inline(__always)
public func detExp(_ x: Float) -> Float { detExp(SIMD8(repeating: x))[0] }

@inlinable @inline(__always)
public func detSigmoid(_ x: Float) -> Float { detSigmoid(SIMD8(repeating: x))[0] }

@inlinable @inline(__always)
public func detTanh(_ x: Float) -> Float { detTanh(SIMD8(repeating: x))[0] }

/// exp on eight lanes: Cody–Waite range reduction, a degree-7 polynomial, 2^n from integer ops.
/// `@inlinable` so the fused cell loops inline it across modules (a call per eight lanes
/// cost a third of the forward pass).
@inlinable @inline(__always)
public func detExp(_ x: SIMD8<Float>) -> SIMD8<Float> {
    let xc = detClamp(x, -87.0, 88.0)
    let t = xc * 1.442_695_04
    let k = t + 12_582_912.0
    let n = k - 12_582_912.0
    let r = (xc - n * 0.693_145_751_953_125) - n * 1.428_606_765_330_187e-6
    var p = SIMD8<Float>(repeating: 1.0 / 5040.0)
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    let kb = unsafeBitCast(k, to: SIMD8<UInt32>.self)
    let scale = unsafeBitCast((kb &- 0x4B40_0000 &+ 127) &<< 23, to: SIMD8<Float>.self)
    return p * scale
}

/// `pointwiseMin(pointwiseMax(x, lo), hi)` bit for bit (NaN becomes `lo`, as IEEE
/// `maximum` gives), as two compares and blends: the standard library's forms are
/// lane-by-lane loops that do not inline.
@inlinable @inline(__always)
public func detClamp(_ x: SIMD8<Float>, _ lo: Float, _ hi: Float) -> SIMD8<Float> {
    let l = x.replacing(with: lo, where: .!(x .> lo))
    return l.replacing(with: hi, where: l .> hi)
}

@inlinable @inline(__always)
public func detSigmoid(_ x: SIMD8<Float>) -> SIMD8<Float> {
    1.0 / (1.0 + detExp(-x))
}

@inlinable @inline(__always)
public func detTanh(_ x: SIMD8<Float>) -> SIMD8<Float> {
    let a = unsafeBitCast(unsafeBitCast(x, to: SIMD8<UInt32>.self) & 0x7FFF_FFFF, to: SIMD8<Float>.self)
    let e = detExp(-2.0 * a)
    let big = (1.0 - e) / (1.0 + e)
    let a2 = a * a
    let c3 = SIMD8<Float>(repeating: -1.0 / 3.0), c5 = SIMD8<Float>(repeating: 2.0 / 15.0), c7 = SIMD8<Float>(repeating: 17.0 / 315.0)
    let poly: SIMD8<Float> = c3 + a2 * (c5 - a2 * c7)
    let small: SIMD8<Float> = a + a * a2 * poly
    let m = big.replacing(with: small, where: a .< 0.0625)
    return m.replacing(with: -m, where: x .< 0)
}

/// Natural log for positive normal floats (the log-sum-exp of a softmax).
@inline(__always)
public func detLog(_ x: Float) -> Float {
    let bits = x.bitPattern
    var e = Int32(bitPattern: (bits >> 23) & 0xFF) - 127
    var m = Float(bitPattern: (bits & 0x007F_FFFF) | 0x3F80_0000)  // [1, 2)
    if m > 1.414_213_56 { m *= 0.5; e += 1 }
    let s = (m - 1.0) / (m + 1.0)
    let s2 = s * s
    var p: Float = 1.0 / 11.0
    p = p * s2 + 1.0 / 9.0
    p = p * s2 + 1.0 / 7.0
    p = p * s2 + 1.0 / 5.0
    p = p * s2 + 1.0 / 3.0
    p = p * s2 + 1.0
    let lm = 2.0 * s * p
    let fe = Float(e)
    return (fe * 0.693_145_751_953_125 + (lm + fe * 1.428_606_765_330_187e-6))
}

/// cos on [0, π] in double precision from `+ - * /` only (a Taylor series after folding to
/// [0, π/2]): the cosine learning-rate schedule is the same bits on every host.
public func detCos(_ x: Double) -> Double {
    let pi = 3.141_592_653_589_793
    var a = min(max(x, 0), pi)
    var sign = 1.0
    if a > pi / 2 { a = pi - a; sign = -1 }
    let a2 = a * a
    var term = 1.0, sum = 1.0
    for k in 1...14 {
        term = term * (-a2) / Double((2 * k - 1) * (2 * k))
        sum = sum + term
    }
    return sign * sum
}
