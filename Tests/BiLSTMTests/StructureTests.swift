import BiLSTM
import Foundation
import Numerics
import Training
import XCTest

/// Tier 2: the properties that make packed execution and sharding safe.
final class StructureTests: XCTestCase {
    let model = ModelConfig(inputSize: 3, hidden: 5, layers: 2, classes: 4, bidirectional: true, arch: .stacked, dropout: 0)

    /// Log-probs of each example `[len, C]`, computed in one packed batch.
    func logprobs(_ model: ModelConfig, _ params: FloatBuffer, _ ex: [Example], key: Dropout.Key? = nil) -> [[Float]] {
        let engine = Engine(model)
        let batch = PackedBatch(ex, inputSize: model.inputSize)
        engine.forward(params: params, batch: batch, dropout: key)
        let C = model.classes
        var out = [[Float]](repeating: [], count: ex.count)
        for (j, src) in batch.order.enumerated() {
            for t in 0..<ex[src].length { out[src] += Array(UnsafeBufferPointer(start: engine.logp! + batch.row(t, j) * C, count: C)) }
        }
        return out
    }

    /// An independent, unpacked, one-frame-at-a-time reference (stacked or split).
    func steppedReference(_ m: ModelConfig, _ p: FloatBuffer, _ e: Example) -> [Float] {
        let layout = ParameterLayout(m), H = m.hidden, T = e.length
        func runCell(_ cell: CellSpec, _ input: [[Float]]) -> [[Float]] {
            var h = [Float](repeating: 0, count: H), c = [Float](repeating: 0, count: H)
            var out = [[Float]](repeating: [], count: T)
            for s in 0..<T {
                let t = cell.reverse ? T - 1 - s : s
                var g = [Float](repeating: 0, count: 4 * H)
                for r in 0..<(4 * H) {
                    var a = p[cell.bih + r] + p[cell.bhh + r]
                    for k in 0..<cell.inputSize { a += p[cell.wih + r * cell.inputSize + k] * input[t][k] }
                    for k in 0..<H { a += p[cell.whh + r * H + k] * h[k] }
                    g[r] = a
                }
                for u in 0..<H {
                    let i = detSigmoid(g[u]), f = detSigmoid(g[H + u]), gg = detTanh(g[2 * H + u]), o = detSigmoid(g[3 * H + u])
                    c[u] = f * c[u] + i * gg
                    h[u] = o * detTanh(c[u])
                }
                out[t] = h
            }
            return out
        }
        let x = (0..<T).map { Array(e.x[($0 * m.inputSize)..<(($0 + 1) * m.inputSize)]) }
        var streams: [[[Float]]] = []
        for stream in layout.cells {
            var input = x
            for cells in stream {
                let outs = cells.map { runCell($0, input) }
                input = (0..<T).map { t in outs.flatMap { $0[t] } }
            }
            streams.append(input)
        }
        var result: [Float] = []
        for t in 0..<T {
            let hin = streams.flatMap { $0[t] }
            var logits = (0..<m.classes).map { k -> Float in
                var a = p[layout.headBias + k]
                for d in 0..<m.headInput { a += p[layout.headWeight + k * m.headInput + d] * hin[d] }
                return a
            }
            let mx = logits.max()!
            let lse = mx + detLog(logits.reduce(0) { $0 + detExp($1 - mx) })
            logits = logits.map { $0 - lse }
            result += logits
        }
        return result
    }

    func testAnEngineSizedUpFrontGivesTheBitsOfOneThatGrowsAndNeverGrows() {
        let m = ModelConfig(inputSize: 3, hidden: 5, layers: 2, classes: 4, bidirectional: true, arch: .stacked, dropout: 0.3)
        let params = ParameterLayout(m).initialParameters(seed: 3)
        let sized = Engine(m), growing = Engine(m)
        sized.reserve(rows: 60)
        for (i, lengths) in [[2, 3], [7, 5, 4], [20, 19, 18], [9]].enumerated() {
            let batch = PackedBatch(Fixture.examples(lengths: lengths, inputSize: 3, classes: 4, seed: UInt64(i)), inputSize: 3)
            let a = FloatBuffer(count: sized.layout.count), b = FloatBuffer(count: growing.layout.count)
            let key = Dropout.Key(seed: 5, step: i)
            let ra = sized.forwardBackward(params: params, grads: a, batch: batch, dropout: key)
            let rb = growing.forwardBackward(params: params, grads: b, batch: batch, dropout: key)
            XCTAssertEqual(ra.lossSum, rb.lossSum, "batch \(i)")
            XCTAssertEqual(a.byteArray, b.byteArray, "batch \(i): the same gradient bits")
            XCTAssertEqual(sized.reservedRows, 60, "batch \(i) of \(batch.rows) rows fits: no reallocation")
        }
        XCTAssertEqual(growing.reservedRows, 57, "the growing engine grew to its largest batch")
        XCTAssertEqual(sized.scratchBytes, Engine.trainingBytesPerRow(m) * 60, "the measured bytes per row are what training takes")
        XCTAssertEqual(growing.scratchBytes, Engine.trainingBytesPerRow(m) * 57)
        // The formula against what a real pass allocates, on every arch, direction and depth.
        for arch in [Arch.stacked, .split] {
            for bidirectional in [true, false] where arch == .stacked || bidirectional {
                for (layers, dropout) in [(1, Float(0)), (2, 0), (3, 0.3)] {
                    let c = ModelConfig(inputSize: 7, hidden: 6, layers: layers, classes: 3, bidirectional: bidirectional, arch: arch, dropout: dropout)
                    let e = Engine(c), p = ParameterLayout(c).initialParameters(seed: 1), g = FloatBuffer(count: e.layout.count)
                    let batch = PackedBatch(Fixture.examples(lengths: [4, 2, 3], inputSize: 7, classes: 3), inputSize: 7)
                    e.forwardBackward(params: p, grads: g, batch: batch, dropout: dropout > 0 ? Dropout.Key(seed: 1, step: 0) : nil)
                    XCTAssertEqual(e.scratchBytes, Engine.trainingBytesPerRow(c) * batch.rows, "\(arch) bi \(bidirectional) layers \(layers) dropout \(dropout)")
                }
            }
        }
    }

