import CPortableGEMM
import Numerics

/// `Linear(D → C)` + `LogSoftmax` + NLL summed over frames whose label is not -1.
///
/// With class weights `cw` the sum is PyTorch's `NLLLoss(weight=cw, reduction='sum')`:
/// frame r counts `cw[y_r]·nll_r`, and the caller divides by the global `Σ cw[y_r]` (what
/// `reduction='mean'` does) instead of the frame count. Without them every weight is 1.
public enum Head {
    /// Returns the summed (weighted) NLL and the sum of the counted frames' weights, both in
    /// Double with rows in order, and the number of counted frames.
    public static func forward(
        logp: FPtr,             // [N, C] out: log-probabilities
        input: CFPtr,           // [N, D]
        w: CFPtr, b: CFPtr,     // [C, D], [C]
        y: UnsafePointer<Int32>,// [N]
        classWeights cw: CFPtr?,// [C] or nil
        rows N: Int, inputSize D: Int, classes C: Int
    ) -> (lossSum: Double, frames: Int, weightSum: Double) {
        for r in 0..<N { (logp + r * C).update(from: b, count: C) }
        BLAS.sgemm(transA: false, transB: true, m: N, n: C, k: D,
                   a: input, lda: D, b: w, ldb: D, beta: 1, c: logp, ldc: C)
        var loss = 0.0, weightSum = 0.0
        var frames = 0
        for r in 0..<N {
            let row = logp + r * C
            var mx = row[0]
            for k in 1..<C { mx = max(mx, row[k]) }
            var s: Float = 0
            for k in 0..<C { s += detExp(row[k] - mx) }
            let lse = mx + detLog(s)
            for k in 0..<C { row[k] -= lse }
            let label = Int(y[r])
            if label >= 0 {
                if let cw {
                    loss -= Double(cw[label]) * Double(row[label])
                    weightSum += Double(cw[label])
                } else {
                    loss -= Double(row[label])
                }
                frames += 1
            }
        }
        return (loss, frames, cw == nil ? Double(frames) : weightSum)
    }

    public static func backward(
        dinput: FPtr,           // [N, D] out
        dw: FPtr, db: FPtr,     // [C, D], [C] out
        dlogits: FPtr,          // [N, C] scratch
        logp: CFPtr, input: CFPtr, w: CFPtr, y: UnsafePointer<Int32>,
        classWeights cw: CFPtr?,// [C] or nil
        rows N: Int, inputSize D: Int, classes C: Int
    ) {
        for r in 0..<N {
            let label = Int(y[r])
            let d = dlogits + r * C
            if label < 0 { d.update(repeating: 0, count: C); continue }
            for k in 0..<C { d[k] = detExp(logp[r * C + k]) }
            d[label] -= 1
            // cw·(p − onehot): scaled after the subtraction, as autograd's chain rule orders it.
            if let cw { for k in 0..<C { d[k] *= cw[label] } }
        }
        BLAS.sgemm(transA: true, transB: false, m: C, n: D, k: N,
                   a: dlogits, lda: C, b: input, ldb: D, beta: 0, c: dw, ldc: D)
        columnSum(db, dlogits, rows: N, cols: C)
        BLAS.sgemm(transA: false, transB: false, m: N, n: D, k: C,
                   a: dlogits, lda: C, b: w, ldb: D, beta: 0, c: dinput, ldc: D)
    }
}

/// Inverted dropout with masks that are a pure function of
/// `(seed, step, sequence id, layer, direction, t, unit)` (DESIGN.md §3.4).
public enum Dropout {
    public struct Key: Sendable, Equatable {
        public let seed: UInt64
        public let step: Int
        public init(seed: UInt64, step: Int) { self.seed = seed; self.step = step }
    }

    /// Fills `mask` [N, width] with 0 or 1/(1-p); unit u of a row belongs to direction
    /// `firstDirection + u / H` (a stacked layer holds both directions side by side).
    public static func makeMask(mask: FPtr, key: Key, layer: Int, firstDirection: Int,
                                batch: PackedBatch, width: Int, hidden H: Int, p: Float) {
        forEachDirectionRow(mask: mask, layer: layer, firstDirection: firstDirection, batch: batch, width: width, hidden: H) {
            out, seq, t, c3 in
            // Philox counter (step, sequence, t, c3 | u/4) for units u..u+3, eight blocks at once in C
            lockstep_dropout_mask(out, H, key.seed, UInt32(truncatingIfNeeded: key.step), seq, t, c3, p, 1 / (1 - p))
        }
    }

    /// The mask `makeMask` writes, in Swift from `Philox.block` (the reference the C kernel is tested against).
    public static func referenceMask(mask: FPtr, key: Key, layer: Int, firstDirection: Int,
                                     batch: PackedBatch, width: Int, hidden H: Int, p: Float) {
        let scale = 1 / (1 - p)
        forEachDirectionRow(mask: mask, layer: layer, firstDirection: firstDirection, batch: batch, width: width, hidden: H) {
            out, seq, t, c3 in
            for u4 in stride(from: 0, to: H, by: 4) {
                let r = Philox.block(key: key.seed, counter: SIMD4(UInt32(truncatingIfNeeded: key.step), seq, t, c3 | UInt32(u4 / 4)))
                for q in 0..<min(4, H - u4) { out[u4 + q] = Philox.unit(r[q]) < p ? 0 : scale }
            }
        }
    }

    /// Each row's H units of each direction, with the row's sequence id, its step t and the
    /// counter word purpose|layer|direction the unit index is or'ed into.
    @inline(__always)
    static func forEachDirectionRow(mask: FPtr, layer: Int, firstDirection: Int, batch: PackedBatch, width: Int,
                                    hidden H: Int, _ body: (FPtr, UInt32, UInt32, UInt32) -> Void) {
        for t in 0..<batch.steps {
            for j in 0..<batch.batchSizes[t] {
                let row = mask + batch.row(t, j) * width
                for d in 0..<(width / H) {
                    let c3 = RandomPurpose.dropout.rawValue << 24 | UInt32(layer) << 12 | UInt32(firstDirection + d) << 11
                    body(row + d * H, UInt32(truncatingIfNeeded: batch.ids[j]), UInt32(t), c3)
                }
            }
        }
    }

    /// out = in ⊙ mask; used forward on activations and backward on their gradients.
    @inline(__always)
    public static func apply(out: FPtr, input: CFPtr, mask: CFPtr, count: Int) {
        for i in 0..<count { out[i] = input[i] * mask[i] }
    }
}
