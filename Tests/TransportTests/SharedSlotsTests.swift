@testable import ClusterProtocol
import Foundation
import Numerics
import Training
@testable import Transport
import XCTest

/// Tier 2 (in-process, real shared memory): the slots through which local workers and the
/// coordinator exchange weights and gradients in place.
final class SharedSlotsTests: XCTestCase {
    func weights(_ floats: Int) throws -> SharedSlots {
        try SharedSlots(creating: SharedSlots.weightsMagic, slots: SharedSlots.weightSlots, floats: floats, what: "test-weights")
    }

    func testAReaderSeesEachStepsWeightsAndKnowsWhenItsSlotHasMovedOn() throws {
        let writer = try weights(1000)
        let reader = try SharedSlots(opening: writer.path, magic: SharedSlots.weightsMagic, token: writer.token, slots: 2, floats: 1000)
        XCTAssertNil(reader.weights(step: 0), "nothing published yet")
        let w3 = FloatBuffer((0..<1000).map { Float($0) * 0.5 })
        writer.publishWeights(step: 3, w3)
        XCTAssertEqual(try XCTUnwrap(reader.weights(step: 3)).array, w3.array)
        let w4 = FloatBuffer((0..<1000).map { -Float($0) })
        writer.publishWeights(step: 4, w4)
        XCTAssertEqual(try XCTUnwrap(reader.weights(step: 4)).array, w4.array)
        XCTAssertEqual(try XCTUnwrap(reader.weights(step: 3)).array, w3.array, "step 3 stays until step 5 reuses its slot")
        writer.publishWeights(step: 5, w4)
        XCTAssertNil(reader.weights(step: 3), "work for step 3 is stale now")
        XCTAssertEqual(reader.weightsStamp(step: 3), 5)
    }

    /// Work arrives before its weights: the reader sleeps on the slot's stamp and the publish wakes
    /// it. It rechecks only every 20 s here, so a missing wake fails the test rather than hiding.
    func testAWaitForWeightsIsWokenByTheirPublishAndEndsOnAStaleSlotATimeoutOrAbandon() throws {
        let writer = try weights(1000)
        let reader = try SharedSlots(opening: writer.path, magic: SharedSlots.weightsMagic, token: writer.token, slots: 2, floats: 1000)
        writer.publishWeights(step: 4, FloatBuffer(count: 1000))
        let w6 = FloatBuffer((0..<1000).map { Float($0) + 0.25 })
        let publisher = Thread { Thread.sleep(forTimeInterval: 0.2); writer.publishWeights(step: 6, w6) }
        let started = monotonicSeconds()
        publisher.start()
        XCTAssertEqual(reader.awaitWeights(step: 6, timeout: 60, recheck: 20), .ready)
        let waited = monotonicSeconds() - started
        XCTAssertTrue(waited >= 0.2 && waited < 10, "woken after \(waited) s: the publish must wake the waiter")
        XCTAssertEqual(reader.weightsView(step: 6).array, w6.array)
        XCTAssertEqual(reader.awaitWeights(step: 4, timeout: 60), .stale(6), "step 6 has reused step 4's slot")
        XCTAssertEqual(reader.awaitWeights(step: 7, timeout: 0.05), .timedOut)
        let abandoner = Thread { Thread.sleep(forTimeInterval: 0.1); reader.abandon() }
        abandoner.start()
        XCTAssertEqual(reader.awaitWeights(step: 7, timeout: 60), .abandoned)
    }

