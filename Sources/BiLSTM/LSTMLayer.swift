import CPortableGEMM
import Numerics

public typealias FPtr = UnsafeMutablePointer<Float>
public typealias CFPtr = UnsafePointer<Float>

/// One LSTM direction over a packed batch (PyTorch gate order i, f, g, o).
///
/// Forward caches exactly what backward needs: the activated gates, c and tanh(c) per row;
/// h lives in the layer's output buffer. A reverse cell walks t from T-1 down to 0 and each
/// row takes its state from the same sequence at t+1, so a sequence starts at its own last
/// frame with zero state and padding never enters (DESIGN.md §2).
public enum LSTMLayer {
    public static func forward(
        gates: FPtr,            // [N, 4H] out: i, f, g, o after their activations
        c: FPtr,                // [N, H] out
        tc: FPtr,               // [N, H] out: tanh(c)
        h: FPtr, ldh: Int,      // [N, ldh] out: h at this cell's column
        x: CFPtr, ldx: Int,     // [N, in]
        wih: CFPtr, whh: CFPtr, // [4H, in], [4H, H]
        bih: CFPtr, bhh: CFPtr, // [4H], [4H]
        zeros: CFPtr,           // [H] of zeros: the initial state
        batch: PackedBatch, inputSize: Int, hidden H: Int, reverse: Bool,
        cacheForBackward: Bool = true  // false: gates and tc are scratch (inference)
    ) {
        let N = batch.rows, G = 4 * H
        // W_hh packed once for all steps (the same bits as sgemm, which packs it every step).
        let packedWhh = batch.steps > 1 ? BLAS.PackedWeights(w: whh, ldw: H, n: G, k: H) : nil
        // The input projection: with W_ih packed, in blocks of rows just ahead of the steps that
        // read them (while they are in cache); block edges on multiples of the kernel's column
        // panel, so every element gets the one-GEMM bits (BLAS.PackedWeights.blockedRows).
        let packedWih = N > 2 * Self.projectionBlock ? BLAS.PackedWeights(w: wih, ldw: inputSize, n: G, k: inputSize, blockedRows: true) : nil
        var projected = reverse ? N ..< N : 0 ..< 0
        func project(_ rows: Range<Int>) {
            if rows.isEmpty { return }
            let first = rows.lowerBound
            for k in 0..<G { gates[first * G + k] = bih[k] + bhh[k] }
            for r in (first + 1)..<rows.upperBound { (gates + r * G).update(from: gates + first * G, count: G) }
            if let packedWih {
                packedWih.accumulate(m: rows.count, a: x + first * ldx, lda: ldx, c: gates + first * G, ldc: G)
            } else {
                BLAS.sgemm(transA: false, transB: true, m: rows.count, n: G, k: inputSize,
                           a: x + first * ldx, lda: ldx, b: wih, ldb: inputSize, beta: 1, c: gates + first * G, ldc: G)
            }
        }
        if packedWih == nil { project(0 ..< N); projected = 0 ..< N }
        for s in 0..<batch.steps {
            let t = reverse ? batch.steps - 1 - s : s
            let base = batch.offsets[t], rows = batch.batchSizes[t]
            let prev = batch.predecessors(t, reverse: reverse)
            if !projected.contains(base) || (rows > 0 && !projected.contains(base + rows - 1)) {
                let B = Self.projectionBlock, panel = BLAS.PackedWeights.panel
                if reverse {
                    let from = max(0, min(base, projected.lowerBound - B) / panel * panel)
                    project(from ..< projected.lowerBound); projected = from ..< N
                } else {
                    let to = min(N, (max(base + rows, projected.upperBound + B) + panel - 1) / panel * panel)
                    project(projected.upperBound ..< to); projected = 0 ..< to
                }
            }
            if let packedWhh {
                packedWhh.accumulate(m: prev.count, a: h + prev.base * ldh, lda: ldh, c: gates + base * G, ldc: G)
            } else {
                BLAS.sgemm(transA: false, transB: true, m: prev.count, n: G, k: H,
                           a: h + prev.base * ldh, lda: ldh, b: whh, ldb: H,
                           beta: 1, c: gates + base * G, ldc: G)
            }
            if CellKernel.available, lockstep_lstm_cell_forward(gates + base * G, c + base * H, tc + base * H, h + base * ldh, ldh,
                                                          c + prev.base * H, prev.count, rows, H, cacheForBackward ? 1 : 0) == 1 {
                continue
            }
            for j in 0..<rows {
                let r = base + j
                let cp = j < prev.count ? CFPtr(c + (prev.base + j) * H) : zeros
                pointwiseForward(gates + r * G, c + r * H, tc + r * H, h + r * ldh, cp, H)
            }
        }
    }

