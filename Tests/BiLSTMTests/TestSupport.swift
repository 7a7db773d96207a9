import BiLSTM
import Foundation
import Numerics
import Training
import XCTest

/// Small deterministic inputs for the math tests.
enum Fixture {
    static func path(_ name: String) -> String {
        Bundle.module.path(forResource: name, ofType: nil, inDirectory: "Fixtures")!
    }

    static func examples(lengths: [Int], inputSize: Int, classes: Int, seed: UInt64 = 9) -> [Example] {
        lengths.enumerated().map { i, len in
            var x = [Float](), y = [Int32]()
            for t in 0..<len {
                for k in 0..<inputSize {
                    let r = Philox.block(key: seed, counter: SIMD4(UInt32(i), UInt32(t), UInt32(k), 77))
                    x.append(2 * Philox.unit(r[0]) - 1)
                }
                let r = Philox.block(key: seed, counter: SIMD4(UInt32(i), UInt32(t), 999, 78))
                y.append(Int32(r[0] % UInt32(classes)))
            }
            if len > 1 { y[1] = -1 }  // an ignored frame inside a sequence
            return Example(id: 100 + i, x: x, y: y)
        }
    }
}

/// Max |a-b| with the index where it happens, for failure messages.
func maxDiff(_ a: [Float], _ b: [Float]) -> (diff: Float, index: Int) {
    precondition(a.count == b.count, "length \(a.count) vs \(b.count)")
    var worst: Float = 0, at = -1
    for i in a.indices where abs(a[i] - b[i]) > worst || a[i].isNaN != b[i].isNaN {
        worst = a[i].isNaN || b[i].isNaN ? .infinity : abs(a[i] - b[i]); at = i
    }
    return (worst, at)
}
