import BiLSTM
@testable import Datasets
import FileIO
import Formats
import Foundation
import Numerics
import XCTest

/// Tier 2 (in-process, files): a packed set that lies (its manifest, or a shard rewritten with
/// its SHA-256 updated) is refused naming the file and what is wrong, on every path that reads it.
final class PackedLiesTests: XCTestCase {
    var dir: String!

    override func setUp() {
        dir = NSTemporaryDirectory() + "lockstep-lies-\(UUID().uuidString)"
        XCTAssertNoThrow(try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true))
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    /// A packed set of 40 sequences of 8 classes in one shard; its manifest.
    func pack(_ name: String = "p") throws -> (String, DataManifest) {
        let d = SyntheticTask(sequences: 40, inputSize: 8, classes: 8, minLength: 2, maxLength: 9).generate(seed: 3)
        try AtomicFile.write(d.npzBytes(), to: dir + "/\(name).npz")
        let out = dir + "/" + name
        let r = try PackedData.pack(inputs: [dir + "/\(name).npz"], out: out, shardBytes: 1 << 20)
        return (out, r.manifest)
    }

    /// Rewrites shard 0: `edit` gets its frames' features and labels; the manifest's SHA-256 is updated.
    func tamper(_ out: String, _ m: DataManifest, manifest editManifest: (inout DataManifest) -> Void = { _ in },
                shard edit: (inout [Float], inout [Int32]) -> Void = { _, _ in }) throws {
        let path = out + "/" + m.shards[0].file
        let bytes = [UInt8](FileManager.default.contents(atPath: path)!)
        let n = m.shards[0].frames
        var x = [Float](repeating: 0, count: n * m.dIn), y = [Int32](repeating: 0, count: n)
        x.withUnsafeMutableBytes { $0.copyBytes(from: bytes[0..<(n * m.dIn * 4)]) }
        y.withUnsafeMutableBytes { $0.copyBytes(from: bytes[(n * m.dIn * 4)...]) }
        edit(&x, &y)
        let new = x.withUnsafeBytes { Array($0) } + y.withUnsafeBytes { Array($0) }
        try AtomicFile.write(new, to: path)
        var m2 = m
        m2.shards[0].sha256 = SHA256.hex(new)
        editManifest(&m2)
        try AtomicFile.write(try m2.encoded(), to: DataManifest.path(out))
    }

    /// Every way of reading the set refuses it, naming `words`.
    func assertRefused(_ out: String, _ words: [String], file: StaticString = #filePath, line: UInt = #line) {
        let ways: [(String, () throws -> Void)] = [
            ("load", { _ = try Dataset.load(npz: out) }),
            ("on demand", { let d = try PackedData.open(out, classes: nil); for i in 0..<d.count { _ = try d.example(i) } }),
            ("eval", { let d = try PackedData.open(out, classes: 8, labels: .optional("the model")); for i in 0..<d.count { _ = try d.example(i) } }),
        ]
        for (way, body) in ways {
            XCTAssertThrowsError(try body(), way, file: file, line: line) { e in
                for w in words { XCTAssertTrue("\(e)".contains(w), "\(way): \(e) does not say \(w)", file: file, line: line) }
            }
        }
        let problems = (try? PackedData.verify(out).1) ?? []
        XCTAssertFalse(problems.isEmpty, "verify finds it", file: file, line: line)
    }

    func testLabelsOutOfRangeAndNonFiniteInputsAreRefusedOnEveryRead() throws {
        for (k, (label, words)) in [(Int32(8), ["has label 8", "-1...7"]), (-5, ["has label -5"]), (100_000, ["has label 100000"]),
                                    (Int32.max, ["has label 2147483647"])].enumerated() {
            let (out, m) = try pack("l\(k)")
            try tamper(out, m, shard: { _, y in y[3] = label })
            assertRefused(out, words + [m.shards[0].file])
        }
        let (out, m) = try pack("nan")
        try tamper(out, m, shard: { x, _ in x[5] = .nan })
        assertRefused(out, ["feature", "nan", "inputs must be finite"])
    }

    func testAClassCountThatLiesIsRefused() throws {
        let (out, m) = try pack()
        try tamper(out, m, manifest: { $0.classes = 2 })
        assertRefused(out, ["labels on valid frames must be in -1...1"])
    }

    func testSwappedLengthsChangeTheIdentityAndVerifyFindsTheContentIsNotTheManifests() throws {
        let (out, m) = try pack()
        let before = try PackedStore(out).identity
        var i = 0
        while m.lengths[i] == m.lengths[i + 1] { i += 1 }
        try tamper(out, m, manifest: { $0.lengths.swapAt(i, i + 1) })
        XCTAssertNotEqual(try PackedStore(out).identity, before, "any edit of the manifest changes the identity")
        let d = try PackedData.open(out, classes: nil)
        XCTAssertNotEqual(d.hash, try Dataset.load(npz: dir + "/p.npz").hash, "a run on it records another data hash than the .npz's")
        let problems = try PackedData.verify(out).1
        XCTAssertTrue(problems.contains { $0.what.contains("content_sha256") }, "\(problems)")
    }

    func testAShardThatIsAFifoOrALinkIsRefusedWithoutHanging() throws {
        let (out, m) = try pack()
        let path = out + "/" + m.shards[0].file
        try FileManager.default.moveItem(atPath: path, toPath: dir + "/real.bin")
        XCTAssertEqual(mkfifo(path, 0o600), 0)
        assertRefused(out, ["not a regular file"])
        unlink(path)
        try FileManager.default.createSymbolicLink(atPath: path, withDestinationPath: dir + "/real.bin")
        assertRefused(out, ["symbolic link"])
    }
}
