import BiLSTM
import Datasets
import Formats
import Numerics

/// What `coord grad` writes: one forward/backward of `params` on a whole dataset as one batch.
/// `loss` is the mean NLL over valid frames, `logprobs` is `[B, Lmax, C]` in the dataset's order
/// (0 on padding), `grad.<name>` is the gradient of that mean. With `classWeights` the mean is
/// `NLLLoss(weight=)`'s: Σ w[y]·nll / Σ w[y].
public enum GradientReport {
    public static func compute(model: ModelConfig, params: FloatBuffer, data: Dataset, dropout: Dropout.Key?,
                               classWeights: [Float]? = nil) -> Safetensors {
        let engine = Engine(model, classWeights: classWeights)
        let batch = PackedBatch(data.examples, inputSize: model.inputSize)
        let grads = FloatBuffer(count: engine.layout.count)
        let r = engine.forwardBackward(params: params, grads: grads, batch: batch, dropout: dropout)
        let frames = Float(r.weightSum > 0 ? r.weightSum : 1)
        for i in 0..<grads.count { grads[i] = grads[i] / frames }
        let C = model.classes, B = batch.count, lmax = batch.steps
        var logprobs = [Float](repeating: 0, count: B * lmax * C)
        let lp = engine.logp!
        for t in 0..<batch.steps {
            for j in 0..<batch.batchSizes[t] {
                let src = lp + batch.row(t, j) * C
                let dst = (batch.order[j] * lmax + t) * C
                for k in 0..<C { logprobs[dst + k] = src[k] }
            }
        }
        var st = Safetensors()
        st.add("loss", .init(floats: [Float(r.lossSum / (r.weightSum > 0 ? r.weightSum : 1))], shape: []))
        st.add("logprobs", .init(floats: logprobs, shape: [B, lmax, C]))
        withExtendedLifetime(grads) {
            for t in engine.layout.tensors {
                st.add("grad." + t.name, .init(floats: UnsafeBufferPointer(start: grads.ptr + t.offset, count: t.count), shape: t.shape))
            }
        }
        st.metadata = ["frames": String(r.frames), "loss_sum": String(r.lossSum)]
        if classWeights != nil { st.metadata["weight_sum"] = String(r.weightSum) }
        return st
    }
}
