import Foundation
import Numerics
import XCTest

/// Tier 3 (real processes on loopback, `kill -9`): the same final SHA-256 as `coord start --local`
/// whatever the number of workers and whatever fails.
final class ClusterProcessTests: XCTestCase {
    var h: ProcessHarness!

    override func setUp() { h = ProcessHarness() }
    override func tearDown() { h.finish(testRun) }

    func reference(steps: Int) throws -> String { try h.reference(steps: steps) }

    func coordinator(_ name: String, steps: Int, extra: [String]) throws -> Process {
        try h.start("coord", ["start", "--checkpoint-dir", h.dir + "/\(name)"] + ProcessHarness.options(steps: steps) + extra, name: name)
    }

    func worker(_ name: String, _ endpoint: String, _ extra: [String] = [], env: [String: String] = [:]) throws -> Process {
        try h.start("worker", ["join", endpoint] + extra, name: name, env: env)
    }

    func testSameBitsWithOneToFourWorkersAsSingleProcess() throws {
        let ref = try reference(steps: 16)
        for n in 1...4 {
            let c = try coordinator("spawn\(n)", steps: 16, extra: ["--spawn", "\(n)", "--bind", "tcp://127.0.0.1:0"])
            XCTAssertEqual(h.wait(c, timeout: 180), 0, h.text(h.log("spawn\(n)")))
            XCTAssertEqual(h.hash("spawn\(n)"), ref, "\(n) workers")
            let metrics = h.metricsLines(h.dir + "/spawn\(n)")
            XCTAssertEqual(metrics.count, 16)
            XCTAssertTrue(metrics.contains { $0.contains("\"clipped\":true") }, "clipping must be active in this test")
            XCTAssertTrue(metrics.last!.contains("\"workers_alive\":\(n)"))
            // Workers report their compute time: the slowest shard is at least the mean, both real, and
            // inside the step's time (which starts before its work goes out).
            for line in metrics {
                let m = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
                let slowest = try XCTUnwrap(m["shard_seconds_max"] as? Double), mean = try XCTUnwrap(m["shard_seconds_mean"] as? Double)
                XCTAssertTrue(mean > 0 && slowest >= mean && slowest < (m["seconds"] as? Double ?? 0), line)
            }
            // Spawned workers use a local socket, removed at the end.
            let log = h.text(h.log("spawn\(n)"))
            // Each spawned worker's log is where the coordinator says, in the (new) checkpoint directory.
            for i in 0..<n {
                let path = h.dir + "/spawn\(n)/worker-\(i).log"
                XCTAssertTrue(log.contains("log \(path)"), log)
                XCTAssertTrue(h.text(path).contains("joined run"), "\(path): \(h.text(path))")
                XCTAssertTrue(h.text(path).contains(sharedMemoryLine), "\(path): \(h.text(path))")
                // A step's work goes out before its weights are computed: shards wait for them in shared memory.
                XCTAssertGreaterThan(try shardsThatWaitedForWeights(path), 0, "\(path): \(h.text(path))")
                // Workers busy-wait at step barriers, unless there are more of them than cores.
                let spins = n <= ProcessInfo.processInfo.activeProcessorCount
                XCTAssertEqual(h.text(path).contains("busy-waited"), spins, "\(n) workers on \(ProcessInfo.processInfo.activeProcessorCount) cores, \(path): \(h.text(path))")
            }
            // …so no step's weights or gradients cross the socket.
            let weightBytes = 4 * (try parameters("spawn\(n)"))
            for line in metrics {
                XCTAssertLessThan(try bytes(line, "bytes_sent"), weightBytes, line)
                XCTAssertLessThan(try bytes(line, "bytes_received"), weightBytes, line)
            }
            let socket = try XCTUnwrap(log.range(of: #"on ipc://[^,]+"#, options: .regularExpression).map { String(log[$0].dropFirst(9)) }, log)
            XCTAssertFalse(FileManager.default.fileExists(atPath: socket), "\(socket) is left behind")
        }
    }

    let sharedMemoryLine = "reading the weights from the coordinator's shared memory"

    /// From a worker's last line: how many of its shards started before their weights were published.
    func shardsThatWaitedForWeights(_ log: String) throws -> Int {
        let text = h.text(log)
        guard let r = text.range(of: #"[0-9]+ started before their weights were published"#, options: .regularExpression) else { return 0 }
        return try XCTUnwrap(Int(text[r].split(separator: " ")[0]))
    }

    /// The model's parameter count, from the coordinator's summary line.
    func parameters(_ name: String) throws -> Int {
        let out = h.text(h.out(name)) + h.text(h.log(name))
        let r = try XCTUnwrap(out.range(of: #"[0-9]+ parameters"#, options: .regularExpression), out)
        return try XCTUnwrap(Int(out[r].split(separator: " ")[0]))
    }

    func bytes(_ metricsLine: String, _ key: String) throws -> Int {
        let m = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(metricsLine.utf8)) as? [String: Any])
        return try XCTUnwrap(m[key] as? Int, key)
    }

    /// Workers on the coordinator's local socket: one reading shared memory (killed, then replaced),
    /// one told to take the weights over the socket, and a spawned one. Same bits as one process.
    func testLocalWorkersOnSharedMemoryOrTheSocketGiveTheSameBitsThroughAKill() throws {
        let ref = try reference(steps: 40)
        let c = try coordinator("local", steps: 40, extra: ["--spawn", "1", "--min-workers", "3", "--bind", "tcp://127.0.0.1:0"])
        var ipc: String?
        XCTAssertTrue(h.until(30) {
            let log = self.h.text(self.h.log("local"))
            ipc = log.range(of: #"ipc://[^,]+"#, options: .regularExpression).map { String(log[$0]) }
            return ipc != nil
        })
        let ep = try XCTUnwrap(ipc, h.text(h.log("local")))
        let slow = ["--debug-delay", "0.03"]
        let shm = try worker("local-shm", ep, slow)
        _ = try worker("local-socket", ep, slow + ["--no-shared-memory"])
        let dir = h.dir + "/local"
        XCTAssertTrue(h.until(90) { self.h.metricsLines(dir).count >= 10 })
        h.kill9(shm)
        _ = try worker("local-shm2", ep, slow)
        XCTAssertEqual(h.wait(c, timeout: 180), 0, h.text(h.log("local")))
        XCTAssertEqual(h.hash("local"), ref)
        for name in ["local-shm", "local-shm2"] { XCTAssertTrue(h.text(h.log(name)).contains(sharedMemoryLine), h.text(h.log(name))) }
        XCTAssertTrue(h.text(dir + "/worker-0.log").contains(sharedMemoryLine), h.text(dir + "/worker-0.log"))
        XCTAssertFalse(h.text(h.log("local-socket")).contains(sharedMemoryLine), h.text(h.log("local-socket")))
        // The socket worker gets each step's weights as a frame and sends its one or two gradients
        // as frames; the others never do. (A step's bytes sent hold the next step's work, so the
        // last step has none.)
        let weightBytes = 4 * (try parameters("local"))
        let lines = h.metricsLines(dir).suffix(20)
        let sent = try lines.dropLast().map { try bytes($0, "bytes_sent") }, received = try lines.map { try bytes($0, "bytes_received") }
        XCTAssertTrue(sent.allSatisfy { $0 >= weightBytes && $0 < 2 * weightBytes }, "\(sent) vs \(weightBytes)")
        XCTAssertTrue(received.allSatisfy { $0 >= weightBytes && $0 < 3 * weightBytes }, "\(received) vs \(weightBytes)")
        // The shared files are unlinked as soon as they are made: a killed worker leaves none.
        let left = (try? FileManager.default.contentsOfDirectory(atPath: "/dev/shm"))?.filter { $0.hasPrefix("lockstep-") } ?? []
        XCTAssertEqual(left, [])
    }

    /// A worker over TCP gets two shards a step, the first carrying the weights: the second must
    /// not overtake it (it did once the next step's work went out before the optimizer step, and
    /// the worker had to say hello again every step).
    func testATCPWorkerGetsEachStepsWorkInOrderAndNeverHasToResync() throws {
        let ref = try reference(steps: 8)
        let c = try coordinator("tcp1", steps: 8, extra: ["--bind", "tcp://127.0.0.1:0"])
        let w = try worker("tcp1-w", try XCTUnwrap(h.endpoint("tcp1")))
        XCTAssertEqual(h.wait(c, timeout: 60), 0, h.text(h.log("tcp1")))
        XCTAssertEqual(h.wait(w, timeout: 10), 0, h.text(h.log("tcp1-w")))
        XCTAssertEqual(h.hash("tcp1"), ref)
        XCTAssertFalse(h.text(h.log("tcp1")).contains("said hello again"), h.text(h.log("tcp1")))
        XCTAssertFalse(h.text(h.log("tcp1-w")).contains("does not match"), h.text(h.log("tcp1-w")))
    }

    /// Every worker gets its `stop` when the run ends, over TCP. Closing the coordinator's socket at
    /// once lost about one `stop` in fifteen (4 workers, 4 steps): that worker then waited for a
    /// coordinator that was never coming back. Five runs of four workers: twenty chances to lose one.
    func testEveryWorkerGetsItsStopAndExitsWhenTheRunEnds() throws {
        for run in 1...5 {
            let c = try coordinator("stop\(run)", steps: 4, extra: ["--bind", "tcp://127.0.0.1:0", "--min-workers", "4"])
            let ep = try XCTUnwrap(h.endpoint("stop\(run)"))
            let workers = try (1...4).map { try worker("stop\(run)-w\($0)", ep) }
            XCTAssertEqual(h.wait(c, timeout: 60), 0, h.text(h.log("stop\(run)")))
            for (i, w) in workers.enumerated() {
                XCTAssertEqual(h.wait(w, timeout: 10), 0, "run \(run) worker \(i + 1): " + h.text(h.log("stop\(run)-w\(i + 1)")))
                XCTAssertTrue(h.text(h.log("stop\(run)-w\(i + 1)")).contains("coordinator says stop"))
            }
        }
    }

    func testWorkersKilledMidStepAndLateJoinersChangeNothing() throws {
        let ref = try reference(steps: 40)
        let c = try coordinator("chaos", steps: 40, extra: ["--bind", "tcp://127.0.0.1:0", "--min-workers", "2"])
        let ep = try XCTUnwrap(h.endpoint("chaos"))
        let slow = ["--debug-delay", "0.1"]  // each shard takes >= 100 ms: a worker almost always holds one
        let w1 = try worker("w1", ep, slow), w2 = try worker("w2", ep, slow)
        let dir = h.dir + "/chaos"
        h.until(60) { self.h.metricsLines(dir).count >= 3 }
        h.kill9(w1)
        let w3 = try worker("w3", ep, slow)
        h.until(60) { self.h.metricsLines(dir).count >= 14 }
        h.kill9(w2)
        _ = try worker("w4", ep, slow)
        h.until(60) { self.h.metricsLines(dir).count >= 22 }
        h.kill9(w3)
        XCTAssertEqual(h.wait(c, timeout: 180), 0, h.text(h.log("chaos")))
        XCTAssertEqual(h.hash("chaos"), ref)
        let log = h.text(h.log("chaos"))
        // Killed workers are known dead when their connections close, without waiting out the silence.
        XCTAssertGreaterThanOrEqual(log.components(separatedBy: "closed its connection: released at once").count - 1, 2, log)
        // A dead worker's shards come back when it is released or, sooner, as stragglers.
        XCTAssertTrue(log.contains("goes back to the queue") || log.contains("is straggling"), log)
        XCTAssertTrue(h.metricsLines(dir).contains { !$0.contains("\"shards_reissued\":0") })
    }

    func testStragglersShardsAreReissuedAndTheResultIsUnchanged() throws {
        let ref = try reference(steps: 8)
        let c = try coordinator("straggle", steps: 8, extra: ["--bind", "tcp://127.0.0.1:0", "--min-workers", "2"])
        let ep = try XCTUnwrap(h.endpoint("straggle"))
        _ = try worker("fast", ep)
        _ = try worker("slow", ep, ["--debug-delay", "4"])
        XCTAssertEqual(h.wait(c, timeout: 180), 0, h.text(h.log("straggle")))
        XCTAssertEqual(h.hash("straggle"), ref)
        XCTAssertTrue(h.text(h.log("straggle")).contains("is straggling: also issued to"), h.text(h.log("straggle")))
    }

    func testCoordinatorKill9ThenResumeReachesTheSameBits() throws {
        let ref = try reference(steps: 40)
        let first = try coordinator("resume", steps: 40, extra: ["--bind", "tcp://127.0.0.1:0", "--min-workers", "2"])
        let ep = try XCTUnwrap(h.endpoint("resume"))
        _ = try worker("r1", ep, ["--debug-delay", "0.03"])
        _ = try worker("r2", ep, ["--debug-delay", "0.03"])
        let dir = h.dir + "/resume"
        XCTAssertTrue(h.until(90) { self.h.metricsLines(dir).count >= 10 })
        h.kill9(first)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/checkpoint.safetensors"))
        let again = try h.start("coord", ["start", "--checkpoint-dir", dir, "--resume", "--bind", ep, "--min-workers", "2"]
                                    + ProcessHarness.options(steps: 40), name: "resume2")
        XCTAssertEqual(h.wait(again, timeout: 180), 0, h.text(h.log("resume2")))
        XCTAssertEqual(h.hash("resume2"), ref)
        XCTAssertEqual(h.metricsLines(dir).count, 40, "metrics has each step once after the resume")
    }

    /// `--numerics openblas`: workers started on other OpenBLAS kernels pin the coordinator's and
    /// reach the `--local` hash; a worker whose numerics differ in anything pinning cannot fix is
    /// refused by name.
    func testWorkersOnOtherKernelsPinTheCoordinatorsAndOtherNumericsAreRefusedByName() throws {
        let mine = BLAS.coreName
        let flags = CPUFeatures.current()
        let others = ["Sandybridge", "Nehalem", "Haswell", "Zen"].filter { $0 != mine && CPUFeatures.cannotRun($0, flags: flags) == nil }
        try XCTSkipIf(others.count < 2, "this CPU (\(mine)) runs fewer than two other x86-64 kernels")
        let local = try coordinator("pin-local", steps: 8, extra: ["--local", "--numerics", "openblas"])
        XCTAssertEqual(h.wait(local, timeout: 120), 0, h.text(h.log("pin-local")))
        let ref = try XCTUnwrap(h.hash("pin-local"))
        let c = try coordinator("pin", steps: 8, extra: ["--bind", "tcp://127.0.0.1:0", "--min-workers", "2", "--numerics", "openblas"])
        let ep = try XCTUnwrap(h.endpoint("pin"))
        let refused: [(name: String, args: [String], env: [String: String], says: [String])] = [
            ("probe", ["--debug-numerics", "probe=00ff00ff"], [:], ["probe: worker 00ff00ff", "same Lockstep build"]),
            ("threads", ["--debug-blas-threads", "2"], [:], ["blas-threads: worker 2, coordinator 1"]),
            ("build", ["--debug-numerics", "build=arm64 swift6.1 release"], [:], ["build: worker arm64 swift6.1 release"]),
            ("nopin", ["--no-pin"], ["OPENBLAS_CORETYPE": others[0]], ["blas: worker \(others[0]), coordinator \(mine)", "pins it by itself"]),
            ("weak", ["--debug-cpu-flags", "sse2"], ["OPENBLAS_CORETYPE": others[0]], ["cannot pin the coordinator's BLAS kernel: this CPU lacks", "blas: worker \(others[0])"]),
        ]
        let bad = try refused.map { try worker($0.name, ep, $0.args, env: $0.env) }
        for (p, r) in zip(bad, refused) {
            XCTAssertEqual(h.wait(p, timeout: 60), 2, r.name)
            let said = h.text(h.log(r.name))
            for s in ["numerics fingerprint mismatch"] + r.says { XCTAssertTrue(said.contains(s), "\(r.name): \(said)") }
            XCTAssertFalse(said.contains("restarting this worker pinned"), r.name)
        }
        let pinned = try others.prefix(2).map { try worker("on-\($0)", ep, [], env: ["OPENBLAS_CORETYPE": $0]) }
        XCTAssertEqual(h.wait(c, timeout: 180), 0, h.text(h.log("pin")))
        XCTAssertEqual(h.hash("pin"), ref, "pinned workers give the --local bits")
        for (p, kernel) in zip(pinned, others) {
            let said = h.text(h.log("on-\(kernel)"))
            XCTAssertTrue(said.contains("this worker with \(kernel): restarting this worker pinned to \(mine)"), said)
            XCTAssertTrue(said.contains("blas=\(mine);"), "after the restart it computes with \(mine): \(said)")
            XCTAssertTrue(said.contains("joined run"), said)
            XCTAssertEqual(h.wait(p, timeout: 30), 0)
        }
        XCTAssertEqual(h.text(h.log("pin")).components(separatedBy: "joined (BLAS \(mine)").count - 1, 2, h.text(h.log("pin")))
    }

    func testGarbageOnTheCoordinatorsPortChangesNothing() throws {
        let ref = try reference(steps: 16)
        let c = try coordinator("garbage", steps: 16, extra: ["--bind", "tcp://127.0.0.1:0", "--min-workers", "1"])
        let ep = try XCTUnwrap(h.endpoint("garbage"))
        _ = try worker("g1", ep, ["--debug-delay", "0.05"])
        // Raw bytes on the TCP port (not even ZMTP).
        for k in 0..<5 {
            let fd = h.rawConnect(ep)
            guard fd >= 0 else { continue }
            let junk = [UInt8](repeating: UInt8(k * 37 & 0xff), count: 300)
            _ = junk.withUnsafeBytes { write(fd, $0.baseAddress, 300) }
            close(fd)
        }
        // Well-framed ZeroMQ messages that are not valid Lockstep messages.
        // They come from this user, with the run's join key: the garbage reaches the decoder.
        let key = try XCTUnwrap(try JoinKey.read(try XCTUnwrap(JoinKey.path(endpoint: ep))))
        let ctx = ZMQContext()
        let s = try ZMQSocket(ctx, .dealer)
        s.curveClient(key.worker, serverKey: key.serverPublic)
        try s.connect(ep)
        let result = Message.result(ShardResult(step: 0, shard: 0, lossSum: 1, frames: 1, grad: FloatBufferHelper.make(7))).encode()
        var wrongVersion = Message.heartbeat.encode(); wrongVersion[0][4] = 42
        let junk: [[[UInt8]]] = [[[1, 2, 3]], [Array("LKST".utf8)], wrongVersion, [Array(result[0].prefix(9))], result,
                                 Array(repeating: [0], count: 40), [Array(repeating: 0xff, count: 70_000)]]
        for _ in 0..<3 { for j in junk { s.send(j) } ; Thread.sleep(forTimeInterval: 0.1) }
        // Floods: 200,000 frames in one message, and a frame far over the size limit.
        s.send(Array(repeating: [7], count: 200_000))
        let huge = try ZMQSocket(ctx, .dealer)
        huge.curveClient(key.worker, serverKey: key.serverPublic)
        try huge.connect(ep)
        huge.send([Array(repeating: 0xAB, count: 48 << 20)])
        XCTAssertEqual(h.wait(c, timeout: 180), 0, h.text(h.log("garbage")))
        XCTAssertEqual(h.hash("garbage"), ref)
        XCTAssertTrue(h.text(h.log("garbage")).contains("rejected"), h.text(h.log("garbage")))
        XCTAssertTrue(h.text(h.log("garbage")).contains("frames"), "the 200,000-frame message was refused")
    }
}

import Numerics
import ClusterProtocol
import Transport
enum FloatBufferHelper { static func make(_ n: Int) -> FloatBuffer { FloatBuffer(count: n) } }
