@testable import Formats
import Foundation
import XCTest

/// Tier 1 (pure): a manifest is valid only when every field agrees with every other; each lie is
/// refused naming the field, with a message that does not change from run to run.
final class ManifestTests: XCTestCase {
    let limits = DataManifest.Limits(maxInputSize: 65_536, maxClasses: 65_536, maxLength: 1 << 20, maxSequences: Int(Int32.max))
    let hash = String(repeating: "ab", count: 32)

    /// Three sequences (lengths 2, 3, 1) of d_in 2 in two shards.
    func good() -> DataManifest {
        DataManifest(format: DataManifest.formatName, version: DataManifest.currentVersion, dIn: 2, classes: 3, labelled: true,
                     sequences: 3, frames: 6, paddedLength: 4, contentSHA256: hash,
                     shards: [.init(file: "shard-00000.bin", first: 0, sequences: 2, frames: 5, bytes: 5 * 12, sha256: hash),
                              .init(file: "shard-00001.bin", first: 2, sequences: 1, frames: 1, bytes: 12, sha256: hash)],
                     lengths: [2, 3, 1])
    }

    func refused(_ edit: (inout DataManifest) -> Void, field: String, file: StaticString = #filePath, line: UInt = #line) {
        var m = good()
        edit(&m)
        let bytes = try! m.encoded()
        for _ in 0..<2 {  // the same words every time
            XCTAssertThrowsError(try DataManifest.decode(bytes, path: "D/manifest.json", limits: limits), file: file, line: line) { e in
                let text = "\(e)"
                XCTAssertTrue(text.contains("D/manifest.json: field \"\(field)\""), text, file: file, line: line)
                XCTAssertTrue(text.contains("HINT: "), text, file: file, line: line)
            }
        }
    }

    func testAGoodManifestDecodesAndRoundTrips() throws {
        let m = try DataManifest.decode(try good().encoded(), path: "m", limits: limits)
        XCTAssertEqual(m, good())
    }

    func testEveryLieIsRefusedNamingItsField() {
        refused({ $0.sequences = 1_000_000_000; $0.shards[1].sequences = 999_999_998 }, field: "lengths")
        refused({ $0.sequences = 3_000_000_000 }, field: "sequences")
        refused({ $0.lengths.removeLast() }, field: "lengths")
        refused({ $0.lengths = [] }, field: "lengths")
        refused({ $0.lengths = [2, 5, -1] }, field: "lengths")
        refused({ $0.paddedLength = 2 }, field: "lengths")
        refused({ $0.paddedLength = 0 }, field: "padded_length")
        refused({ $0.classes = 0 }, field: "classes")
        refused({ $0.dIn = 70_000 }, field: "d_in")
        refused({ $0.frames = 7 }, field: "frames")
        refused({ $0.contentSHA256 = "x" }, field: "content_sha256")
        refused({ $0.shards = [] }, field: "shards")
        refused({ $0.shards[0].file = "../x" }, field: "shards[0].file")
        refused({ $0.shards[0].file = "/etc/passwd" }, field: "shards[0].file")
        refused({ $0.shards[1].file = "a/b" }, field: "shards[1].file")
        refused({ $0.shards[1].file = "" }, field: "shards[1].file")
        refused({ $0.shards[1].file = "shard-00000.bin" }, field: "shards[1].file")
        refused({ $0.shards[1].first = 1 }, field: "shards[1].first")
        refused({ $0.shards[0].sequences = 3 }, field: "shards[0].frames")
        refused({ $0.shards[1].sequences = 5 }, field: "shards[1].sequences")
        refused({ $0.shards[0].frames = 4 }, field: "shards[0].frames")
        refused({ $0.shards[0].bytes += 1 }, field: "shards[0].bytes")
        refused({ $0.shards[1].sha256 = String(repeating: "G", count: 64) }, field: "shards[1].sha256")
        refused({ $0.shards.removeLast() }, field: "shards")
    }

    func testSwappedLengthsStillAddUpButChangeTheBytesEncoded() throws {
        // The structure allows it (the shard's frames are the same); the identity, computed from
        // these bytes, is what binds it (DatasetsTests).
        var m = good()
        m.lengths.swapAt(0, 1)
        XCTAssertNotEqual(try m.encoded(), try good().encoded())
    }
}
