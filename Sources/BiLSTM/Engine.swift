import Numerics

/// Gradient of the *summed* NLL over a batch, with its loss sum and counted frames
/// (DESIGN.md §3.2: the caller divides by the global batch's frame count, or with class weights
/// by the global sum of the counted frames' weights, `weightSum`).
public struct BatchResult: Sendable {
    public var lossSum: Double
    public var frames: Int
    /// Σ classWeight[y] over the counted frames; `Double(frames)` without class weights.
    public var weightSum: Double
    public init(lossSum: Double, frames: Int, weightSum: Double? = nil) {
        self.lossSum = lossSum; self.frames = frames; self.weightSum = weightSum ?? Double(frames)
    }
}

/// The whole model over one packed batch: every cell, dropout between layers, and the head.
///
/// One engine per process; it owns grow-only scratch buffers so a training loop allocates
/// nothing per shard. Not thread-safe: a worker uses one engine from one thread.
public final class Engine {
    public let layout: ParameterLayout
    public var config: ModelConfig { layout.config }
    private var slots: [FloatBuffer] = []
    private var slotIndex = 0
    private var zeros: FloatBuffer
    private var sink: FloatBuffer
    private var dwcat: FloatBuffer   // [4H, widest input + H]: a cell's joint weight gradient
    private let widestInput: Int

    /// Per-class loss weights `[C]` (`--class-weights`), or nil for the plain mean.
    public let classWeights: FloatBuffer?

    public init(_ config: ModelConfig, classWeights: [Float]? = nil) {
        precondition(classWeights == nil || classWeights!.count == config.classes, "one class weight per class")
        self.classWeights = classWeights.map { FloatBuffer($0) }
        layout = ParameterLayout(config)
        zeros = FloatBuffer(count: config.hidden)
        sink = FloatBuffer(count: config.hidden)
        widestInput = layout.cells.flatMap { $0.flatMap { $0 } }.map(\.inputSize).max() ?? 0
        dwcat = FloatBuffer(count: 4 * config.hidden * (widestInput + config.hidden))
    }

    /// Cached activations of the last forward, per stream and layer.
    private struct LayerCache {
        var cells: [(gates: FPtr, c: FPtr, tc: FPtr)]
        var out: FPtr, outColumn: Int, ld: Int   // h of this layer's cells
        var mask: FPtr?, dropped: FPtr?          // when dropout follows this layer
        var input: FPtr, inputLd: Int
    }
    private var cache: [[LayerCache]] = []
    private var headIn: FPtr? = nil
    /// Log-probabilities `[N, C]` of the last forward, in packed row order.
    public private(set) var logp: FPtr? = nil

    private var capacityRows = 0
    private var rows = 0

    /// Scratch of `perRow` floats per row of the current batch. Slots are sized for
    /// `capacityRows`, which grows by 25% steps, so a run settles on one set of buffers.
    private func take(_ perRow: Int) -> FPtr {
        if slotIndex == slots.count { slots.append(FloatBuffer(count: perRow * capacityRows)) }
        if slots[slotIndex].count < perRow * rows { slots[slotIndex] = FloatBuffer(count: perRow * capacityRows) }
        slotIndex += 1
        return slots[slotIndex - 1].ptr
    }

    /// Sizes the scratch for batches of up to `rows` rows before the first one: a run that knows
    /// its largest shard allocates (and page-faults) once, not again at each new longest batch.
    public func reserve(rows: Int) {
        if rows > capacityRows { slots = []; capacityRows = rows }
    }
    /// The rows the scratch is sized for: it grows only when a batch has more.
    public var reservedRows: Int { capacityRows }

