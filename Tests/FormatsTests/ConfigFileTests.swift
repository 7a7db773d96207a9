@testable import Formats
import XCTest

/// Tier 1 (pure): the config reader's refusals say what is wrong without echoing a hostile file.
final class ConfigFileTests: XCTestCase {
    func testAnIntegerTooLargeIsSaidToBeOutOfRange() {
        XCTAssertThrowsError(try ConfigFile.parse("steps = 12345678901234567890123456789\n")) { e in
            XCTAssertTrue("\(e)".contains("out of range"), "\(e)")
        }
    }

    func testAHugeKeyIsCutInTheMessage() {
        let key = String(repeating: "k", count: 10_000_000)
        XCTAssertThrowsError(try ConfigFile.parse(key + " 1\n")) { e in
            XCTAssertLessThan("\(e)".count, 200, "the key is not echoed whole")
            XCTAssertTrue("\(e)".contains("(10000000 bytes)"), "\(e)")
        }
    }

    func testControlCharactersAreEscapedInMessages() {
        XCTAssertEqual(ConfigFile.shown("a\u{1b}[2Jb"), "a\\u{1b}[2Jb")
    }
}
