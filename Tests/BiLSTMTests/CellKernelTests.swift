import BiLSTM
import CPortableGEMM
import Numerics
import Training
import XCTest

/// Tier 1: the C AVX2 cell kernel is the Swift cell loop, bit for bit, on every kind of input.
final class CellKernelTests: XCTestCase {
    func values(_ n: Int, seed: UInt64) -> [Float] { kernelTestValues(n, seed: seed) }

    func same(_ a: Float, _ b: Float) -> Bool { a.bitPattern == b.bitPattern || (a.isNaN && b.isNaN) }

    func testAVX2CellEqualsTheSwiftLoopBitForBit() throws {
        try XCTSkipUnless(lockstep_lstm_cell_forward_lanes(8, nil, nil, nil, nil, 0, nil, 0, 0, 8, 0) == 1, "this CPU has no AVX2")
        try cellEqualsTheSwiftLoop(lanes: 8)
    }

    func testAVX512CellEqualsTheSwiftLoopBitForBit() throws {
        try XCTSkipUnless(lockstep_lstm_cell_forward_lanes(16, nil, nil, nil, nil, 0, nil, 0, 0, 16, 0) == 1,
                          "this CPU has no AVX-512F: the 16-lane cell is skipped here (checked on an AVX-512 machine)")
        try cellEqualsTheSwiftLoop(lanes: 16)
    }

    func cellEqualsTheSwiftLoop(lanes: Int32) throws {
        for H in [8, 16, 48, 128] {
            let rows = 7, withPrev = 4, G = 4 * H, ldh = 2 * H + 3
            let pre = values(rows * G, seed: UInt64(H))
            let cprev = values(withPrev * H, seed: UInt64(H) + 100)
            var worst = 0
            for store in [1, 0] {
                var g = pre, c = [Float](repeating: 0, count: rows * H), tc = c, h = [Float](repeating: 0, count: rows * ldh)
                XCTAssertEqual(lockstep_lstm_cell_forward_lanes(lanes, &g, &c, &tc, &h, ldh, cprev, withPrev, rows, H, Int32(store)), 1)
                var rg = pre, rc = c, rtc = tc, rh = h
                let zeros = [Float](repeating: 0, count: H)
                for j in 0..<rows {
                    rg.withUnsafeMutableBufferPointer { g in rc.withUnsafeMutableBufferPointer { c in rtc.withUnsafeMutableBufferPointer { tc in
                        rh.withUnsafeMutableBufferPointer { h in
                            let cp = j < withPrev ? cprev : zeros, off = j < withPrev ? j * H : 0
                            cp.withUnsafeBufferPointer { cp in
                                LSTMLayer.pointwiseForward(g.baseAddress! + j * G, c.baseAddress! + j * H, tc.baseAddress! + j * H,
                                                           h.baseAddress! + j * ldh, cp.baseAddress! + off, H)
                            }
                        } } } }
                }
                for k in c.indices where !same(c[k], rc[k]) { worst += 1; if worst < 5 { XCTFail("H \(H): c[\(k)] \(c[k]) != \(rc[k])") } }
                for j in 0..<rows { for u in 0..<H where !same(h[j * ldh + u], rh[j * ldh + u]) {
                    worst += 1; if worst < 5 { XCTFail("H \(H): h[\(j), \(u)] \(h[j * ldh + u]) != \(rh[j * ldh + u])") }
                } }
                if store == 1 {
                    for k in g.indices where !same(g[k], rg[k]) { worst += 1; if worst < 5 { XCTFail("H \(H): gate \(k) of input \(pre[k]): \(g[k]) != \(rg[k])") } }
                    for k in tc.indices where !same(tc[k], rtc[k]) { worst += 1; if worst < 5 { XCTFail("H \(H): tanh(c)[\(k)] \(tc[k]) != \(rtc[k])") } }
                }
            }
            XCTAssertEqual(worst, 0, "\(lanes) lanes, H \(H): \(worst) values differ")
        }
    }

    /// Inference's forward (no backward caches) gives the training forward's log-probs, bit for bit.
    func testInferenceForwardEqualsTrainingForward() {
        let m = ModelConfig(inputSize: 5, hidden: 16, layers: 2, classes: 3)
        let p = ParameterLayout(m).initialParameters(seed: 3)
        let batch = PackedBatch(Fixture.examples(lengths: [9, 4, 9, 1], inputSize: 5, classes: 3), inputSize: 5)
        let a = Engine(m), b = Engine(m)
        let ra = a.forward(params: p, batch: batch, dropout: nil)
        let rb = b.forward(params: p, batch: batch, dropout: nil, forBackward: false)
        XCTAssertEqual(ra.lossSum.bitPattern, rb.lossSum.bitPattern)
        let n = batch.rows * m.classes
        XCTAssertEqual(Array(UnsafeBufferPointer(start: a.logp!, count: n)).map(\.bitPattern),
                       Array(UnsafeBufferPointer(start: b.logp!, count: n)).map(\.bitPattern))
    }
}

