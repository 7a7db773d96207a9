import BiLSTM
@testable import Datasets
@testable import Formats
import Foundation
import Glibc
import Numerics
@testable import Training
import XCTest

/// Tier 2: checkpoints are PyTorch-loadable, atomic, and resume to the same bits.
final class CheckpointTests: XCTestCase {
    var dir: String!

    override func setUp() {
        dir = NSTemporaryDirectory() + "lockstep-ck-\(UUID().uuidString)"
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func smallRun(steps: Int, dir: String) -> RunConfig {
        var r = RunConfig()
        r.synthetic = SyntheticTask(sequences: 48, inputSize: 6, classes: 3, minLength: 2, maxLength: 12)
        r.hidden = 8; r.layers = 2; r.dropout = 0.2; r.batchSize = 12; r.shardSize = 5
        r.steps = steps; r.checkpointDir = dir; r.checkpointEvery = 0; r.maxNorm = 0.5
        return r
    }

    func train(_ t: Trainer, until: Int) throws {
        let computer = ShardComputer(model: t.model, seed: t.run.seed)
        while t.step < until {
            let parts = t.shards(forStep: t.step).map { s -> (grad: FloatBuffer, result: BatchResult) in
                let g = FloatBuffer(count: t.layout.count)
                return (g, computer.compute(params: t.params, examples: s.map { t.data.examples[$0] }, step: t.step, into: g))
            }
            _ = try t.apply(parts: parts, seconds: 0)
        }
    }

    func testSafetensorsLayoutIsWhatPyTorchReads() throws {
        let r = smallRun(steps: 2, dir: dir)
        let t = try Trainer(run: r, data: r.synthetic.generate(seed: r.seed))
        try t.saveCheckpoint()
        let raw = [UInt8](try Data(contentsOf: URL(fileURLWithPath: t.checkpointPath)))
        var n = 0
        for k in 0..<8 { n |= Int(raw[k]) << (8 * k) }
        XCTAssertEqual((8 + n) % 8, 0, "data starts 8-byte aligned")
        let header = try JSONSerialization.jsonObject(with: Data(raw[8..<(8 + n)])) as! [String: Any]
        let w = header["layer1.weight_ih_l0"] as! [String: Any]
        XCTAssertEqual(w["dtype"] as? String, "F32")
        XCTAssertEqual(w["shape"] as? [Int], [32, 6])
        XCTAssertEqual((header["layer2.0.weight"] as! [String: Any])["shape"] as? [Int], [3, 16])
        XCTAssertNotNil(header["layer1.bias_hh_l1_reverse"])
        XCTAssertNotNil(header["optimizer.exp_avg.layer1.weight_hh_l0"])
        // Little-endian float32 at the declared offsets.
        let offs = w["data_offsets"] as! [Int]
        let first = raw[(8 + n + offs[0])..<(8 + n + offs[0] + 4)]
        let v = Float(bitPattern: UInt32(first[first.startIndex]) | UInt32(first[first.startIndex + 1]) << 8
                        | UInt32(first[first.startIndex + 2]) << 16 | UInt32(first[first.startIndex + 3]) << 24)
        XCTAssertEqual(v, t.params[t.layout.tensor(named: "layer1.weight_ih_l0")!.offset])
        let meta = header["__metadata__"] as! [String: String]
        XCTAssertEqual(meta["format"], "lockstep-2")
        XCTAssertEqual(meta["weights_sha256"], t.weightsHash)
    }

    func testSameSeedTwiceSameWeightsAndResumeIsBitIdentical() throws {
        let r = smallRun(steps: 9, dir: dir)
        let data = r.synthetic.generate(seed: r.seed)
        let a = try Trainer(run: r, data: data); try train(a, until: 9)
        let b = try Trainer(run: r, data: data); try train(b, until: 9)
        XCTAssertEqual(a.weightsHash, b.weightsHash)
        // Stop at step 4, checkpoint, resume in a fresh trainer.
        let c = try Trainer(run: r, data: data); try train(c, until: 4)
        try c.saveCheckpoint()
        let d = try Trainer(run: r, data: data, resumeFrom: try Checkpoint.load(path: c.checkpointPath))
        XCTAssertEqual(d.step, 4)
        try train(d, until: 9)
        XCTAssertEqual(d.weightsHash, a.weightsHash, "resume must reach the same bits")
        var other = r; other.seed = 2
        let e = try Trainer(run: other, data: data); try train(e, until: 9)
        XCTAssertNotEqual(e.weightsHash, a.weightsHash)
    }

    /// A dataset whose sequence 5 holds infinities (built directly: the loader would refuse it),
    /// so every batch holding it yields NaN (inf - inf in the first GEMM).
    func poisoned(_ r: RunConfig) -> Dataset {
        let clean = r.synthetic.generate(seed: r.seed)
        var ex = clean.examples
        ex[5] = Example(id: 5, x: ex[5].x.map { _ in Float.infinity }, y: ex[5].y)
        return Dataset(examples: ex, inputSize: clean.inputSize, classes: clean.classes, source: "poisoned")
    }

    func testNonFiniteStopsNamingStepAndShardOrSkipsTheSameWayEveryTime() throws {
        var r = smallRun(steps: 8, dir: dir)
        let data = poisoned(r)
        let t = try Trainer(run: r, data: data)
        XCTAssertThrowsError(try train(t, until: 8)) { e in
            let text = "\(e)"
            XCTAssertTrue(text.contains("non-finite") && text.contains("shard") && text.contains("5"), text)
            XCTAssertTrue(text.contains("--on-nonfinite skip"), text)
        }
        r.onNonfinite = .skip
        var hashes: [String] = []
        var skipped = 0
        for _ in 0..<2 {
            let s = try Trainer(run: r, data: data)
            let computer = ShardComputer(model: s.model, seed: r.seed)
            while !s.done {
                let parts = s.shards(forStep: s.step).map { sh -> (grad: FloatBuffer, result: BatchResult) in
                    let g = FloatBuffer(count: s.layout.count)
                    return (g, computer.compute(params: s.params, examples: sh.map { data.examples[$0] }, step: s.step, into: g))
                }
                if try s.apply(parts: parts, seconds: 0).skipped != nil { skipped += 1 }
            }
            XCTAssertTrue(s.params.allFinite)
            hashes.append(s.weightsHash)
        }
        XCTAssertEqual(hashes[0], hashes[1])
        XCTAssertEqual(skipped, 4, "sequence 5 is in 2 of the 8 batches (once per epoch), skipped in each of the 2 runs")
    }

    /// The coordinator sends `params` to workers without a copy: a buffer it was handed must never
    /// change after later steps, and the trainer must recycle its spare only when nobody holds it.
    func testWeightsHandedOutNeverChangeAndTheSpareIsRecycled() throws {
        let r = smallRun(steps: 6, dir: dir)
        let t = try Trainer(run: r, data: r.synthetic.generate(seed: r.seed))
        let held = t.params, heldHash = held.sha256
        try train(t, until: 3)
        XCTAssertEqual(held.sha256, heldHash, "weights handed out before step 1 are unchanged after 3 steps")
        XCTAssertFalse(t.params === held)
        let ids = try (0..<3).map { _ -> ObjectIdentifier in
            try train(t, until: t.step + 1)
            return ObjectIdentifier(t.params)
        }
        XCTAssertEqual(ids[0], ids[2], "with nobody else holding it, the old buffer is written next")
        XCTAssertNotEqual(ids[0], ids[1])
    }

    /// Finite shard gradients whose sum overflows float32 must stop the run, not write NaN weights.
    func testAnOverflowingSumOfFiniteShardsStopsTheRun() throws {
        let r = smallRun(steps: 2, dir: dir)
        let t = try Trainer(run: r, data: r.synthetic.generate(seed: r.seed))
        let before = t.weightsHash
        let parts = t.shards(forStep: 0).map { _ -> (grad: FloatBuffer, result: BatchResult) in
            let g = FloatBuffer(count: t.layout.count)
            g[3] = .greatestFiniteMagnitude
            return (g, BatchResult(lossSum: 1, frames: 2))
        }
        XCTAssertGreaterThan(parts.count, 1)
        XCTAssertThrowsError(try t.apply(parts: parts, seconds: 0)) { e in
            XCTAssertTrue("\(e)".contains("overflows float32"), "\(e)")
        }
        XCTAssertEqual(t.weightsHash, before)
    }

    /// Threads compute whole shards, each with single-threaded BLAS: 1, 2 or 3 of them give the
    /// bits of one shard after another.
    func testThreadsComputeWholeShardsAndChangeNoBit() throws {
        var r = smallRun(steps: 3, dir: dir)
        r.hidden = 24; r.batchSize = 24; r.shardSize = 4
        let data = r.synthetic.generate(seed: r.seed)
        var hashes: [String] = []
        for threads in [1, 2, 3] {
            let t = try Trainer(run: r, data: data)
            let pool = ShardComputerPool(model: t.model, seed: r.seed, count: threads)
            while !t.done {
                let shards = t.shards(forStep: t.step).map { $0.map { data.examples[$0] } }
                let out = pool.computeAll(params: t.params, shards: shards, step: t.step, gradientCount: t.layout.count)
                _ = try t.apply(parts: out.map { ($0.grad, $0.result) }, seconds: 0)
            }
            hashes.append(t.weightsHash)
        }
        let serial = try Trainer(run: r, data: data)
        try train(serial, until: 3)
        XCTAssertEqual(hashes, [serial.weightsHash, serial.weightsHash, serial.weightsHash])
    }

    func testShardSizeIsPartOfTheMathButNothingElseIs() throws {
        // The schedule never depends on who computes: same batches for any call order.
        let s = Schedule(lengths: (0..<100).map { 1 + $0 % 17 }, batchSize: 10, shardSize: 3, seed: 4)
        XCTAssertEqual(s.batches(epoch: 2), s.batches(epoch: 2))
        XCTAssertNotEqual(s.batches(epoch: 2), s.batches(epoch: 3))
        let all = s.batches(epoch: 0)
        XCTAssertEqual(all.flatMap { $0 }.sorted(), Array(0..<100), "an epoch covers every sequence once")
        for b in all { XCTAssertEqual(b, b.sorted { s.lengths[$0] != s.lengths[$1] ? s.lengths[$0] > s.lengths[$1] : $0 < $1 }) }
        XCTAssertEqual(s.shards(of: Array(0..<10)), [[0, 4, 8], [1, 5, 9], [2, 6], [3, 7]], "dealt by position")
        XCTAssertEqual(s.shards(of: Array(0..<9)), [[0, 3, 6], [1, 4, 7], [2, 5, 8]])
        for b in all {
            let shards = s.shards(of: b)
            XCTAssertEqual(shards.flatMap { $0 }.sorted(), b.sorted(), "shards cover the batch once")
            XCTAssertLessThanOrEqual(shards.map(\.count).max()! - shards.map(\.count).min()!, 1, "balanced")
            XCTAssertTrue(shards.allSatisfy { $0.count <= 3 })
        }
    }

    func testALocalRunWhoseLargestShardCannotFitIsRefusedNamingTheFix() throws {
        let r = smallRun(steps: 2, dir: dir)
        let t = try Trainer(run: r, data: r.synthetic.generate(seed: r.seed))
        let need = Engine.trainingBytesPerRow(t.model) * t.schedule.largestShardFrames
        Memory.testLimit = need * 3 / 2
        defer { Memory.testLimit = nil }
        XCTAssertNoThrow(try t.checkShardMemory(threads: 1))
        XCTAssertThrowsError(try t.checkShardMemory(threads: 2), "two threads need two shards' scratch") { e in
            let text = "\(e)"
            XCTAssertTrue(text.contains("a shard of the 5 longest sequences (\(t.schedule.largestShardFrames) frames)"), text)
            XCTAssertTrue(text.contains("for 2 shard(s) computed at once") && text.contains("--shard-size or --threads"), text)
        }
        Memory.testLimit = need - 1
        XCTAssertThrowsError(try t.checkShardMemory(threads: 1))
    }

    func testLargestShardFramesBoundsEveryShardOfEveryEpoch() {
        let lengths = (0..<100).map { 1 + ($0 * 37) % 101 }   // distinct: 1...101 but 65
        let s = Schedule(lengths: lengths, batchSize: 10, shardSize: 3, seed: 4)
        XCTAssertEqual(s.largestShardFrames, 101 + 100 + 99, "the 3 longest sequences")
        var most = 0
        for e in 0..<20 { for b in s.batches(epoch: e) { for sh in s.shards(of: b) { most = max(most, sh.reduce(0) { $0 + lengths[$1] }) } } }
        XCTAssertLessThanOrEqual(most, s.largestShardFrames)
        XCTAssertGreaterThan(most, s.largestShardFrames * 9 / 10, "and close to what a run meets")
        XCTAssertEqual(Schedule(lengths: [4, 9, 2], batchSize: 8, shardSize: 8, seed: 1).largestShardFrames, 15, "fewer sequences than a shard")
        XCTAssertEqual(Schedule(lengths: [Int.max - 1, 5], batchSize: 2, shardSize: 2, seed: 1).largestShardFrames, Int.max, "saturates, never traps")
    }

    func testResumeRefusesAnotherConfigOrOtherData() throws {
        let r = smallRun(steps: 3, dir: dir)
        let data = r.synthetic.generate(seed: r.seed)
        let t = try Trainer(run: r, data: data); try train(t, until: 2)
        try t.saveCheckpoint()
        let ck = try Checkpoint.load(path: t.checkpointPath)
        var changed = r; changed.optimizer.lr = 0.5; changed.seed = 9; changed.bidirectional = false
        XCTAssertThrowsError(try Trainer(run: changed, data: data, resumeFrom: ck)) { e in
            // Each differing option by name, with both values.
            let s = "\(e)"
            XCTAssertTrue(s.contains("different config"), s)
            XCTAssertTrue(s.contains("--lr: the checkpoint has 0.01, this run 0.5"), s)
            XCTAssertTrue(s.contains("--seed: the checkpoint has 1, this run 9"), s)
            XCTAssertTrue(s.contains("--unidirectional: the checkpoint has false, this run true"), s)
            XCTAssertFalse(s.contains("--hidden"), s)
            XCTAssertFalse(s.contains("--data"), "the same data: \(s)")
            XCTAssertTrue(s.contains("coord start --config \(self.dir!)/config.toml --resume"), "the way back names the run's own config: \(s)")
        }
        // A bare --resume gives other options and no --data: both are named.
        var bare = changed; bare.synthetic.sequences = 40
        XCTAssertThrowsError(try Trainer(run: bare, data: bare.synthetic.generate(seed: bare.seed), resumeFrom: ck)) { e in
            XCTAssertTrue("\(e)".contains("--data: synthetic holds other sequences than the checkpoint's"), "\(e)")
        }
        let otherData = r.synthetic.generate(seed: 99)
        XCTAssertThrowsError(try Trainer(run: r, data: otherData, resumeFrom: ck)) { XCTAssertTrue("\($0)".contains("different data")) }
        var longer = r; longer.steps = 10
        XCTAssertNoThrow(try Trainer(run: longer, data: data, resumeFrom: ck), "more steps is not another config")
        var fewer = r; fewer.steps = 1
        XCTAssertThrowsError(try Trainer(run: fewer, data: data, resumeFrom: ck)) { e in
            XCTAssertTrue("\(e)".contains("at step 2 but this run ends at step 1") && "\(e)".contains("HINT"), "\(e)")
        }
    }

    func index(_ b: [UInt8], _ pattern: String) -> Int {
        let p = Array(pattern.utf8)
        return (0...(b.count - p.count)).first { Array(b[$0..<($0 + p.count)]) == p }!
    }

    /// Where tensor `name`'s bytes start in a safetensors file.
    func dataOffset(_ b: [UInt8], _ name: String) throws -> Int {
        var n = 0
        for k in 0..<8 { n |= Int(b[k]) << (8 * k) }
        let header = try JSONSerialization.jsonObject(with: Data(b[8..<(8 + n)])) as! [String: Any]
        return 8 + n + ((header[name] as! [String: Any])["data_offsets"] as! [Int])[0]
    }

    func testEveryByteOfACheckpointIsCheckedAndDamageIsNamed() throws {
        var r = smallRun(steps: 3, dir: dir)
        r.keepLast = 2
        let t = try Trainer(run: r, data: r.synthetic.generate(seed: r.seed))
        try train(t, until: 1); try t.saveCheckpoint()
        try train(t, until: 2); try t.saveCheckpoint()
        let good = try Checkpoint.load(path: t.checkpointPath)
        XCTAssertTrue(good.verified)
        XCTAssertEqual(Set(try FileManager.default.contentsOfDirectory(atPath: dir)),
                       ["checkpoint.safetensors", "checkpoint-step-00000001.safetensors", "checkpoint-step-00000002.safetensors"])
        let cases: [(String, (inout [UInt8]) throws -> Void, String)] = [
            ("weight", { b in b[try self.dataOffset(b, "layer1.weight_hh_l0") + 5] ^= 0x10 }, "tensor layer1.weight_hh_l0 does not match"),
            ("adam", { b in b[try self.dataOffset(b, "optimizer.exp_avg.layer2.0.bias") + 2] ^= 0x01 }, "tensor optimizer.exp_avg.layer2.0.bias does not match"),
            ("step", { b in b[self.index(b, "\"step\":\"2\"") + 8] = UInt8(ascii: "3") }, "metadata step does not match"),
            ("checksum", { b in b[self.index(b, "\"file_sha256\":\"") + 15] ^= 0x01 },
             "header (tensor shapes or offsets, or the checksum itself) was altered"),
        ]
        for (name, damage, expected) in cases {
            var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: t.checkpointPath)))
            try damage(&bytes)
            let p = dir + "/checkpoint.safetensors"
            let saved = try Data(contentsOf: URL(fileURLWithPath: p))
            // The kept step-2 file is the same inode: damage a copy in place of the live file.
            unlink(p)
            try Data(bytes).write(to: URL(fileURLWithPath: p))
            XCTAssertThrowsError(try Checkpoint.load(path: p), name) { e in
                XCTAssertTrue("\(e)".contains("is damaged") && "\(e)".contains(expected), "\(name): \(e)")
                XCTAssertTrue("\(e)".contains("checkpoint-step-00000002.safetensors (step 2)"), "names the newest intact one: \(e)")
            }
            unlink(p)
            try saved.write(to: URL(fileURLWithPath: p))
        }
        XCTAssertEqual(try Checkpoint.load(path: t.checkpointPath).params.array, good.params.array)
        // A file from PyTorch (no Lockstep metadata) has no checksum and is still read.
        var plain = Safetensors()
        for tensor in t.layout.tensors {
            plain.add(tensor.name, .init(floats: UnsafeBufferPointer(start: t.params.ptr + tensor.offset, count: tensor.count), shape: tensor.shape))
        }
        try plain.write(atomically: dir + "/torch.safetensors")
        let fromTorch = try Checkpoint.load(path: dir + "/torch.safetensors")
        XCTAssertFalse(fromTorch.verified)
        XCTAssertEqual(fromTorch.params.array, t.params.array)
    }

    func testKeepLastKeepsOnlyTheNewestK() throws {
        var r = smallRun(steps: 5, dir: dir)
        r.keepLast = 2
        let t = try Trainer(run: r, data: r.synthetic.generate(seed: r.seed))
        for s in 1...4 { try train(t, until: s); try t.saveCheckpoint() }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(),
                       ["checkpoint-step-00000003.safetensors", "checkpoint-step-00000004.safetensors", "checkpoint.safetensors"])
        XCTAssertEqual(try Checkpoint.load(path: dir + "/checkpoint-step-00000003.safetensors").step, 3)
    }

    func testOneRunPerDirectoryAndTheLockDiesWithItsHolder() throws {
        var first: RunLock? = try RunLock(directory: dir + "/run")
        XCTAssertThrowsError(try RunLock(directory: dir + "/run")) { e in
            XCTAssertTrue("\(e)".contains("is in use by another run: pid \(getpid()) on host"), "\(e)")
            XCTAssertTrue("\(e)".contains("HINT"))
        }
        var logged: [String] = []
        let t0 = Date()
        XCTAssertThrowsError(try RunLock(directory: dir + "/run", wait: 0.3, log: { logged.append($0) })) { e in
            XCTAssertTrue("\(e)".contains("did not let go within"), "\(e)")
        }
        XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(t0), 0.3)
        XCTAssertEqual(logged.count, 1)
        XCTAssertTrue(logged[0].contains("waiting up to 0 s for pid \(getpid())"), logged[0])
        XCTAssertNotNil(first)
        first = nil
        XCTAssertNoThrow(try RunLock(directory: dir + "/run"), "released when its holder goes")
        try Data().write(to: URL(fileURLWithPath: dir + "/file"))
        XCTAssertThrowsError(try RunLock(directory: dir + "/file")) { XCTAssertTrue("\($0)".contains("is a file, not a directory"), "\($0)") }
    }

    func testFailedWriteLeavesThePreviousCheckpoint() throws {
        let path = dir + "/ck.safetensors"
        var st = Safetensors()
        st.add("a", .init(floats: [1, 2], shape: [2]))
        try st.write(atomically: path)
        let before = try Data(contentsOf: URL(fileURLWithPath: path))
        // A directory where the temporary file would go makes the write fail, even for root.
        try FileManager.default.createDirectory(atPath: dir + "/.ck.safetensors.tmp-\(getpid())", withIntermediateDirectories: false)
        st.add("b", .init(floats: [3], shape: [1]))
        XCTAssertThrowsError(try st.write(atomically: path)) { XCTAssertTrue("\($0)".contains("HINT"), "\($0)") }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)), before, "the previous file is untouched")
    }

    func testDiskFullLeavesThePreviousCheckpointWhole() throws {
        var r = smallRun(steps: 2, dir: dir + "/tiny")
        r.hidden = 24
        let t = try Trainer(run: r, data: r.synthetic.generate(seed: r.seed))
        try FileManager.default.createDirectory(atPath: r.checkpointDir, withIntermediateDirectories: true)
        try t.saveCheckpoint()
        let size = (try FileManager.default.attributesOfItem(atPath: t.checkpointPath)[.size] as! NSNumber).intValue
        try FileManager.default.removeItem(atPath: t.checkpointPath)
        // Room for one checkpoint, not for the temporary copy beside it.
        let kib = (size * 3 / 2) / 1024 + 8
        guard mountTmpfs(r.checkpointDir, kib: kib) else { throw XCTSkip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)") }
        defer { _ = umount2(r.checkpointDir, 2) }
        try t.saveCheckpoint()
        let before = try Data(contentsOf: URL(fileURLWithPath: t.checkpointPath))
        try train(t, until: 1)
        XCTAssertThrowsError(try t.saveCheckpoint()) { e in
            XCTAssertTrue("\(e)".contains("No space left") && "\(e)".contains("previous file is untouched") && "\(e)".contains("HINT"), "\(e)")
        }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: t.checkpointPath)), before)
        XCTAssertEqual(try Checkpoint.load(path: t.checkpointPath).step, 0, "the previous checkpoint still loads")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: r.checkpointDir), ["checkpoint.safetensors"], "no torn temporary left")
    }

    private func mountTmpfs(_ path: String, kib: Int) -> Bool {
        mount("tmpfs", path, "tmpfs", 0, "size=\(kib)k") == 0
    }

    func testMissingDirectoryIsAClearError() {
        var st = Safetensors()
        st.add("a", .init(floats: [1], shape: [1]))
        XCTAssertThrowsError(try st.write(atomically: dir + "/no/such/dir/ck.safetensors")) {
            XCTAssertTrue("\($0)".contains("cannot write"), "\($0)")
            XCTAssertTrue("\($0)".contains("HINT"))
        }
    }

    func testConfigValidationNamesEachProblem() {
        var r = RunConfig()
        r.batchSize = 4; r.shardSize = 8; r.dropout = 1.5; r.optimizer.lr = -1; r.steps = 0
        let p = r.problems().joined(separator: "\n")
        for s in ["--shard-size", "dropout", "--lr", "--steps"] { XCTAssertTrue(p.contains(s), "missing \(s) in \(p)") }
        XCTAssertTrue(RunConfig().problems().isEmpty)
    }
}
