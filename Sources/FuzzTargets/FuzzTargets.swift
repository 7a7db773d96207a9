import Datasets
import Formats
import Foundation
import Training

/// Every parser of untrusted bytes, as a fuzz target: each must refuse or accept any input
/// without trapping. `lockstep-fuzz` runs one (`LOCKSTEP_FUZZ_TARGET`) under libFuzzer and
/// replays corpora; the tests replay the committed corpus of each.
public enum FuzzTarget: String, CaseIterable, Sendable {
    /// The wire decoder (`FuzzInput`'s framing).
    case wire
    /// A whole `.npz` (zip directory, inflation, `.npy` headers, the dataset checks).
    case npz
    /// One `.npy` member.
    case npy
    /// A checkpoint or `--init` file (safetensors, checksums, the model it describes).
    case safetensors
    /// A `--config` file.
    case toml

    public func run(_ data: UnsafeRawBufferPointer) {
        switch self {
        case .wire:
            FuzzInput.run(data)
        case .npz:
            _ = try? Dataset.decode(npz: data, name: "fuzz.npz")
        case .npy:
            if let a = try? NPYArray.parse(Array(data), file: "fuzz", array: "x") {
                _ = try? a.ints(file: "fuzz", array: "x")
                _ = try? a.floats(file: "fuzz", array: "x")
            }
        case .safetensors:
            _ = try? Checkpoint.decode(Array(data), path: "fuzz.safetensors")
        case .toml:
            var c = RunConfig()
            var other = TOMLConfig.Other(path: "fuzz.toml")
            if (try? TOMLConfig.apply(bytes: Data(data), path: "fuzz.toml", to: &c, other: &other)) != nil { _ = c.problems() }
        }
    }

    /// Real inputs to start from.
    public func seeds() -> [(String, [UInt8])] {
        switch self {
        case .wire:
            return FuzzInput.seeds.map { ($0.0, FuzzInput.encode($0.1)) }
        case .npz:
            let d = SyntheticTask(sequences: 3, inputSize: 4, classes: 3, minLength: 1, maxLength: 5).generate(seed: 1)
            return [("synthetic", d.npzBytes()), ("deflated", d.npzBytes(deflate: true)), ("zip64", d.npzBytes(zip64: true))]
        case .npy:
            return [("f4", NPYArray.encode(descr: "<f4", shape: [2, 3], data: [Float](repeating: 0.5, count: 6).withUnsafeBytes { Array($0) })),
                    ("i8", NPYArray.encode(descr: "<i8", shape: [3], data: [Int64(1), -1, 7].withUnsafeBytes { Array($0) }))]
        case .safetensors:
            var r = RunConfig()
            r.synthetic = SyntheticTask(sequences: 8, inputSize: 3, classes: 2, minLength: 1, maxLength: 4)
            r.hidden = 2; r.layers = 1; r.batchSize = 4; r.shardSize = 2
            let dir = NSTemporaryDirectory() + "lockstep-fuzz-seed-\(getpid())"
            r.checkpointDir = dir
            defer { try? FileManager.default.removeItem(atPath: dir) }
            guard let t = try? Trainer(run: r, data: r.synthetic.generate(seed: 1)), (try? t.saveCheckpoint()) != nil,
                  let bytes = FileManager.default.contents(atPath: t.checkpointPath) else { return [] }
            var plain = Safetensors()
            for tensor in t.layout.tensors {
                plain.add(tensor.name, .init(floats: UnsafeBufferPointer(start: t.params.ptr + tensor.offset, count: tensor.count), shape: tensor.shape))
            }
            return [("checkpoint", [UInt8](bytes)), ("pytorch", plain.encoded())]
        case .toml:
            return [("config", Array("""
                steps = 3
                batch-size = 12
                optimizer = "sgd"
                lr = 0.05
                local = true
                bind = "tcp://127.0.0.1:0"
                [synthetic]
                sequences = 40
                noise = 0.1

                """.utf8))]
        }
    }
}