/// Tier 2: the forward and backward with W_hh packed once and the input projection done in
/// panel-aligned blocks (BLAS.PackedWeights) equal, bit for bit, those with one sgemm per product.
final class PrepackedForwardTests: XCTestCase {
    func testPrepackedBlockedForwardAndBackwardEqualPlainSgemm() throws {
        try XCTSkipUnless(BLAS.prepackSupported, "no replay for the \(BLAS.coreName) kernel")
        BLAS.mode = .openblas; BLAS.setThreads(1)
        defer { BLAS.prepackAllowed = true }
        let m = ModelConfig(inputSize: 7, hidden: 32, layers: 2, classes: 4, dropout: 0.3)
        let layout = ParameterLayout(m)
        let p = layout.initialParameters(seed: 5)
        // 14 sequences, 449 rows: several projection blocks, and a tail off the panel.
        let batch = PackedBatch(Fixture.examples(lengths: [60, 3, 47, 33, 12, 60, 1, 29, 41, 38, 5, 59, 22, 39], inputSize: 7, classes: 4), inputSize: 7)
        XCTAssertGreaterThan(batch.rows, 2 * 96)
        func run() -> (logp: [UInt32], grads: [UInt32], loss: UInt64) {
            let e = Engine(m), g = FloatBuffer(count: layout.count)
            let r = e.forwardBackward(params: p, grads: g, batch: batch, dropout: Dropout.Key(seed: 1, step: 0))
            let logp = Array(UnsafeBufferPointer(start: e.logp!, count: batch.rows * m.classes)).map(\.bitPattern)
            return (logp, Array(UnsafeBufferPointer(start: g.ptr, count: g.count)).map(\.bitPattern), r.lossSum.bitPattern)
        }
        XCTAssertNotNil(BLAS.PackedWeights(w: p.ptr, ldw: 32, n: 128, k: 32), "the replay path must be the one tested")
        BLAS.prepackAllowed = true
        let replayed = run()
        BLAS.prepackAllowed = false
        let plain = run()
        XCTAssertEqual(replayed.loss, plain.loss)
        XCTAssertEqual(replayed.logp, plain.logp)
        XCTAssertEqual(replayed.grads, plain.grads)
    }
}

/// Tier 1: the C dropout mask (Philox in AVX2, eight blocks at once) is the Swift one, bit for bit.
final class DropoutMaskTests: XCTestCase {
    func testTheCMaskIsPhiloxInSwiftBitForBit() {
        // H a multiple of the 32 units a vector pass fills, and not (the scalar tail); both directions
        // side by side; sequence ids past 2^31; a high seed word.
        for (H, width, first) in [(128, 256, 0), (12, 12, 1), (36, 72, 0), (160, 160, 1)] {
            let ids = [0, 3_000_000_000, 7, 65_537]
            let examples = Fixture.examples(lengths: [9, 4, 7, 1], inputSize: 3, classes: 2).enumerated().map { i, e in
                Example(id: ids[i], x: e.x, y: e.y)
            }
            let renumbered = PackedBatch(examples, inputSize: 3)
            let key = Dropout.Key(seed: 0xDEAD_BEEF_0000_0042, step: 1_234_567)
            for p: Float in [0.3, 0.5] {
                var fast = [Float](repeating: -1, count: renumbered.rows * width), slow = fast
                Dropout.makeMask(mask: &fast, key: key, layer: 2, firstDirection: first, batch: renumbered, width: width, hidden: H, p: p)
                Dropout.referenceMask(mask: &slow, key: key, layer: 2, firstDirection: first, batch: renumbered, width: width, hidden: H, p: p)
                XCTAssertEqual(fast.map(\.bitPattern), slow.map(\.bitPattern), "H \(H), width \(width), p \(p)")
                let dropped = Double(slow.filter { $0 == 0 }.count) / Double(slow.count)
                XCTAssertEqual(dropped, Double(p), accuracy: 0.1, "H \(H): the mask drops about p of the units")
            }
        }
    }
}

