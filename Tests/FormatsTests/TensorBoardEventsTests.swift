@testable import Formats
import XCTest

/// Tier 1 (pure): TFRecord framing and the `Event` protobuf, bytes in and out.
final class TensorBoardEventsTests: XCTestCase {
    func testCRC32CKnownAnswerAndFraming() {
        XCTAssertEqual(TensorBoardEvents.crc32c(Array("123456789".utf8)), 0xE306_9283)
        let r = TensorBoardEvents.record([1, 2, 3])
        XCTAssertEqual(r.count, 16 + 3)
        XCTAssertEqual(TensorBoardEvents.records(r).map(\.payload), [[1, 2, 3]])
        var flipped = r; flipped[13] ^= 1
        XCTAssertTrue(TensorBoardEvents.records(flipped).isEmpty, "a damaged record is not read")
        let e = TensorBoardEvents.Event(TensorBoardEvents.event(wallTime: 1.5, step: 7, scalars: [("train/loss", 0.25), ("lr", 0.001)]))
        XCTAssertEqual(e?.step, 7)
        XCTAssertEqual(e?.wallTime, 1.5)
        XCTAssertEqual(e?.scalars, ["train/loss": 0.25, "lr": 0.001])
    }
}
