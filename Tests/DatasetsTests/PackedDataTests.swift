import BiLSTM
@testable import Datasets
import Foundation
import Numerics
import XCTest

/// Tier 2: a packed directory is its `.npz`'s data exactly, and every bad copy is named.
final class PackedDataTests: XCTestCase {
    var dir: String!

    override func setUp() {
        dir = NSTemporaryDirectory() + "lockstep-packed-\(UUID().uuidString)"
        XCTAssertNoThrow(try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true))
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func npz(_ d: Dataset, _ name: String, deflate: Bool = false) throws -> String {
        let p = dir + "/" + name
        try Data(d.npzBytes(deflate: deflate)).write(to: URL(fileURLWithPath: p))
        return p
    }

    func task(_ n: Int, first: Int = 0) -> Dataset {
        SyntheticTask(sequences: n, inputSize: 16, classes: 8, minLength: 3, maxLength: 40).generate(seed: 4, firstId: first, count: n)
    }

    func assertThrows(_ body: @autoclosure () throws -> Any, mentions: [String], file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try body()
            XCTFail("accepted; expected an error mentioning \(mentions)", file: file, line: line)
        } catch {
            let text = "\(error)"
            for m in mentions { XCTAssertTrue(text.contains(m), "\(text) does not mention \(m)", file: file, line: line) }
            XCTAssertTrue(text.contains("HINT: "), "\(text) has no HINT", file: file, line: line)
        }
    }

    func testAPackedDirectoryIsTheNpzsDataWithItsHashStoredOrDeflatedInAnyShardSize() throws {
        let d = task(300)
        let stored = try npz(d, "s.npz"), deflated = try npz(d, "d.npz", deflate: true)
        let reference = try Dataset.load(npz: stored)
        for (input, shardBytes) in [(stored, 1), (deflated, 3_000), (stored, 50_000), (deflated, 1 << 30)] {
            let out = dir + "/p\(shardBytes)"
            let r = try PackedData.pack(inputs: [input], out: out, shardBytes: shardBytes)
            XCTAssertEqual(r.manifest.contentSHA256, reference.hash, "the manifest carries the .npz's content hash")
            let back = try Dataset.load(npz: out)
            XCTAssertEqual(back.examples, reference.examples)
            XCTAssertEqual(back.hash, reference.hash)
            XCTAssertEqual(back.paddedLength, reference.paddedLength)
            XCTAssertEqual(back.classes, reference.classes)
            XCTAssertEqual(try Dataset.load(npz: out + "/manifest.json").hash, reference.hash, "the manifest's path reads the same")
            if shardBytes == 1 { XCTAssertEqual(r.manifest.shards.count, 300, "one sequence per shard at the smallest size") }
            if shardBytes == 1 << 30 { XCTAssertEqual(r.manifest.shards.count, 1) }
            let (_, problems) = try PackedData.verify(out)
            XCTAssertTrue(problems.isEmpty, "\(problems)")
        }
        // Several inputs are concatenated in order, ids renumbered: the same as one file of both.
        let a = task(50), b = task(70, first: 50)
        let both = Dataset(examples: a.examples + b.examples, inputSize: 16, classes: 8, source: "both")
        try PackedData.pack(inputs: [try npz(a, "a.npz"), try npz(b, "b.npz", deflate: true)], out: dir + "/ab", shardBytes: 10_000)
        let ab = try Dataset.load(npz: dir + "/ab")
        XCTAssertEqual(ab.hash, try Dataset.load(npz: try npz(both, "both.npz")).hash)
        XCTAssertEqual(ab.examples.map(\.id), Array(0..<120))
    }

    func testTheStoreKeepsAtMostItsCacheAndReadsWhatItDropped() throws {
        let d = task(2_500)
        let out = dir + "/p"
        let m = try PackedData.pack(inputs: [try npz(d, "t.npz")], out: out, shardBytes: 400_000).manifest
        let total = m.frames * (m.dIn + 1) * 4
        XCTAssertGreaterThan(total, 3 << 20, "the data must be larger than the 1 MiB cache")
        let small = try PackedStore(out, cacheMB: 1), big = try PackedStore(out, cacheMB: 64)
        for pass in 0..<2 {
            for id in 0..<m.sequences {
                XCTAssertEqual(try small.example(id), d.examples[id])
                XCTAssertEqual(try big.example(id), d.examples[id])
                XCTAssertLessThanOrEqual(small.cachedBytes, 1 << 20)
            }
            XCTAssertEqual(big.reads.files, m.sequences, "pass \(pass): the large cache read each sequence once")
        }
        XCTAssertEqual(big.reads.cached, m.sequences)
        XCTAssertEqual(big.cachedBytes, total)
        XCTAssertEqual(small.reads.files, 2 * m.sequences, "a cache smaller than the data, in order, rereads everything")
        XCTAssertGreaterThan(small.cachedBytes, (1 << 20) - 20_000, "filled up to the bound")
        // Least recently used goes first: the last sequence read is still there, the first is not.
        let before = small.reads
        _ = try small.example(m.sequences - 1)
        _ = try small.example(0)
        XCTAssertEqual(small.reads.cached - before.cached, 1)
        XCTAssertEqual(small.reads.files - before.files, 1)
        let none = try PackedStore(out, cacheMB: 0)
        _ = try none.example(3); _ = try none.example(3)
        XCTAssertEqual(none.reads.files, 2)
        XCTAssertEqual(none.cachedBytes, 0)
    }

    func testAShardCutShortDuringARunIsAnErrorNamingItNotACrash() throws {
        let src = try npz(task(120), "t.npz")
        let out = dir + "/p"
        let m = try PackedData.pack(inputs: [src], out: out, shardBytes: 1 << 30).manifest
        XCTAssertEqual(m.shards.count, 1)
        let store = try PackedStore(out, cacheMB: 0)
        XCTAssertNoThrow(try store.example(0), "checks the shard and keeps it open")
        // Truncated in place after its check (a copy going wrong under a running worker).
        let victim = out + "/" + m.shards[0].file
        XCTAssertEqual(truncate(victim, off_t(m.shards[0].bytes / 2)), 0)
        assertThrows(try store.example(119), mentions: [m.shards[0].file, "shorter than when it was checked", "resume"])
    }

    func testEveryBadCopyIsFoundAndNamedBeforeItsSequencesAreUsed() throws {
        let src = try npz(task(120), "t.npz")
        let out = dir + "/p"
        let m = try PackedData.pack(inputs: [src], out: out, shardBytes: 8_000).manifest
        XCTAssertGreaterThan(m.shards.count, 3)
        let victim = out + "/" + m.shards[2].file
        let good = try Data(contentsOf: URL(fileURLWithPath: victim))
        // One flipped bit.
        var bad = good
        bad[bad.count / 2] ^= 0x04
        try bad.write(to: URL(fileURLWithPath: victim))
        var (_, problems) = try PackedData.verify(out)
        XCTAssertEqual(problems.map(\.file), [victim])
        XCTAssertTrue(problems[0].what.contains("corrupted"), problems[0].what)
        assertThrows(try Dataset.load(npz: out), mentions: [m.shards[2].file, "corrupted", "coord data verify"])
        // Truncated, then missing.
        try good.prefix(good.count - 4).write(to: URL(fileURLWithPath: victim))
        (_, problems) = try PackedData.verify(out)
        XCTAssertTrue(problems.first?.what.contains("truncated") == true, "\(problems)")
        try FileManager.default.removeItem(atPath: victim)
        (_, problems) = try PackedData.verify(out)
        XCTAssertTrue(problems.first?.what.contains("missing") == true, "\(problems)")
        assertThrows(try Dataset.load(npz: out), mentions: [m.shards[2].file, "missing"])
        try good.write(to: URL(fileURLWithPath: victim))
        XCTAssertNoThrow(try Dataset.load(npz: out))
        // Manifests of another version, edited, or absent.
        let manifest = try String(contentsOfFile: out + "/manifest.json", encoding: .utf8)
        try manifest.replacingOccurrences(of: "\"version\":1", with: "\"version\":2").write(toFile: out + "/manifest.json", atomically: true, encoding: .utf8)
        assertThrows(try Dataset.load(npz: out), mentions: ["format version 2", "reads version 1"])
        try manifest.replacingOccurrences(of: "\"frames\":\(m.frames)", with: "\"frames\":\(m.frames + 1)").write(toFile: out + "/manifest.json", atomically: true, encoding: .utf8)
        assertThrows(try Dataset.load(npz: out), mentions: ["field \"frames\"", "\(m.frames + 1)"])
        try #"{"format":"lockstep-packed-data","version":1,"d_in":16,"classes":8,"labelled":true,"sequences":0,"frames":0,"padded_length":0,"content_sha256":"x","shards":[],"lengths":[]}"#
            .write(toFile: out + "/manifest.json", atomically: true, encoding: .utf8)
        assertThrows(try Dataset.load(npz: out), mentions: ["field \"sequences\": 0 is outside 1..."])
        assertThrows(try PackedData.open(out, classes: nil), mentions: ["field \"sequences\": 0 is outside 1..."])
        try FileManager.default.removeItem(atPath: out + "/manifest.json")
        assertThrows(try Dataset.load(npz: out), mentions: ["no manifest.json", "coord data pack"])
    }

    func testBadInputsAreRefusedAndLeaveNoDirectory() throws {
        let src = try npz(task(20), "t.npz")
        try PackedData.pack(inputs: [src], out: dir + "/once", shardBytes: 1000)
        assertThrows(try PackedData.pack(inputs: [src], out: dir + "/once", shardBytes: 1000), mentions: ["already exists"])
        assertThrows(try PackedData.pack(inputs: [dir + "/none.npz"], out: dir + "/none", shardBytes: 1000), mentions: ["none.npz", "cannot read the input"])
        let wide = try npz(SyntheticTask(sequences: 5, inputSize: 12, classes: 8).generate(seed: 1), "wide.npz")
        assertThrows(try PackedData.pack(inputs: [src, wide], out: dir + "/mixed", shardBytes: 1000), mentions: ["wide.npz", "d_in = 12", "16"])
        assertThrows(try PackedData.pack(inputs: [src], out: dir + "/few", shardBytes: 1000, classes: 3), mentions: ["t.npz", "'y'", "label", "--classes"])
        // A non-finite input late in the file: found in the second pass, after shards were written.
        var ex = task(20).examples
        var x = ex[19].x
        x[x.count - 1] = .nan
        ex[19] = Example(id: 19, x: x, y: ex[19].y)
        let nan = try npz(Dataset(examples: ex, inputSize: 16, classes: 8, source: "nan"), "nan.npz")
        assertThrows(try PackedData.pack(inputs: [nan], out: dir + "/nan", shardBytes: 100), mentions: ["nan.npz", "sequence 19", "finite"])
        let left = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix(".") || $0 == "nan" || $0 == "mixed" || $0 == "few" }
        XCTAssertEqual(left, [], "a failed pack leaves nothing behind")
        // Labels beyond the model's classes, when read for a model.
        assertThrows(try Dataset.load(npz: dir + "/once", classes: 4, labels: .forModel("m.safetensors", missingHint: "")),
                     mentions: ["class", "m.safetensors"])
    }
}