    /// CPU seconds this thread has used.
    func threadCPUSeconds() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
    }

    /// At the step barrier a local worker keeps its core busy: it spins (using CPU, unlike a
    /// sleep) until the next step's weights are published, more work is queued, or time is up.
    func testABusyWaitSpinsUntilTheWeightsArriveMoreWorkComesOrTimeIsUp() throws {
        let writer = try weights(100)
        let reader = try SharedSlots(opening: writer.path, magic: SharedSlots.weightsMagic, token: writer.token, slots: 2, floats: 100)
        var cpu = threadCPUSeconds()
        let spun = reader.spin(untilWeightsOf: 7, for: 0.2) { true }
        XCTAssertGreaterThanOrEqual(spun, 0.2)
        XCTAssertGreaterThan(threadCPUSeconds() - cpu, 0.02, "a busy wait uses the core")
        XCTAssertLessThan(reader.spin(untilWeightsOf: 7, for: 10) { false }, 1, "queued work ends the wait")
        let publisher = Thread { Thread.sleep(forTimeInterval: 0.05); writer.publishWeights(step: 7, FloatBuffer(count: 100)) }
        publisher.start()
        let toPublish = reader.spin(untilWeightsOf: 7, for: 30) { true }
        XCTAssertTrue(toPublish >= 0.04 && toPublish < 10, "spun \(toPublish) s for a publish 0.05 s away")
        // Waiting for weights, the first `spin` seconds are busy too; then it sleeps.
        cpu = threadCPUSeconds()
        XCTAssertEqual(reader.awaitWeights(step: 8, timeout: 0.15, spin: 0.15), .timedOut)
        XCTAssertGreaterThan(threadCPUSeconds() - cpu, 0.02)
        cpu = threadCPUSeconds()
        XCTAssertEqual(reader.awaitWeights(step: 8, timeout: 0.15, spin: 0), .timedOut)
        XCTAssertLessThan(threadCPUSeconds() - cpu, 0.02, "without spin the wait sleeps")
    }

    func testAWorkersGradientSlotIsReadInPlaceByShardIndex() throws {
        let worker = try SharedSlots(creating: SharedSlots.gradientsMagic, slots: 4, floats: 300, what: "test-gradients")
        let g = worker.view(2)
        for i in 0..<300 { g[i] = Float(i) - 7 }
        worker.setStamp(2, 11)
        let coord = try SharedSlots(opening: worker.path, magic: SharedSlots.gradientsMagic, token: worker.token, slots: 4, floats: 300)
        XCTAssertEqual(coord.stamp(2), 11)
        XCTAssertEqual(coord.stamp(1), -1)
        XCTAssertEqual(coord.view(2).array, (0..<300).map { Float($0) - 7 })
        XCTAssertThrowsError(try SharedSlots(opening: worker.path, magic: SharedSlots.weightsMagic, token: worker.token, slots: 4, floats: 300),
                             "a gradients file is not a weights file")
    }

    func testTheMappingOutlivesItsCreatorWhileABufferReadsIt() throws {
        var writer: SharedSlots? = try weights(10)
        writer!.publishWeights(step: 0, FloatBuffer([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]))
        var reader: SharedSlots? = try SharedSlots(opening: writer!.path, magic: SharedSlots.weightsMagic, token: writer!.token, slots: 2, floats: 10)
        let buffer = try XCTUnwrap(reader!.weights(step: 0))
        writer = nil
        reader = nil
        XCTAssertEqual(buffer.array, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    }

    func testAnotherRunsAMissingOrAForeignFileIsRefusedWithTheReason() throws {
        let writer = try weights(100)
        let open = { (path: String, token: UInt64, floats: Int) in
            try SharedSlots(opening: path, magic: SharedSlots.weightsMagic, token: token, slots: 2, floats: floats)
        }
        let fifo = NSTemporaryDirectory() + "lockstep-fifo-\(getpid())"
        mkfifo(fifo, 0o600)
        defer { unlink(fifo) }
        let fifoFd = Glibc.open(fifo, O_RDWR | O_NONBLOCK)
        defer { close(fifoFd) }
        let cases: [(String, () throws -> SharedSlots, String)] = [
            ("token", { try open(writer.path, writer.token &+ 1, 100) }, "another run"),
            ("size", { try open(writer.path, writer.token, 5000) }, "not a shared mapping"),
            ("missing", { try open("/proc/self/fd/99999", writer.token, 100) }, "not a /proc/PID/fd/FD path"),
            ("no such fd", { try open("/proc/\(getpid())/fd/99999", writer.token, 100) }, "cannot open /proc/"),
            ("not /proc", { try open("/etc/passwd", writer.token, 100) }, "not a /proc/PID/fd/FD path"),
            ("a FIFO does not hang it", { try open("/proc/\(getpid())/fd/\(fifoFd)", writer.token, 100) }, "not a shared mapping"),
        ]
        for (name, make, expect) in cases {
            XCTAssertThrowsError(try make(), name) { XCTAssertTrue("\($0)".contains(expect), "\(name): \($0)") }
        }
    }
}

/// Tier 2: sockets left by a killed coordinator are removed; a live one's, and other files, are kept.
final class StaleSocketTests: XCTestCase {
    func testSocketsOfDeadCoordinatorsAreRemovedAndOthersKept() throws {
        let dir = NSTemporaryDirectory() + "lockstep-stale-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // A pid that is surely gone: a child that has exited and been reaped.
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/bin/true")
        try child.run()
        child.waitUntilExit()
        func makeSocket(_ name: String) throws -> String {
            let path = dir + "/" + name
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &addr.sun_path) { buf in
                for (i, b) in path.utf8.enumerated() where i < buf.count - 1 { buf[i] = b }
            }
            let ok = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
            XCTAssertEqual(ok, 0, "bind \(path)")
            return path
        }
        let dead = try makeSocket("lockstep-\(child.processIdentifier)-ABCDEF12.sock")
        let live = try makeSocket("lockstep-\(getpid())-ABCDEF12.sock")
        let notOurs = dir + "/lockstep-\(child.processIdentifier)-ABCDEF12.sock.txt"
        _ = FileManager.default.createFile(atPath: notOurs, contents: Data())
        let plainFile = dir + "/lockstep-\(child.processIdentifier)-12345678.sock"
        _ = FileManager.default.createFile(atPath: plainFile, contents: Data())
        XCTAssertEqual(CoordinatorServer.removeStaleSockets(in: dir), [dead])
        XCTAssertFalse(FileManager.default.fileExists(atPath: dead))
        for kept in [live, notOurs, plainFile] { XCTAssertTrue(FileManager.default.fileExists(atPath: kept), kept) }
    }
}