    func testSingleStepsEqualOneSequence() {
        for m in [model, ModelConfig(inputSize: 3, hidden: 5, layers: 3, classes: 4, arch: .split),
                  ModelConfig(inputSize: 3, hidden: 5, layers: 2, classes: 4, bidirectional: false),
                  ModelConfig(inputSize: 3, hidden: 16, layers: 2, classes: 4)] {  // H % 8 == 0: the AVX2 cell kernel
            let p = ParameterLayout(m).initialParameters(seed: 5)
            let ex = Fixture.examples(lengths: [6, 1, 4, 6], inputSize: 3, classes: 4)
            let packed = logprobs(m, p, ex)
            for (i, e) in ex.enumerated() {
                let (d, at) = maxDiff(packed[i], steppedReference(m, p, e))
                XCTAssertLessThanOrEqual(d, 2e-6, "\(m.arch) bi=\(m.bidirectional): sequence \(i) differs by \(d) at \(at)")
            }
        }
    }

    func testPaddedBatchEqualsEachSequenceAlone() {
        let p = ParameterLayout(model).initialParameters(seed: 8)
        let ex = Fixture.examples(lengths: [2, 7, 7, 3, 1], inputSize: 3, classes: 4)
        let together = logprobs(model, p, ex)
        let engine = Engine(model)
        let gBatch = FloatBuffer(count: p.count), gOne = FloatBuffer(count: p.count), gSum = FloatBuffer(count: p.count)
        let all = engine.forwardBackward(params: p, grads: gBatch, batch: PackedBatch(ex, inputSize: 3), dropout: nil)
        var lossSum = 0.0
        for (i, e) in ex.enumerated() {
            XCTAssertLessThanOrEqual(maxDiff(together[i], logprobs(model, p, [e])[0]).diff, 1e-6, "sequence \(i)")
            lossSum += engine.forwardBackward(params: p, grads: gOne, batch: PackedBatch([e], inputSize: 3), dropout: nil).lossSum
            TreeSum.add(gSum.ptr, gOne.ptr, p.count)
        }
        XCTAssertEqual(all.lossSum, lossSum, accuracy: 1e-4)
        XCTAssertLessThanOrEqual(maxDiff(gBatch.array, gSum.array).diff, 2e-5)
    }

