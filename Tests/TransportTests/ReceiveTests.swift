@testable import ClusterProtocol
import Foundation
import Numerics
import Training
@testable import Transport
import XCTest

/// Tier 2 (in-process sockets): weights and gradients are decoded straight from ZeroMQ's copy,
/// and they stay valid (and equal) however long the math holds them.
final class ReceiveTests: XCTestCase {
    /// Sends `message` over an inproc pair and receives it; the sockets and context are gone on return.
    func roundTrip(_ message: Message) throws -> [Frame] {
        let context = ZMQContext()
        let endpoint = "inproc://receive-\(UUID().uuidString)"
        let a = try ZMQSocket(context, .pair), b = try ZMQSocket(context, .pair)
        try a.bind(endpoint); try b.connect(endpoint)
        XCTAssertTrue(a.send(message.encode()))
        for _ in 0..<100 {
            if let frames = b.receiveFrames() { return frames }
            Thread.sleep(forTimeInterval: 0.01)
        }
        throw WireError("nothing received")
    }

    func testLargeFloatFramesAreReceivedWithoutACopyAndOutliveTheSocket() throws {
        let grad = FloatBuffer((0..<100_003).map { Float($0) * 0.25 - 7 })
        let message = Message.result(ShardResult(step: 3, shard: 1, lossSum: 9.5, frames: 40, grad: grad))
        let frames = try roundTrip(message)
        XCTAssertEqual(frames.count, 2)
        guard case .bytes = frames[0], case .floats(let f) = frames[1] else { return XCTFail("the header is bytes, the gradient floats") }
        XCTAssertEqual(f.count, grad.count)
        guard case .result(let r) = try Message.decode(frames, limits: WireLimits()) else { return XCTFail("not a result") }
        XCTAssertTrue(r.grad === f, "the decoder uses the received floats as they are")
        XCTAssertEqual(r, ShardResult(step: 3, shard: 1, lossSum: 9.5, frames: 40, grad: grad), "valid after the sockets are gone")
        XCTAssertEqual(try Message.decode(frames.map { Frame.bytes($0.bytes) }, limits: WireLimits()), message, "the byte path agrees")
    }

    func testSmallFramesStayBytes() throws {
        let frames = try roundTrip(.result(ShardResult(step: 0, shard: 0, lossSum: 1, frames: 1, grad: FloatBuffer([1, 2]))))
        XCTAssertEqual(frames.count, 2)
        for f in frames { guard case .bytes = f else { return XCTFail("an 8-byte frame is copied as bytes") } }
    }
}
