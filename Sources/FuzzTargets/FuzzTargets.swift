import ClusterProtocol
import Datasets
import FileIO
import Formats
import Foundation
import Numerics
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
    /// A packed data set's `manifest.json` (every field against every other; its identity).
    case manifest
    /// A packed directory: frame 0 a manifest, frame 1 its first shard (`FuzzInput` framing),
    /// the shard's size and SHA-256 set to match so its sequences are read and checked.
    case shard
    /// A work message as a welcomed worker decodes it (d_in and classes known): its sequences.
    case work

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
        case .manifest:
            if let m = try? DataManifest.decode(Array(data), path: "fuzz/manifest.json", limits: DataManifest.limits) { _ = m.identity }
        case .shard:
            FuzzTarget.readPacked(FuzzInput.frames(data))
        case .work:
            var limits = WireLimits()
            limits.parameterCount = 3; limits.inputSize = 2; limits.classes = 3
            _ = try? Message.decode(FuzzInput.frames(data), limits: limits)
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
        case .manifest:
            return FuzzTarget.packedSeed().map { [("manifest", $0.manifest)] } ?? []
        case .shard:
            return FuzzTarget.packedSeed().map { [("packed", FuzzInput.encode([$0.manifest, $0.shard]))] } ?? []
        case .work:
            return FuzzInput.seeds.filter { $0.0.hasPrefix("work") }.map { ($0.0, FuzzInput.encode($0.1)) }
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

extension FuzzTarget {
    /// A real packed set of 3 short sequences (d_in 4, 3 classes) in one shard.
    static func packedSeed() -> (manifest: [UInt8], shard: [UInt8])? {
        let dir = NSTemporaryDirectory() + "lockstep-fuzz-pack-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let d = SyntheticTask(sequences: 3, inputSize: 4, classes: 3, minLength: 1, maxLength: 5).generate(seed: 1)
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        guard (try? AtomicFile.write(d.npzBytes(), to: dir + "/in.npz")) != nil,
              let r = try? PackedData.pack(inputs: [dir + "/in.npz"], out: dir + "/p", shardBytes: 1 << 20),
              let shard = FileManager.default.contents(atPath: dir + "/p/" + r.manifest.shards[0].file),
              let manifest = FileManager.default.contents(atPath: dir + "/p/manifest.json") else { return nil }
        return ([UInt8](manifest), [UInt8](shard))
    }

    /// Writes a manifest (its first shard's size and hash made to match) and that shard to a
    /// directory of this process, then reads every sequence and the content hash.
    static func readPacked(_ frames: [[UInt8]]) {
        guard frames.count >= 2, var m = try? DataManifest.decode(frames[0], path: "fuzz", limits: DataManifest.limits) else { return }
        m.shards[0].bytes = frames[1].count
        m.shards[0].sha256 = SHA256.hex(frames[1])
        let dir = NSTemporaryDirectory() + "lockstep-fuzz-shard-\(getpid())"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        guard let manifest = try? m.encoded(),
              FileManager.default.createFile(atPath: dir + "/manifest.json", contents: Data(manifest)),
              !m.shards[0].file.isEmpty, FileManager.default.createFile(atPath: dir + "/" + m.shards[0].file, contents: Data(frames[1])),
              let store = try? PackedStore(dir, cacheMB: 0) else { return }
        for i in 0..<min(m.shards[0].sequences, 64) { _ = try? store.example(i) }
        _ = try? store.computeContentHash()
        try? FileManager.default.removeItem(atPath: dir + "/" + m.shards[0].file)
    }
}
