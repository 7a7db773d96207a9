import Foundation
@testable import Transport
import XCTest

/// Tier 1 (pure, and a temporary directory): join key names and stale keys; rejection lines
/// limited per peer.
final class JoinKeyTests: XCTestCase {
    func testRejectionLinesAreLimitedPerPeerAndInAll() {
        var log = RateLimitedLog(window: 10, linesPerWindow: 3)
        XCTAssertNotNil(log.line(key: "p1", now: 0, what: "bad 1"))
        XCTAssertNil(log.line(key: "p1", now: 1, what: "bad 2"), "one line per peer per window")
        XCTAssertNotNil(log.line(key: "p2", now: 1, what: "x"))
        XCTAssertEqual(log.line(key: "p3", now: 1, what: "y"), "y; further such lines are held back for 10 s")
        XCTAssertNil(log.line(key: "p4", now: 2, what: "z"), "three lines in all per window")
        XCTAssertEqual(log.line(key: "p1", now: 10.5, what: "bad 3"), "bad 3 (and 1 more from it not logged)")
        for i in 0..<10_000 { _ = log.line(key: "peer\(i)", now: 20 + Double(i) / 1000, what: "flood") }
        XCTAssertLessThanOrEqual(log.lastWritten.count, RateLimitedLog.keysTracked, "bounded whatever the number of peers")
        XCTAssertGreaterThan(log.suppressed, 9_000)
    }

    func testJoinKeysAreNamedByLoopbackEndpointOnly() throws {
        XCTAssertEqual(JoinKey.path(endpoint: "tcp://localhost:5555"), JoinKey.path(endpoint: "tcp://127.0.0.1:5555"))
        XCTAssertTrue(JoinKey.path(endpoint: "tcp://127.0.0.1:5555")!.hasSuffix("/tcp-127.0.0.1-5555.key"))
        XCTAssertNotNil(JoinKey.path(endpoint: "tcp://[::1]:7"))
        XCTAssertNil(JoinKey.path(endpoint: "tcp://10.0.0.7:5555"), "beyond loopback CURVE keys are the user's own")
        // A killed coordinator's key is removed by the next one; a live one's stays.
        let dir = NSTemporaryDirectory() + "lockstep-join-\(UUID().uuidString)"
        let (_, key) = try JoinKey.generate()
        XCTAssertNoThrow(try key.write(to: dir + "/mine.key", endpoint: "tcp://127.0.0.1:1"))
        let dead = Process()
        dead.executableURL = URL(fileURLWithPath: "/bin/true")
        XCTAssertNoThrow(try dead.run())
        dead.waitUntilExit()
        try? "# Lockstep join key of the coordinator at tcp://127.0.0.1:2 (pid \(dead.processIdentifier)): …\n".write(toFile: dir + "/dead.key", atomically: true, encoding: .utf8)
        XCTAssertEqual(JoinKey.removeStale(in: dir), [dir + "/dead.key"])
        XCTAssertEqual(try? JoinKey.read(dir + "/mine.key"), key)
        try? FileManager.default.removeItem(atPath: dir)
        XCTAssertTrue(JoinKey.path(endpoint: "ipc:///tmp/x.sock")!.hasSuffix("/ipc-x.sock.key"), "the local socket shares the TCP endpoint's CURVE")
    }
}
