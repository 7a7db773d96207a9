import CZMQ
@testable import Transport
import XCTest

/// Tier 1 (pure): which peer a failed CURVE handshake came from, event by event.
final class HandshakeWatchTests: XCTestCase {
    let accepted = UInt16(ZMQ_EVENT_ACCEPTED), disconnected = UInt16(ZMQ_EVENT_DISCONNECTED)
    let protocolFailed = UInt16(ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL)

    func testAFailedHandshakeIsReportedWithThePeerOfItsConnection() {
        var w = HandshakeWatch()
        XCTAssertNil(w.on(event: accepted, value: 7, peer: .init(host: "10.0.0.5", port: "40001")))
        XCTAssertNil(w.on(event: accepted, value: 8, peer: .init(host: "10.0.0.6", port: "40002")))
        XCTAssertNil(w.on(event: protocolFailed, value: UInt32(ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC)))
        let f = w.on(event: disconnected, value: 8)
        XCTAssertEqual(f?.peer.description, "10.0.0.6:40002")
        XCTAssertTrue(f?.reason.contains("wrong server key") ?? false, "\(String(describing: f))")
        XCTAssertNil(w.on(event: disconnected, value: 7), "a clean disconnect is not a failure")
    }

    func testEachFailureKindHasItsOwnReason() {
        var w = HandshakeWatch()
        _ = w.on(event: accepted, value: 3, peer: .init(host: "127.0.0.1", port: "5000"))
        _ = w.on(event: protocolFailed, value: UInt32(ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH))
        XCTAssertTrue(w.on(event: disconnected, value: 3)?.reason.contains("no CURVE key") ?? false)
        _ = w.on(event: accepted, value: 3, peer: .init(host: "127.0.0.1", port: "5001"))  // the descriptor is reused
        _ = w.on(event: UInt16(ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL), value: 104)
        XCTAssertEqual(w.on(event: disconnected, value: 3)?.peer.description, "127.0.0.1:5001")
        XCTAssertTrue(w.peers.isEmpty, "closed connections are forgotten")
    }

    func testAnAddressThatCouldNotBeReadIsSaidSo() {
        var w = HandshakeWatch()
        _ = w.on(event: accepted, value: 9, peer: nil)
        _ = w.on(event: protocolFailed, value: UInt32(ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC))
        XCTAssertTrue(w.on(event: disconnected, value: 9)?.peer.host.contains("could not be read") ?? false)
        _ = w.on(event: protocolFailed, value: 0x1000_0000)
        let f = w.on(event: disconnected, value: 10)
        XCTAssertEqual(f?.peer.description, "an unknown address")
        XCTAssertEqual(f?.reason, "ZMTP protocol error 0x10000000")
    }
}