    /// Bytes of scratch one packed row of a training shard takes: the buffers `forwardBackward`
    /// takes, with dropout when the model has it (StructureTests holds this to the bytes a real
    /// pass allocates), so a run can be sized before any of it is allocated.
    public static func trainingBytesPerRow(_ config: ModelConfig) -> Int {
        let layout = ParameterLayout(config), H = config.hidden, width = layout.streamWidth
        let widest = layout.cells.flatMap { $0.flatMap { $0 } }.map(\.inputSize).max() ?? 0
        var floats = config.inputSize + config.headInput + config.classes   // x, the head's input, log-probs
        floats += config.headInput + config.classes + 6 * H + widest        // dHead, dlogits, dgates, dc, [x | h_prev]
        for stream in layout.cells {
            for (l, cells) in stream.enumerated() {
                floats += cells.count * 6 * H                                    // gates, c, tanh(c) per cell
                if l < config.layers - 1 { floats += width * (config.dropout > 0 ? 3 : 1) }  // output (mask, dropped)
                if l > 0 { floats += cells[0].inputSize }                       // dLoss/d(input)
            }
        }
        return floats * MemoryLayout<Float>.size
    }

    /// Bytes of the scratch buffers held now.
    public var scratchBytes: Int { slots.reduce(0) { $0 + $1.count } * MemoryLayout<Float>.size }

    private func begin(rows n: Int) {
        if n > capacityRows {
            slots = []  // free before reallocating: peak memory is one set of buffers
            capacityRows = max(n, capacityRows + capacityRows / 4)
        }
        rows = n
        slotIndex = 0
    }

    /// Forward pass. `dropout` nil means evaluation (no dropout). Returns the loss sum.
    /// `forBackward` false (inference) skips the stores only a backward pass reads, and sums the
    /// plain NLL: a validation loss is unweighted whatever the class weights.
    @discardableResult
    public func forward(params: FloatBuffer, batch: PackedBatch, dropout: Dropout.Key?, forBackward: Bool = true) -> BatchResult {
        precondition(params.count == layout.count, "parameter buffer has \(params.count) floats, layout needs \(layout.count)")
        precondition(batch.inputSize == config.inputSize)
        let N = batch.rows, H = config.hidden, D = config.headInput
        begin(rows: N)
        let P = UnsafePointer(params.ptr)
        let xIn = take(config.inputSize)
        batch.x.withUnsafeBufferPointer { xIn.update(from: $0.baseAddress!, count: N * config.inputSize) }
        let head = take(D)
        headIn = head
        let useDropout = dropout != nil && config.dropout > 0
        cache = []
        for (s, stream) in layout.cells.enumerated() {
            var layers: [LayerCache] = []
            var input = xIn, inputLd = config.inputSize
            for (l, cells) in stream.enumerated() {
                let last = l == config.layers - 1
                let width = layout.streamWidth
                // The last layer writes straight into the head's input at this stream's columns.
                let out = last ? head : take(width)
                let outColumn = last ? s * width : 0
                let ld = last ? D : width
                var lc = LayerCache(cells: [], out: out, outColumn: outColumn, ld: ld,
                                    mask: nil, dropped: nil, input: input, inputLd: inputLd)
                for cell in cells {
                    let g = take(4 * H), c = take(H), tc = take(H)
                    LSTMLayer.forward(gates: g, c: c, tc: tc, h: out + outColumn + cell.column, ldh: ld,
                                      x: input, ldx: inputLd, wih: P + cell.wih, whh: P + cell.whh,
                                      bih: P + cell.bih, bhh: P + cell.bhh, zeros: zeros.ptr,
                                      batch: batch, inputSize: cell.inputSize, hidden: H, reverse: cell.reverse,
                                      cacheForBackward: forBackward)
                    lc.cells.append((g, c, tc))
                }
                if !last {
                    if useDropout, let key = dropout {
                        let mask = take(width), dropped = take(width)
                        Dropout.makeMask(mask: mask, key: key, layer: l, firstDirection: cells[0].reverse ? 1 : 0,
                                         batch: batch, width: width, hidden: H, p: config.dropout)
                        Dropout.apply(out: dropped, input: out, mask: mask, count: N * width)
                        lc.mask = mask
                        lc.dropped = dropped
                        input = dropped
                    } else {
                        input = out
                    }
                    inputLd = width
                }
                layers.append(lc)
            }
            cache.append(layers)
        }
        let lp = take(config.classes)
        logp = lp
        let r = batch.y.withUnsafeBufferPointer { y in
            Head.forward(logp: lp, input: head, w: P + layout.headWeight, b: P + layout.headBias, y: y.baseAddress!,
                         classWeights: forBackward ? classWeights.map { UnsafePointer($0.ptr) } : nil,
                         rows: N, inputSize: D, classes: config.classes)
        }
        return BatchResult(lossSum: r.lossSum, frames: r.frames, weightSum: r.weightSum)
    }

