import Foundation
import Numerics
import Training
@testable import Transport
import XCTest

/// Tier 1 (files): CURVE allow-lists and key files read as written, with comments and `.pub` lines.
final class CurveKeyFileTests: XCTestCase {
    func testAllowListAcceptsKeysWithHashesPubLinesAndComments() throws {
        let path = NSTemporaryDirectory() + "allow-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: path) }
        var withHash: [String] = []
        while withHash.count < 2 {
            let k = try CurveKeypair.generate().publicKey
            if k.contains("#") { withHash.append(k) }
        }
        let (a, b) = (withHash[0], withHash[1])
        try "# workers\n\n\(a)\n\(b)   # trailing words are ignored\npublic-key = \(b)\n#\n".write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertEqual(try CurveKeypair.allowList(path), [a, b, b])
        try "not-a-key\n".write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try CurveKeypair.allowList(path)) { XCTAssertTrue("\($0)".contains(":1:") && "\($0)".contains("HINT"), "\($0)") }
    }
}
