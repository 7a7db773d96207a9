@testable import FileIO
import Formats
import Foundation
import XCTest

/// Tier 2 (in-process, files): Lockstep writes only regular files, never through a link, and
/// reads untrusted files without following links or blocking on a FIFO.
final class SafeFileTests: XCTestCase {
    var dir: String!
    override func setUp() {
        dir = NSTemporaryDirectory() + "lockstep-safefile-\(UUID().uuidString)"
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func testAnOutputThatIsNotARegularFileIsRefusedAndLeftAlone() throws {
        let victim = dir + "/victim"
        try "keep".write(toFile: victim, atomically: true, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: dir + "/link", withDestinationPath: victim)
        XCTAssertEqual(mkfifo(dir + "/fifo", 0o600), 0)
        try FileManager.default.createDirectory(atPath: dir + "/sub", withIntermediateDirectories: false)
        for (path, kind) in [("/dev/null", "a device"), (dir + "/link", "a symbolic link"), (dir + "/fifo", "a FIFO"), (dir + "/sub", "a directory")] {
            XCTAssertThrowsError(try AtomicFile.write([1, 2, 3], to: path)) { XCTAssertTrue("\($0)".contains(kind), "\($0)") }
            XCTAssertThrowsError(try SafeFile.openForAppend(path, truncate: true, what: "a log")) { XCTAssertTrue("\($0)".contains("not a regular file"), "\($0)") }
        }
        var st = stat()
        XCTAssertEqual(lstat("/dev/null", &st), 0)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFCHR, "/dev/null is still a device")
        XCTAssertEqual(try String(contentsOfFile: victim, encoding: .utf8), "keep", "the link's target is untouched")
        try AtomicFile.write([1, 2, 3], to: dir + "/plain")
        XCTAssertEqual(FileManager.default.contents(atPath: dir + "/plain"), Data([1, 2, 3]))
    }

    func testReadingRefusesLinksFifosAndOversizedFiles() throws {
        try "x".write(toFile: dir + "/f", atomically: true, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: dir + "/l", withDestinationPath: dir + "/f")
        XCTAssertEqual(mkfifo(dir + "/p", 0o600), 0)
        XCTAssertThrowsError(try SafeFile.read(dir + "/l", what: "the file", maxBytes: 10)) { XCTAssertTrue("\($0)".contains("symbolic link"), "\($0)") }
        XCTAssertThrowsError(try SafeFile.read(dir + "/p", what: "the file", maxBytes: 10)) { XCTAssertTrue("\($0)".contains("not a regular file"), "\($0)") }
        XCTAssertThrowsError(try SafeFile.read(dir + "/f", what: "the file", maxBytes: 0)) { XCTAssertTrue("\($0)".contains("more than"), "\($0)") }
        XCTAssertEqual(try SafeFile.read(dir + "/f", what: "the file", maxBytes: 10), Array("x".utf8))
    }
}