    /// Rows of the input projection done at a time: about 200 KiB of gates at 4H = 512.
    static let projectionBlock = 96

    /// Whether the cell's pointwise forward and backward run in the C kernels (AVX2, or AVX-512
    /// where the GEMM runs it: the same bits as `pointwiseForward`/`pointwiseBackward`, two or four
    /// times the lanes per instruction). `LOCKSTEP_CELL_PATH=swift` forces the Swift loops, so
    /// tests can compare the paths end to end.
    public enum CellKernel {
        public static let available: Bool = lockstep_lstm_cell_available() == 1
    }

    @inline(__always)
    public static func pointwiseForward(_ g: FPtr, _ c: FPtr, _ tc: FPtr, _ h: FPtr, _ cp: CFPtr, _ H: Int) {
        var u = 0
        while u + 8 <= H {
            let i = detSigmoid(load8(g + u))
            let f = detSigmoid(load8(g + H + u))
            let gg = detTanh(load8(g + 2 * H + u))
            let o = detSigmoid(load8(g + 3 * H + u))
            let cn = f * load8(cp + u) + i * gg
            let t = detTanh(cn)
            store8(i, g + u); store8(f, g + H + u); store8(gg, g + 2 * H + u); store8(o, g + 3 * H + u)
            store8(cn, c + u)
            store8(t, tc + u)
            store8(o * t, h + u)
            u += 8
        }
        while u < H {
            let i = detSigmoid(g[u])
            let f = detSigmoid(g[H + u])
            let gg = detTanh(g[2 * H + u])
            let o = detSigmoid(g[3 * H + u])
            let cn = f * cp[u] + i * gg
            let t = detTanh(cn)
            g[u] = i; g[H + u] = f; g[2 * H + u] = gg; g[3 * H + u] = o
            c[u] = cn
            tc[u] = t
            h[u] = o * t
            u += 1
        }
    }

    public static func backward(
        dx: FPtr?, accumulateDx: Bool, // [N, in] out (or += when accumulating); nil: not needed
        dwih: FPtr, dwhh: FPtr,        // [4H, in], [4H, H] out
        dbih: FPtr, dbhh: FPtr,        // [4H], [4H] out
        dh: FPtr, ldh: Int,            // [N, ldh] in: dLoss/dh from above; used as scratch
        dgates: FPtr,                  // [N, 4H] scratch
        dc: FPtr,                      // [N, H] scratch
        hprev: FPtr,                   // [N, in + H] scratch
        dwcat: FPtr,                   // [4H, in + H] scratch
        sink: FPtr,                    // [H] scratch for rows with no predecessor
        gates: CFPtr, c: CFPtr, tc: CFPtr, h: CFPtr, // as cached by forward (h at ldh)
        x: CFPtr, ldx: Int, wih: CFPtr, whh: CFPtr, zeros: CFPtr,
        batch: PackedBatch, inputSize: Int, hidden H: Int, reverse: Bool
    ) {
        let N = batch.rows, G = 4 * H
        dc.update(repeating: 0, count: N * H)
        // W_hh packed once for every step's dh (portable mode; OpenBLAS packs it each step).
        let packedWhh = batch.steps > 1 ? BLAS.PackedWeights(w: whh, ldw: H, n: H, k: G, transposed: false) : nil
        // Walk opposite to the forward: each row's successor is done before the row itself.
        for s in 0..<batch.steps {
            let t = reverse ? s : batch.steps - 1 - s
            let base = batch.offsets[t], rows = batch.batchSizes[t]
            let prev = batch.predecessors(t, reverse: reverse)
            // The step's pointwise backward: in C (AVX2/AVX-512, the same bits) where it runs, else Swift.
            if !CellKernel.available || lockstep_lstm_cell_backward(dgates + base * G, dc + base * H, dh + base * ldh, ldh, gates + base * G,
                                                               tc + base * H, c + prev.base * H, dc + prev.base * H, prev.count,
                                                               zeros, sink, rows, H) == 0 {
                for j in 0..<rows {
                    let r = base + j
                    let has = j < prev.count
                    let cp = has ? CFPtr(c + (prev.base + j) * H) : zeros
                    let dcp = has ? dc + (prev.base + j) * H : sink
                    pointwiseBackward(dgates + r * G, dcp, dh + r * ldh, dc + r * H, gates + r * G, tc + r * H, cp, H)
                }
            }
            // dh of the predecessors += dgates · W_hh
            if let packedWhh {
                packedWhh.accumulate(m: prev.count, a: dgates + base * G, lda: G, c: dh + prev.base * ldh, ldc: ldh)
            } else {
                BLAS.sgemm(transA: false, transB: false, m: prev.count, n: H, k: G,
                           a: dgates + base * G, lda: G, b: whh, ldb: H,
                           beta: 1, c: dh + prev.base * ldh, ldc: ldh)
            }
        }
        // The recurrent input of every row, so dW_hh is one GEMM over all time steps. In portable
        // mode each row is [x | h_prev] and [dW_ih | dW_hh] one product: dgates is read once, and
        // every element is the chain it is in two products (the kernels never split k by n).
        let joint = BLAS.mode == .portable
        let K = joint ? inputSize + H : H, hcol = joint ? inputSize : 0
        for t in 0..<batch.steps {
            let base = batch.offsets[t], rows = batch.batchSizes[t]
            let prev = batch.predecessors(t, reverse: reverse)
            for j in 0..<rows {
                let dst = hprev + (base + j) * K
                if joint { dst.update(from: x + (base + j) * ldx, count: inputSize) }
                if j < prev.count { (dst + hcol).update(from: h + (prev.base + j) * ldh, count: H) }
                else { (dst + hcol).update(repeating: 0, count: H) }
            }
        }
        if joint {
            BLAS.sgemm(transA: true, transB: false, m: G, n: K, k: N,
                       a: dgates, lda: G, b: hprev, ldb: K, beta: 0, c: dwcat, ldc: K)
            for g in 0..<G {
                (dwih + g * inputSize).update(from: dwcat + g * K, count: inputSize)
                (dwhh + g * H).update(from: dwcat + g * K + inputSize, count: H)
            }
        } else {
            BLAS.sgemm(transA: true, transB: false, m: G, n: inputSize, k: N,
                       a: dgates, lda: G, b: x, ldb: ldx, beta: 0, c: dwih, ldc: inputSize)
            BLAS.sgemm(transA: true, transB: false, m: G, n: H, k: N,
                       a: dgates, lda: G, b: hprev, ldb: H, beta: 0, c: dwhh, ldc: H)
        }
        columnSum(dbih, dgates, rows: N, cols: G)
        dbhh.update(from: dbih, count: G)
        if let dx {
            BLAS.sgemm(transA: false, transB: false, m: N, n: inputSize, k: G,
                       a: dgates, lda: G, b: wih, ldb: inputSize,
                       beta: accumulateDx ? 1 : 0, c: dx, ldc: ldx)
        }
    }