/// Tier 1: the C pointwise backward is `LSTMLayer.pointwiseBackward`, bit for bit, on 8 and 16 lanes.
final class CellBackwardKernelTests: XCTestCase {
    func testCBackwardEqualsTheSwiftLoopBitForBit() throws {
        let values = { (n: Int, seed: UInt64) in kernelTestValues(n, seed: seed) }
        var ran: [Int32] = []
        for lanes: Int32 in [8, 16] {
            for H in [8, 16, 48, 128] {
                let rows = 7, withPrev = 4, G = 4 * H, ldh = 2 * H + 3
                // Gates as the forward caches them (activated: in [0, 1] and [-1, 1]) and raw extremes too.
                let gates = values(rows * G, UInt64(H)), tc = values(rows * H, UInt64(H) + 1)
                let dh = values(rows * ldh, UInt64(H) + 2), dcIn = values(rows * H, UInt64(H) + 3)
                let cprev = values(withPrev * H, UInt64(H) + 4), dcprev0 = values(withPrev * H, UInt64(H) + 5)
                let zeros = [Float](repeating: 0, count: H)
                var dg = [Float](repeating: 0, count: rows * G), dc = dcIn, dcprev = dcprev0, sink = zeros
                guard lockstep_lstm_cell_backward_lanes(lanes, &dg, &dc, dh, ldh, gates, tc, cprev, &dcprev, withPrev, zeros, &sink, rows, H) == 1 else {
                    continue
                }
                if !ran.contains(lanes) { ran.append(lanes) }
                var rdg = [Float](repeating: 0, count: rows * G), rdcprev = dcprev0, rsink = zeros
                for j in 0..<rows {
                    rdg.withUnsafeMutableBufferPointer { g in rdcprev.withUnsafeMutableBufferPointer { dcp in rsink.withUnsafeMutableBufferPointer { sk in
                        let target = j < withPrev ? dcp.baseAddress! + j * H : sk.baseAddress!
                        let cp = j < withPrev ? cprev.withUnsafeBufferPointer { $0.baseAddress! + j * H } : zeros.withUnsafeBufferPointer { $0.baseAddress! }
                        LSTMLayer.pointwiseBackward(g.baseAddress! + j * G, target, dh.withUnsafeBufferPointer { $0.baseAddress! + j * ldh },
                                                    dcIn.withUnsafeBufferPointer { $0.baseAddress! + j * H },
                                                    gates.withUnsafeBufferPointer { $0.baseAddress! + j * G },
                                                    tc.withUnsafeBufferPointer { $0.baseAddress! + j * H }, cp, H)
                    } } }
                }
                let same = { (a: Float, b: Float) in a.bitPattern == b.bitPattern || (a.isNaN && b.isNaN) }
                XCTAssertEqual(zip(dg, rdg).filter { !same($0, $1) }.count, 0, "\(lanes) lanes, H \(H): dgates differ")
                XCTAssertEqual(zip(dcprev, rdcprev).filter { !same($0, $1) }.count, 0, "\(lanes) lanes, H \(H): dc of the predecessors differs")
                XCTAssertEqual(dc.map { $0.bitPattern }, dcIn.map { $0.bitPattern }, "the row's own dc is read, not written")
            }
        }
        XCTAssertTrue(ran.contains(8), "the AVX2 backward ran")
        if !ran.contains(16) { print("CellBackwardKernelTests: no AVX-512F here, the 16-lane backward is skipped (checked on an AVX-512 machine)") }
    }
}

/// Pre-activations from tiny to beyond exp's clamp, the tanh polynomial's switch point,
/// signed zeros, subnormals and infinities, then random values at several scales.
func kernelTestValues(_ n: Int, seed: UInt64) -> [Float] {
    let special: [Float] = [0, -0.0, 1e-30, -1e-30, .leastNonzeroMagnitude, -.leastNonzeroMagnitude, 0.0625, -0.0625,
                            Float(0.0625).nextDown, -Float(0.0625).nextDown, Float(0.0625).nextUp, 43.5, -43.5, 44, -44, 87, -87, 88, -88,
                            89, -89, 1e4, -1e4, .infinity, -.infinity, .greatestFiniteMagnitude, -.greatestFiniteMagnitude]
    return (0..<n).map { k in
        if k < special.count { return special[k] }
        let scale: Float = [0.01, 0.3, 1, 4, 30, 120][k % 6]
        let u = Philox.block(key: seed, counter: SIMD4(UInt32(k), 0, 0, 0))
        return scale * (Philox.unit(u[0]) + Philox.unit(u[1]) + Philox.unit(u[2]) - 1.5) * 2
    }
}
