import BiLSTM
import Datasets
import Formats
import Foundation
import Numerics
import Training
import XCTest

/// Tier 2 (in-process): Lockstep against PyTorch `nn.LSTM` fixtures written by
/// scripts/python/make_fixtures.py, tensor by tensor, with a max-diff report.
final class PyTorchReferenceTests: XCTestCase {
    static let tolerance: Float = 2e-5

    func compare(_ name: String, expectedFile: String? = nil, classWeights: [Float]? = nil,
                 file: StaticString = #filePath, line: UInt = #line) throws {
        let ck = try Checkpoint.load(path: Fixture.path("\(name).weights.safetensors"))  // no metadata: inferred
        let data = try Dataset.load(npz: Fixture.path("\(name).data.npz"), classes: ck.model.classes)
        let expected = try Safetensors.read(Fixture.path(expectedFile ?? "\(name).expected.safetensors"))
        let got = GradientReport.compute(model: ck.model, params: ck.params, data: data, dropout: nil, classWeights: classWeights)
        var report: [String] = []
        var failed = false
        for tensorName in expected.order {
            let e = expected.tensors[tensorName]!, g = try XCTUnwrap(got.tensors[tensorName], "\(name): Lockstep has no tensor \(tensorName)")
            XCTAssertEqual(e.shape, g.shape, "\(name): \(tensorName) shape", file: file, line: line)
            let (d, at) = maxDiff(e.floats, g.floats)
            report.append(String(format: "%@ %@ max|diff| %.2e at %d", name, tensorName, d, at))
            if !(d <= PyTorchReferenceTests.tolerance) { failed = true }
        }
        print(report.joined(separator: "\n"))
        XCTAssertFalse(failed, "\(name) disagrees with PyTorch:\n" + report.joined(separator: "\n"), file: file, line: line)
        if classWeights == nil { XCTAssertEqual(got.order.count, expected.order.count, "\(name): tensor count") }
    }

    /// `--class-weights`: NLLLoss(weight=)'s weighted mean and its gradients, with a class weighted 0.
    func testClassWeightedLossMatchesPyTorch() throws {
        let expected = try Safetensors.read(Fixture.path("bi2.weighted.expected.safetensors"))
        let weights = try XCTUnwrap(expected.metadata["class_weights"]).split(separator: ",").map { Float(String($0))! }
        XCTAssertEqual(weights, [0.5, 3.0, 0.0, 1.25])
        try compare("bi2", expectedFile: "bi2.weighted.expected.safetensors", classWeights: weights)
        // The weights matter: the unweighted gradient is far from this fixture.
        let ck = try Checkpoint.load(path: Fixture.path("bi2.weights.safetensors"))
        let data = try Dataset.load(npz: Fixture.path("bi2.data.npz"), classes: ck.model.classes)
        let plain = GradientReport.compute(model: ck.model, params: ck.params, data: data, dropout: nil)
        XCTAssertGreaterThan(maxDiff(plain.tensors["grad.layer2.0.weight"]!.floats, expected.tensors["grad.layer2.0.weight"]!.floats).diff, 1e-3)
    }

    func testTwoLayerBiLSTMMatchesPyTorch() throws { try compare("bi2") }
    func testThreeLayerBiLSTMWithLengthOneSequencesMatchesPyTorch() throws { try compare("bi3") }
    func testUnidirectionalMatchesPyTorch() throws { try compare("uni2") }
    func testSplitArchMatchesSeedsHandBuiltBiLSTM() throws { try compare("split2") }

    func testInferredModelShapes() throws {
        let bi3 = try Checkpoint.load(path: Fixture.path("bi3.weights.safetensors")).model
        XCTAssertEqual(bi3, ModelConfig(inputSize: 3, hidden: 4, layers: 3, classes: 3, bidirectional: true, arch: .stacked))
        let split = try Checkpoint.load(path: Fixture.path("split2.weights.safetensors")).model
        XCTAssertEqual(split.arch, .split)
        XCTAssertFalse(try Checkpoint.load(path: Fixture.path("uni2.weights.safetensors")).model.bidirectional)
    }

    func testCompressedNpzReadsTheSame() throws {
        let a = try Dataset.load(npz: Fixture.path("bi2.data.npz"))
        let b = try Dataset.load(npz: Fixture.path("bi2.compressed.npz"))
        XCTAssertEqual(a.examples, b.examples)
        XCTAssertEqual(a.hash, b.hash)
    }

    func testOptimizersAndClippingMatchPyTorch() throws {
        let t = try Safetensors.read(Fixture.path("optim.safetensors")).tensors
        let p0 = t["p0"]!.floats
        for kind in [OptimizerKind.adam, .sgd] {
            var oc = OptimizerConfig()
            oc.kind = kind
            oc.lr = kind == .adam ? 0.01 : 0.1
            oc.weightDecay = 0.01
            let opt = Optimizer(oc, count: p0.count)
            let p = FloatBuffer(p0)
            for k in 1...3 {
                opt.step(params: p, grads: FloatBuffer(t["g\(k)"]!.floats))
                let (d, at) = maxDiff(p.array, t["\(kind.rawValue).p\(k)"]!.floats)
                XCTAssertLessThanOrEqual(d, 1e-6, "\(kind) step \(k) differs from torch.optim by \(d) at \(at)")
            }
        }
        let g = FloatBuffer(t["g3"]!.floats)
        let (norm, clipped) = Clip.clip(g, maxNorm: 1.0)
        XCTAssertTrue(clipped)
        XCTAssertEqual(norm, t["clip.norm"]!.floats[0], accuracy: 1e-5)
        XCTAssertLessThanOrEqual(maxDiff(g.array, t["clip.g3"]!.floats).diff, 1e-7)
        let small = FloatBuffer([0.1, 0.2])
        XCTAssertFalse(Clip.clip(small, maxNorm: 1.0).clipped)
        XCTAssertEqual(small.array, [0.1, 0.2])
    }
}