    @inline(__always)
    public static func pointwiseBackward(_ dg: FPtr, _ dcp: FPtr, _ dh: CFPtr, _ dcIn: CFPtr,
                                  _ g: CFPtr, _ tc: CFPtr, _ cp: CFPtr, _ H: Int) {
        var u = 0
        while u + 8 <= H {
            let i = load8(g + u), f = load8(g + H + u), gg = load8(g + 2 * H + u), o = load8(g + 3 * H + u)
            let t = load8(tc + u)
            let dhv = load8(dh + u)
            let dcv = load8(dcIn + u) + dhv * o * (1 - t * t)
            store8(dcv * gg * (i * (1 - i)), dg + u)
            store8(dcv * load8(cp + u) * (f * (1 - f)), dg + H + u)
            store8(dcv * i * (1 - gg * gg), dg + 2 * H + u)
            store8(dhv * t * (o * (1 - o)), dg + 3 * H + u)
            store8(load8(dcp + u) + dcv * f, dcp + u)
            u += 8
        }
        while u < H {
            let i = g[u], f = g[H + u], gg = g[2 * H + u], o = g[3 * H + u]
            let t = tc[u]
            let dhv = dh[u]
            let dcv = dcIn[u] + dhv * o * (1 - t * t)
            dg[u] = dcv * gg * (i * (1 - i))
            dg[H + u] = dcv * cp[u] * (f * (1 - f))
            dg[2 * H + u] = dcv * i * (1 - gg * gg)
            dg[3 * H + u] = dhv * t * (o * (1 - o))
            dcp[u] += dcv * f
            u += 1
        }
    }
}

@inline(__always) func load8(_ p: CFPtr) -> SIMD8<Float> { UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self) }
@inline(__always) func load8(_ p: FPtr) -> SIMD8<Float> { UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self) }
@inline(__always) func store8(_ v: SIMD8<Float>, _ p: FPtr) { UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self) }

/// out[k] = sum over rows of m[r, k], rows in order (a fixed order: deterministic).
@inline(__always)
public func columnSum(_ out: FPtr, _ m: CFPtr, rows: Int, cols: Int) {
    out.update(repeating: 0, count: cols)
    for r in 0..<rows {
        let row = m + r * cols
        for k in 0..<cols { out[k] += row[k] }
    }
}