    func testReverseDirectionEqualsForwardOnReversedInput() {
        let H = 4, I = 3
        let cell = ParameterLayout(ModelConfig(inputSize: I, hidden: H, layers: 1, classes: 2)).cells[0][0][0]
        let p = ParameterLayout(ModelConfig(inputSize: I, hidden: H, layers: 1, classes: 2)).initialParameters(seed: 2)
        let ex = Fixture.examples(lengths: [5, 3, 5, 1], inputSize: I, classes: 2)
        let reversed = ex.map { e -> Example in
            let T = e.length
            let x = (0..<T).flatMap { t in e.x[((T - 1 - t) * I)..<((T - t) * I)] }
            return Example(id: e.id, x: x, y: Array(e.y.reversed()))
        }
        func run(_ b: PackedBatch, reverse: Bool) -> [Float] {
            let N = b.rows
            let g = FloatBuffer(count: N * 4 * H), c = FloatBuffer(count: N * H), tc = FloatBuffer(count: N * H), h = FloatBuffer(count: N * H)
            let zeros = FloatBuffer(count: H)
            withExtendedLifetime([g, c, tc, h, zeros]) {
              b.x.withUnsafeBufferPointer { x in
                LSTMLayer.forward(gates: g.ptr, c: c.ptr, tc: tc.ptr, h: h.ptr, ldh: H, x: x.baseAddress!, ldx: I,
                                  wih: p.ptr + cell.wih, whh: p.ptr + cell.whh, bih: p.ptr + cell.bih, bhh: p.ptr + cell.bhh,
                                  zeros: zeros.ptr, batch: b, inputSize: I, hidden: H, reverse: reverse)
              }
            }
            return h.array
        }
        let b1 = PackedBatch(ex, inputSize: I), b2 = PackedBatch(reversed, inputSize: I)
        let hr = run(b1, reverse: true), hf = run(b2, reverse: false)
        for (j, src) in b1.order.enumerated() {
            let T = ex[src].length
            for t in 0..<T {
                let a = Array(hr[(b1.row(t, j) * H)..<((b1.row(t, j) + 1) * H)])
                let b = Array(hf[(b2.row(T - 1 - t, j) * H)..<((b2.row(T - 1 - t, j) + 1) * H)])
                XCTAssertLessThanOrEqual(maxDiff(a, b).diff, 1e-6, "sequence \(src) frame \(t)")
            }
        }
    }

    func testDropoutMaskIsTheSameWhateverTheShardComposition() {
        var m = model
        m.dropout = 0.5
        let p = ParameterLayout(m).initialParameters(seed: 4)
        let ex = Fixture.examples(lengths: [5, 3, 6, 2], inputSize: 3, classes: 4)
        let key = Dropout.Key(seed: 21, step: 7)
        let full = logprobs(m, p, ex, key: key)
        let pair = logprobs(m, p, [ex[3], ex[1]], key: key)
        let alone = logprobs(m, p, [ex[1]], key: key)
        XCTAssertLessThanOrEqual(maxDiff(full[1], alone[0]).diff, 1e-6)
        XCTAssertLessThanOrEqual(maxDiff(full[3], pair[0]).diff, 1e-6)
        XCTAssertGreaterThan(maxDiff(full[1], logprobs(m, p, [ex[1]])[0]).diff, 1e-3, "dropout must change the output")
        XCTAssertGreaterThan(maxDiff(full[1], logprobs(m, p, [ex[1]], key: Dropout.Key(seed: 21, step: 8))[0]).diff, 1e-3,
                             "a different step must draw a different mask")
    }

    func testParameterNamesAreTheSeedsStateDictNames() {
        let names = ParameterLayout(ModelConfig(inputSize: 40, hidden: 128, layers: 2, classes: 10)).tensors.map(\.name)
        XCTAssertEqual(names, ["layer1.weight_ih_l0", "layer1.weight_hh_l0", "layer1.bias_ih_l0", "layer1.bias_hh_l0",
                               "layer1.weight_ih_l0_reverse", "layer1.weight_hh_l0_reverse", "layer1.bias_ih_l0_reverse", "layer1.bias_hh_l0_reverse",
                               "layer1.weight_ih_l1", "layer1.weight_hh_l1", "layer1.bias_ih_l1", "layer1.bias_hh_l1",
                               "layer1.weight_ih_l1_reverse", "layer1.weight_hh_l1_reverse", "layer1.bias_ih_l1_reverse", "layer1.bias_hh_l1_reverse",
                               "layer2.0.weight", "layer2.0.bias"])
        let l = ParameterLayout(ModelConfig(inputSize: 40, hidden: 128, layers: 2, classes: 10))
        XCTAssertEqual(l.tensor(named: "layer1.weight_ih_l1")!.shape, [512, 256])
        XCTAssertEqual(l.tensor(named: "layer2.0.weight")!.shape, [10, 256])
        let split = ParameterLayout(ModelConfig(inputSize: 4, hidden: 3, layers: 1, classes: 2, arch: .split)).tensors.map(\.name)
        XCTAssertEqual(split.first, "layer1.0.weight_ih_l0")
        XCTAssertTrue(split.contains("layer1.1.bias_hh_l0"))
    }

    func testInitIsPyTorchsUniformRange() {
        let l = ParameterLayout(ModelConfig(inputSize: 7, hidden: 16, layers: 2, classes: 5))
        let p = l.initialParameters(seed: 1)
        for t in l.tensors {
            let bound = t.name.hasPrefix("layer2") ? 1 / Float(32).squareRoot() : 0.25
            let vals = Array(UnsafeBufferPointer(start: p.ptr + t.offset, count: t.count))
            XCTAssertLessThanOrEqual(vals.map(abs).max()!, bound, t.name)
            XCTAssertGreaterThan(vals.map(abs).max()!, bound * 0.8, t.name)
        }
        XCTAssertEqual(p.sha256, l.initialParameters(seed: 1).sha256)
        XCTAssertNotEqual(p.sha256, l.initialParameters(seed: 2).sha256)
    }
}
