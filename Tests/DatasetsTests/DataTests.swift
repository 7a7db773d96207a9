import BiLSTM
@testable import Datasets
@testable import Formats
import Foundation
import Numerics
@testable import Training
import XCTest

/// Tier 2: every malformed data file is refused with the file, the array and a fix.
final class DataTests: XCTestCase {
    var dir: String!

    override func setUp() {
        dir = NSTemporaryDirectory() + "lockstep-data-\(UUID().uuidString)"
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func bytes<T>(_ a: [T]) -> [UInt8] { a.withUnsafeBytes { Array($0) } }

    /// A valid npz of 2 sequences (lengths 3 and 2, d_in 2, labels < 3) with overrides.
    func npz(x: [UInt8]? = nil, xDescr: String = "<f4", xShape: [Int] = [2, 3, 2],
             lengths: [Int64] = [3, 2], lengthsShape: [Int]? = nil,
             y: [Int64] = [0, 1, 2, 2, 1, -1], yShape: [Int] = [2, 3], drop: String? = nil) -> String {
        let xs = x ?? bytes((0..<12).map { Float($0) * 0.1 })
        var members: [(String, [UInt8])] = [
            ("x.npy", NPYArray.encode(descr: xDescr, shape: xShape, data: xs)),
            ("lengths.npy", NPYArray.encode(descr: "<i8", shape: lengthsShape ?? [lengths.count], data: bytes(lengths))),
            ("y.npy", NPYArray.encode(descr: "<i8", shape: yShape, data: bytes(y))),
        ]
        if let drop { members.removeAll { $0.0 == drop + ".npy" } }
        let path = dir + "/d-\(UUID().uuidString).npz"
        _ = FileManager.default.createFile(atPath: path, contents: Data(ZipArchive.write(members.map { (name: $0.0, bytes: $0.1) })))
        return path
    }

    func assertRefused(_ path: String, classes: Int? = nil, mentions: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try Dataset.load(npz: path, classes: classes), file: file, line: line) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains(path), "error must name the file: \(text)", file: file, line: line)
            XCTAssertTrue(text.contains("HINT:") || text.contains("must"), "error must say the fix: \(text)", file: file, line: line)
            for m in mentions { XCTAssertTrue(text.contains(m), "error should mention \(m): \(text)", file: file, line: line) }
        }
    }

    func testValidFileLoads() throws {
        let d = try Dataset.load(npz: npz())
        XCTAssertEqual(d.examples.map(\.length), [3, 2])
        XCTAssertEqual(d.inputSize, 2)
        XCTAssertEqual(d.classes, 3)
        XCTAssertEqual(d.examples[1].x, [0.6, 0.7, 0.8, 0.90000004].map { Float($0) })
        XCTAssertEqual(d.examples[1].y, [2, 1])
    }

    func testMissingArray() { assertRefused(npz(drop: "lengths"), mentions: ["'lengths'", "missing"]) }
    func testWrongDtype() {
        assertRefused(npz(x: bytes((0..<12).map { Double($0) }), xDescr: "<f8"), mentions: ["'x'", "float32", "astype"])
    }
    func testWrongRank() { assertRefused(npz(xShape: [6, 2]), mentions: ["'x'", "[N, Lmax, d_in]"]) }
    func testLengthsShapeMismatch() { assertRefused(npz(lengths: [3, 2, 1]), mentions: ["'lengths'"]) }
    func testYShapeMismatch() { assertRefused(npz(y: [0, 1, 2, 2], yShape: [2, 2]), mentions: ["'y'"]) }
    func testLengthZero() { assertRefused(npz(lengths: [3, 0]), mentions: ["'lengths'", "sequence 1", "length 0"]) }
    func testLengthTooLong() { assertRefused(npz(lengths: [4, 2]), mentions: ["'lengths'", "length 4"]) }
    func testLabelAboveClasses() { assertRefused(npz(), classes: 2, mentions: ["'y'", "label 2", "--classes"]) }
    func testLabelBelowMinusOne() { assertRefused(npz(y: [0, -2, 1, 1, 1, -1]), mentions: ["'y'", "label -2"]) }
    func testNaNInX() {
        var x = (0..<12).map { Float($0) }
        x[3] = .nan
        assertRefused(npz(x: bytes(x)), mentions: ["'x'", "sequence 0, frame 1", "finite"])
    }
    func testLabelOnPaddingIsIgnored() throws {
        // y[1, 2] is padding (length 2): any value there is fine.
        XCTAssertNoThrow(try Dataset.load(npz: npz(y: [0, 1, 2, 2, 1, 99])))
    }

    func testTruncatedFile() throws {
        let good = try Data(contentsOf: URL(fileURLWithPath: npz()))
        let path = dir + "/trunc.npz"
        _ = FileManager.default.createFile(atPath: path, contents: good.prefix(good.count - 40))
        assertRefused(path, mentions: ["zip"])
    }

    func testCorruptZipMemberFailsItsCRC() throws {
        var good = [UInt8](try Data(contentsOf: URL(fileURLWithPath: npz())))
        good[200] ^= 0xFF  // inside x.npy's data
        let path = dir + "/corrupt.npz"
        _ = FileManager.default.createFile(atPath: path, contents: Data(good))
        assertRefused(path, mentions: ["CRC"])
    }

    func testHugeDeclaredShapeIsRefusedBeforeAllocating() {
        assertRefused(npz(xShape: [1 << 20, 1 << 20, 1 << 10]), mentions: ["'x'"])
    }

    func testNotAZip() {
        let path = dir + "/text.npz"
        _ = FileManager.default.createFile(atPath: path, contents: Data("hello".utf8))
        assertRefused(path, mentions: ["zip"])
    }

    func members(y: [Int64] = [0, 1, 2, 2, 1, -1]) -> [(name: String, bytes: [UInt8])] {
        [("x.npy", NPYArray.encode(descr: "<f4", shape: [2, 3, 2], data: bytes((0..<12).map { Float($0) * 0.1 }))),
         ("lengths.npy", NPYArray.encode(descr: "<i8", shape: [2], data: bytes([Int64(3), 2]))),
         ("y.npy", NPYArray.encode(descr: "<i8", shape: [2, 3], data: bytes(y)))]
    }

    func write(_ b: [UInt8]) -> String {
        let path = dir + "/z-\(UUID().uuidString).npz"
        _ = FileManager.default.createFile(atPath: path, contents: Data(b))
        return path
    }

    func testZip64AndDeflatedMembersReadInChunksGiveTheSameData() throws {
        let plain = try Dataset.load(npz: write(ZipArchive.write(members())))
        let saved = ZipArchive.chunk
        defer { ZipArchive.chunk = saved }
        for chunk in [saved, 7, 1] {
            ZipArchive.chunk = chunk  // zlib fed and drained in pieces, as a member over 4 GiB must be
            for (deflate, zip64) in [(true, false), (false, true), (true, true)] {
                let d = try Dataset.load(npz: write(ZipArchive.write(members(), deflate: deflate, zip64: zip64)))
                XCTAssertEqual(d.hash, plain.hash, "chunk \(chunk) deflate \(deflate) zip64 \(zip64)")
            }
        }
    }

    func testTwoMembersOfOneNameAreRefused() {
        assertRefused(write(ZipArchive.write(members() + [("y.npy", members()[2].bytes)])), mentions: ["two members named y.npy"])
    }

    func testDeclaredSizesBeyondTheFileAreRefusedBeforeAllocating() {
        // A ZIP64 size of 2^50: stored, it cannot be; deflated, no stream expands that much.
        assertRefused(write(ZipArchive.write(members(), zip64: true, declaredSize: ["x.npy": 1 << 50])),
                      mentions: ["stored member x.npy declares 1125899906842624 bytes"])
        assertRefused(write(ZipArchive.write(members(), deflate: true, zip64: true, declaredSize: ["x.npy": 1 << 50])),
                      mentions: ["member x.npy declares 1125899906842624 bytes", "more than deflate can expand"])
        // A member that inflates to more than it declared is corrupt, not an overflow.
        assertRefused(write(ZipArchive.write(members(), deflate: true, declaredSize: ["x.npy": 100])), mentions: ["deflate data is corrupt"])
    }

    func testAFileNeedingMoreMemoryThanAllowedIsRefusedAtOnce() throws {
        let path = write(ZipArchive.write(members(), deflate: true))
        Memory.testLimit = 64
        defer { Memory.testLimit = nil }
        assertRefused(path, mentions: ["of memory, more than this process may use"])
    }

    func testALabelOfABillionIsRefusedNamingTheFrameAndTheLimit() {
        assertRefused(npz(y: [0, 1_000_000_000, 2, 2, 1, -1]), mentions: ["sequence 0, frame 1 has label 1000000000", "limit of 65536 classes"])
        var r = RunConfig()
        r.classes = 1_000_000_000
        XCTAssertTrue(r.problems().contains { $0.contains("--classes must be in 2...65536") }, "\(r.problems())")
        r.classes = nil; r.synthetic.classes = 1_000_000_000; r.synthetic.inputSize = 1_000_000_000
        XCTAssertTrue(r.problems().contains { $0.contains("synthetic classes must be at most 65536") }, "\(r.problems())")
        r = RunConfig(); r.hidden = 4096; r.layers = 64
        XCTAssertThrowsError(try Trainer(run: r, data: r.synthetic.generate(seed: 1))) { e in
            XCTAssertTrue("\(e)".contains("parameters) needs") && "\(e)".contains("of memory"), "\(e)")
        }
    }

    func testMissingFile() { assertRefused(dir + "/nope.npz", mentions: ["cannot read"]) }

    func testRoundTripThroughNpzBytes() throws {
        let d = SyntheticTask(sequences: 5, inputSize: 8, classes: 4, minLength: 1, maxLength: 9).generate(seed: 3)
        let path = dir + "/rt.npz"
        _ = FileManager.default.createFile(atPath: path, contents: Data(d.npzBytes()))
        let back = try Dataset.load(npz: path, classes: 4)
        XCTAssertEqual(back.examples.map(\.x), d.examples.map(\.x))
        XCTAssertEqual(back.examples.map(\.y), d.examples.map(\.y))
    }

    func testSyntheticTaskIsDeterministicAndNeedsBothContexts() {
        let task = SyntheticTask(sequences: 10, inputSize: 8, classes: 4, minLength: 3, maxLength: 7, noise: 0)
        let a = task.generate(seed: 5), b = task.generate(seed: 5)
        XCTAssertEqual(a.hash, b.hash)
        XCTAssertNotEqual(a.hash, task.generate(seed: 6).hash)
        for e in a.examples {
            let z = (0..<e.length).map { t in (0..<8).first { e.x[t * 8 + $0] == 1 }! }
            for t in 0..<e.length {
                let want = ((t > 0 ? z[t - 1] : 0) + 2 * (t + 1 < e.length ? z[t + 1] : 0)) % 4
                XCTAssertEqual(Int(e.y[t]), want)
            }
        }
    }
}