    /// Forward and backward: writes the gradient of the summed NLL into `grads`
    /// (every element is overwritten). `dInput`, when given, receives dLoss/dx `[N, in]` packed.
    @discardableResult
    public func forwardBackward(params: FloatBuffer, grads: FloatBuffer, batch: PackedBatch,
                                dropout: Dropout.Key?, dInput: FloatBuffer? = nil) -> BatchResult {
        precondition(grads.count == layout.count)
        let result = forward(params: params, batch: batch, dropout: dropout)
        let N = batch.rows, H = config.hidden, D = config.headInput
        let P = UnsafePointer(params.ptr), dP = grads.ptr
        let dHead = take(D)
        let dlogits = take(config.classes)
        batch.y.withUnsafeBufferPointer { y in
            Head.backward(dinput: dHead, dw: dP + layout.headWeight, db: dP + layout.headBias, dlogits: dlogits,
                          logp: logp!, input: headIn!, w: P + layout.headWeight, y: y.baseAddress!,
                          classWeights: classWeights.map { UnsafePointer($0.ptr) }, rows: N, inputSize: D, classes: config.classes)
        }
        let dgates = take(4 * H), dc = take(H), hprev = take(widestInput + H)
        let width = layout.streamWidth
        for (s, stream) in layout.cells.enumerated() {
            // dOut of the current layer: for the last layer, this stream's columns of dHead.
            var dOut = dHead, dOutLd = D, dOutColumn = s * width
            for l in stream.indices.reversed() {
                let lc = cache[s][l]
                let cells = stream[l]
                let inSize = cells[0].inputSize
                var dIn: FPtr? = nil
                if l > 0 { dIn = take(inSize) } else if let dInput { dIn = s == 0 ? dInput.ptr : take(inSize) }
                for (k, cell) in cells.enumerated() {
                    let cc = lc.cells[k]
                    LSTMLayer.backward(dx: dIn, accumulateDx: k > 0,
                                       dwih: dP + cell.wih, dwhh: dP + cell.whh, dbih: dP + cell.bih, dbhh: dP + cell.bhh,
                                       dh: dOut + dOutColumn + cell.column, ldh: dOutLd,
                                       dgates: dgates, dc: dc, hprev: hprev, dwcat: dwcat.ptr, sink: sink.ptr,
                                       gates: cc.gates, c: cc.c, tc: cc.tc, h: lc.out + lc.outColumn + cell.column,
                                       x: lc.input, ldx: lc.inputLd, wih: P + cell.wih, whh: P + cell.whh, zeros: zeros.ptr,
                                       batch: batch, inputSize: cell.inputSize, hidden: H, reverse: cell.reverse)
                }
                if l > 0, let dIn {
                    // dIn is the gradient w.r.t. the layer below's (dropped) output.
                    let below = cache[s][l - 1]
                    if let mask = below.mask { Dropout.apply(out: dIn, input: dIn, mask: mask, count: N * inSize) }
                    dOut = dIn; dOutLd = inSize; dOutColumn = 0
                } else if s > 0, let dIn, let dInput {
                    TreeSum.add(dInput.ptr, dIn, N * inSize)
                }
            }
        }
        return result
    }
}
