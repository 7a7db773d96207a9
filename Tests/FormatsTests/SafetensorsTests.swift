@testable import Formats
import Foundation
import XCTest

/// Tier 1 (pure): a malformed safetensors file is refused with its real decode error.
final class SafetensorsTests: XCTestCase {
    /// A file of `header` (JSON) and `data` bytes.
    func file(_ header: String, data: [UInt8] = [], length: UInt64? = nil) -> [UInt8] {
        let h = Array(header.utf8)
        return withUnsafeBytes(of: (length ?? UInt64(h.count)).littleEndian, Array.init) + h + data
    }

    func refused(_ bytes: [UInt8], _ words: String, file f: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try Safetensors.decode(bytes, path: "w.safetensors"), file: f, line: line) { e in
            let text = "\(e)"
            XCTAssertTrue(text.contains("w.safetensors: not a valid safetensors file") && text.contains(words), text, file: f, line: line)
        }
    }

    func testAGoodFileDecodes() throws {
        let st = try Safetensors.decode(file(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[1],"data_offsets":[8,9]},"__metadata__":{"k":"v"}}"#, data: Array(repeating: 0, count: 9)), path: "g")
        XCTAssertEqual(st.tensors["a"]?.shape, [2])
        XCTAssertEqual(st.metadata["k"], "v")
        XCTAssertEqual(st.order, ["a", "b"])
    }

    func testEveryMalformedFileIsRefusedWithWhatIsWrong() {
        let t = #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#
        let eight = [UInt8](repeating: 0, count: 8)
        refused(file(t, data: eight, length: 1 << 63), "header length 9223372036854775808")
        refused(file(t, data: eight, length: 10_000), "header length 10000")
        refused(file("not json at all", data: eight), "the header is not JSON")
        refused(file("[1, 2]"), "not an object")
        refused(file(#"{"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}}"#, data: eight), "unknown dtype F33")
        refused(file(#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, data: eight + eight), "takes 12")
        refused(file(#"{"a":{"dtype":"F32","shape":[32.5,16],"data_offsets":[0,8]}}"#, data: eight), "whole numbers")
        refused(file(#"{"a":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}}"#, data: eight), "whole numbers")
        refused(file(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}}"#, data: eight), "run past")
        refused(file(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, data: eight), "shares bytes")
        refused(file(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, data: eight), "shares bytes")
        refused(file(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, data: eight), "belong to no tensor")
        refused(file(#"{"a":{"dtype":"F32","shape":[1000000000000,4],"data_offsets":[0,8]}}"#, data: eight), "more bytes than the file holds")
        refused(file(#"{"__metadata__":{"k":1}}"#), "not a string")
        refused([1, 2, 3], "shorter than the 8-byte header length")
    }
}
