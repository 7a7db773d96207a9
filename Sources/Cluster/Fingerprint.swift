import BiLSTM
import Numerics
import Training

/// A fixed tiny forward/backward whose bits identify this host's numerics (BLAS kernel,
/// build). Workers whose fingerprint differs from the coordinator's are refused (DESIGN.md §3.6).
public enum Fingerprint {
    public static func compute() -> String {
        let model = ModelConfig(inputSize: 5, hidden: 16, layers: 2, classes: 4, bidirectional: true, arch: .stacked, dropout: 0.25)
        let data = SyntheticTask(sequences: 6, inputSize: 5, classes: 4, minLength: 1, maxLength: 9).generate(seed: 0xF1)
        let params = ParameterLayout(model).initialParameters(seed: 0xF2)
        let grads = FloatBuffer(count: params.count)
        let r = ShardComputer(model: model, seed: 0xF3).compute(params: params, examples: data.examples, step: 3, into: grads)
        var h = SHA256()
        grads.withBytes { h.update($0) }
        withUnsafeBytes(of: r.lossSum.bitPattern) { h.update($0) }
        return h.finalize().hexString
    }
}
