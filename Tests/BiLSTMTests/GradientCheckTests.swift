import BiLSTM
import Foundation
import Numerics
import Training
import XCTest

/// Tier 2: centred-difference gradient checks for every parameter and the input, per arch,
/// with dropout on (the mask is a pure function of its key, so it is the same on every call).
final class GradientCheckTests: XCTestCase {
    func check(_ model: ModelConfig, file: StaticString = #filePath, line: UInt = #line) {
        BLAS.setThreads(1)
        let engine = Engine(model)
        let params = engine.layout.initialParameters(seed: 3)
        for i in 0..<params.count { params[i] *= 3 }  // larger weights: gates away from linear
        let examples = Fixture.examples(lengths: [4, 2, 5, 1], inputSize: model.inputSize, classes: model.classes)
        let key: Dropout.Key? = model.dropout > 0 ? Dropout.Key(seed: 11, step: 2) : nil
        let batch = PackedBatch(examples, inputSize: model.inputSize)
        let grads = FloatBuffer(count: params.count), dx = FloatBuffer(count: batch.rows * model.inputSize)
        engine.forwardBackward(params: params, grads: grads, batch: batch, dropout: key, dInput: dx)
        func loss(_ b: PackedBatch) -> Double { engine.forward(params: params, batch: b, dropout: key).lossSum }
        let eps: Float = 4e-3
        var worst: (Double, String) = (0, "")
        func record(_ num: Double, _ ana: Float, _ what: String) {
            let err = abs(num - Double(ana)) / (2e-3 + 2e-2 * abs(Double(ana)))
            if err > worst.0 { worst = (err, "\(what): numeric \(num) analytic \(ana)") }
        }
        for t in engine.layout.tensors {
            for e in 0..<t.count {
                let i = t.offset + e
                let saved = params[i]
                params[i] = saved + eps; let lp = loss(batch)
                params[i] = saved - eps; let lm = loss(batch)
                params[i] = saved
                record((lp - lm) / Double(2 * eps), grads[i], "\(t.name)[\(e)]")
            }
        }
        // Input gradient: perturb one example frame, map it to its packed row.
        for (j, src) in batch.order.enumerated() {
            for tt in 0..<examples[src].length {
                for k in 0..<model.inputSize {
                    func shifted(_ d: Float) -> PackedBatch {
                        var ex = examples
                        var x = ex[src].x
                        x[tt * model.inputSize + k] += d
                        ex[src] = Example(id: ex[src].id, x: x, y: ex[src].y)
                        return PackedBatch(ex, inputSize: model.inputSize)
                    }
                    let num = (loss(shifted(eps)) - loss(shifted(-eps))) / Double(2 * eps)
                    record(num, dx[batch.row(tt, j) * model.inputSize + k], "x[seq \(src), t \(tt), \(k)]")
                }
            }
        }
        XCTAssertLessThan(worst.0, 1, "worst gradient mismatch: \(worst.1)", file: file, line: line)
    }

    func testStackedBiLSTMGradients() {
        check(ModelConfig(inputSize: 3, hidden: 4, layers: 2, classes: 3, bidirectional: true, arch: .stacked, dropout: 0.3))
    }

    func testThreeLayerGradientsWithoutDropout() {
        check(ModelConfig(inputSize: 2, hidden: 3, layers: 3, classes: 4, bidirectional: true, arch: .stacked, dropout: 0))
    }

    func testUnidirectionalGradients() {
        check(ModelConfig(inputSize: 3, hidden: 4, layers: 2, classes: 3, bidirectional: false, arch: .stacked, dropout: 0.3))
    }

    func testSplitArchGradients() {
        check(ModelConfig(inputSize: 3, hidden: 4, layers: 2, classes: 3, bidirectional: true, arch: .split, dropout: 0.3))
    }
}
