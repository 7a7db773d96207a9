import Numerics

extension ParameterLayout {
    /// PyTorch's init drawn from Lockstep's counter-based generator: `U(-1/√H, 1/√H)` for every
    /// LSTM tensor, `U(-1/√fan_in, 1/√fan_in)` for the head (nn.Linear's effective bounds).
    /// Element `e` of tensor `k` is `philox(seed, (initWeights, k, e / 4, 0))[e % 4]`.
    public func initialParameters(seed: UInt64) -> FloatBuffer {
        let p = FloatBuffer(count: count)
        for (k, t) in tensors.enumerated() {
            let bound: Float = t.name.hasPrefix("layer2.")
                ? 1 / Float(config.headInput).squareRoot()
                : 1 / Float(config.hidden).squareRoot()
            var e = 0
            while e < t.count {
                let r = Philox.block(key: seed, counter: SIMD4(RandomPurpose.initWeights.rawValue, UInt32(k), UInt32(e / 4), 0))
                for q in 0..<min(4, t.count - e) {
                    p[t.offset + e + q] = (2 * Philox.unit(r[q]) - 1) * bound
                }
                e += 4
            }
        }
        return p
    }
}
