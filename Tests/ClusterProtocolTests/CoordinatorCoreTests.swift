import BiLSTM
@testable import ClusterProtocol
import Numerics
import Training
import XCTest

/// Tier 1 (pure, no sockets): the coordinator's protocol logic, event by event.
final class CoordinatorCoreTests: XCTestCase {
    let a = Peer([1]), b = Peer([2]), c = Peer([3])
    let welcome = Welcome(runId: 7, model: ModelConfig(inputSize: 2, hidden: 2, layers: 1, classes: 2), seed: 1)

    static let numerics = NumericsIdentity(values: ["mode": "openblas", "blas": "Haswell", "blas-library": "OpenBLAS 0.3.21",
                                                    "blas-threads": "1", "build": "x86_64 swift>=6.3 release", "probe": "f00d",
                                                    "probe-portable": "cafe"])
    let fp = CoordinatorCoreTests.numerics.encoded

    func core(min: Int = 1, max: Int = 8, inFlight: Int = 1) -> CoordinatorCore {
        CoordinatorCore(numerics: CoordinatorCoreTests.numerics, welcome: welcome, minWorkers: min, maxWorkers: max, inFlight: inFlight)
    }

    func hello(_ changes: [String: String] = [:], pid: Int = 1, incarnation: UInt64 = 0) -> Message {
        var n = CoordinatorCoreTests.numerics
        n.values.merge(changes) { $1 }
        return .hello(Hello(fingerprint: n.encoded, blasCore: n.values["blas"]!, threads: 1, pid: pid, incarnation: incarnation))
    }

    func result(_ step: Int, _ shard: Int, _ v: Float = 1) -> Message {
        .result(ShardResult(step: step, shard: shard, lossSum: Double(v), frames: 3, grad: FloatBuffer([v, v])))
    }

    func works(_ ds: [Directive]) -> [(Peer, Int, Bool, [Int])] {
        ds.compactMap { if case let .sendWork(p, _, s, w, f, _) = $0 { return (p, s, w, f) } else { return nil } }
    }

    /// A worker that computes 4 shards at once over TCP is given an aligned block of 4 shards
    /// (a subtree of the reduction tree) and answers once for it; a one-thread worker gets single
    /// shards; a shard answered inside a block is not taken again alone, and a block that
    /// overlaps a shard answered alone is dropped, its other shards going back to the queue.
    func testAMultiThreadWorkerIsGivenAnAlignedBlockAndAnswersItOnce() {
        var k = core(min: 2, inFlight: 1)
        _ = k.onMessage(.hello(Hello(fingerprint: fp, blasCore: "Haswell", threads: 4, pid: 1)), from: a, now: 0)
        _ = k.onMessage(hello(pid: 2), from: b, now: 0)
        let d = k.beginStep(1, shards: (0..<6).map { [$0] }, now: 0)
        let blocks = d.compactMap { if case let .sendWork(p, _, s, _, _, block) = $0 { return (p, s, block) } else { return nil } }
        XCTAssertEqual(blocks.filter { $0.0 == a }.map(\.1), [0, 1, 2, 3], "a block fills its 4 threads")
        XCTAssertEqual(blocks.filter { $0.0 == a && $0.2 == 0..<4 }.count, 4)
        XCTAssertEqual(blocks.filter { $0.0 == b }.map(\.1), [4])
        XCTAssertTrue(blocks.filter { $0.0 == b }.allSatisfy { $0.2 == nil })
        let sum = ShardResult(step: 1, shard: 0, lossSum: 4, frames: 12, grad: FloatBuffer([4, 4]), span: 4)
        let next = k.onMessage(.result(sum), from: a, now: 1)
        XCTAssertFalse(next.contains(.stepComplete))
        XCTAssertEqual(k.shards.map(\.done), [true, true, true, true, false, false])
        XCTAssertEqual(works(next).map(\.1), [5], "no free aligned block left: a single shard")
        XCTAssertTrue(k.onMessage(result(1, 2), from: b, now: 1).contains { if case .log(let l) = $0 { return l.contains("already summed in the block from shard 0") } else { return false } })
        // The block's first shard too (a straggler's copy): dropped, not taken for other bits.
        let first = k.onMessage(result(1, 0), from: b, now: 1)
        XCTAssertTrue(first.contains { if case .log(let l) = $0 { return l.contains("already summed in the block from shard 0") } else { return false } }, "\(first)")
        XCTAssertFalse(first.contains { if case .fatal = $0 { return true } else { return false } })
        _ = k.onMessage(result(1, 4), from: a, now: 2)
        XCTAssertTrue(k.onMessage(result(1, 5), from: b, now: 2).contains(.stepComplete))
        XCTAssertEqual(k.results.map(\.span), [4, 1, 1])
        // A block that is not a subtree of the tree over this step's shards is refused.
        _ = k.beginStep(2, shards: (0..<6).map { [$0] }, now: 3)
        let odd = ShardResult(step: 2, shard: 2, lossSum: 4, frames: 12, grad: FloatBuffer([4, 4]), span: 4)
        XCTAssertTrue(k.onMessage(.result(odd), from: a, now: 4).contains { if case .log(let l) = $0 { return l.contains("is not a block of this step") } else { return false } })
        // Shard 1 answered alone first: the block over it is dropped and 0, 2, 3 are given again.
        _ = k.onMessage(result(2, 1), from: a, now: 4)
        let late = ShardResult(step: 2, shard: 0, lossSum: 4, frames: 12, grad: FloatBuffer([4, 4]), span: 4)
        let again = k.onMessage(.result(late), from: a, now: 5)
        XCTAssertTrue(again.contains { if case .log(let l) = $0 { return l.contains("overlaps shards answered alone") } else { return false } })
        XCTAssertEqual(k.shards.map(\.done), [false, true, false, false, false, false])
        XCTAssertFalse(works(again).isEmpty, "the block's other shards went back to the queue")
    }

    /// A worker given blocks (a wide host, or a relay) takes a block when it has room for one
    /// and no single shards while a block is left for it: alone with 8 shards, a 4-thread worker
    /// answers a step with two sums, not one sum and four singles.
    func testAWideWorkerWaitsForABlockRatherThanTakingSingles() {
        var k = core(min: 1, inFlight: 2)
        _ = k.onMessage(.hello(Hello(fingerprint: fp, blasCore: "Haswell", threads: 4, pid: 1)), from: a, now: 0)
        let first = k.beginStep(1, shards: (0..<8).map { [$0] }, now: 0)
        let given = first.compactMap { if case let .sendWork(_, _, s, _, _, block) = $0 { return (s, block) } else { return nil } }
        XCTAssertEqual(given.map(\.0), [0, 1, 2, 3], "room for one more shard, but a block is left: no single")
        let sum = { (start: Int) in ShardResult(step: 1, shard: start, lossSum: 4, frames: 12, grad: FloatBuffer([4, 4]), span: 4) }
        let next = k.onMessage(.result(sum(0)), from: a, now: 1)
        let second = next.compactMap { if case let .sendWork(_, _, s, _, _, block) = $0 { return (s, block) } else { return nil } }
        XCTAssertEqual(second.map(\.0), [4, 5, 6, 7])
        XCTAssertTrue(second.allSatisfy { $0.1 == 4..<8 })
        XCTAssertTrue(k.onMessage(.result(sum(4)), from: a, now: 2).contains(.stepComplete))
        XCTAssertEqual(k.results.map(\.span), [4, 4])
        // A narrow worker still takes single shards, from a block no wide worker has taken.
        _ = k.onMessage(hello(pid: 2), from: b, now: 3)
        let both = k.beginStep(2, shards: (0..<6).map { [$0] }, now: 3).compactMap { if case let .sendWork(p, _, s, _, _, _) = $0 { return (p, s) } else { return nil } }
        XCTAssertEqual(both.filter { $0.0 == a }.map(\.1), [0, 1, 2, 3])
        XCTAssertEqual(both.filter { $0.0 == b }.map(\.1), [4, 5])
    }

    func testHelloIsWelcomedAndMismatchedNumericsAreRefusedWithTheFix() {
        var k = core()
        let ok = k.onMessage(hello(), from: a, now: 0)
        XCTAssertTrue(ok.contains(.send(a, .welcome(welcome))))
        let bad = k.onMessage(hello(["blas": "SkylakeX", "probe": "beef"]), from: b, now: 0)
        guard case let .send(p, .refuse(reason, numerics)) = bad.first else { return XCTFail("expected a refusal, got \(bad)") }
        XCTAssertEqual(p, b)
        XCTAssertEqual(numerics, fp, "a refusal carries the coordinator's numerics, so a worker can pin its kernel")
        for s in ["blas: worker SkylakeX, coordinator Haswell", "probe: worker beef, coordinator f00d", "pins it by itself", "OPENBLAS_CORETYPE=Haswell"] {
            XCTAssertTrue(reason.contains(s), reason)
        }
        XCTAssertEqual(k.alive, 1)
    }

    /// A worker whose packed copy has the run's content hash is sent no training sequence (it
    /// reads them itself), still the validation ones; another hash, or none, gets them all.
    func testAWorkerWithTheRunsDataIsSentNoTrainingSequences() {
        var k = core(min: 3, inFlight: 4)
        k.data = ("abc", 10)  // ids 0..<10 training, 10... validation
        func join(_ p: Peer, _ hash: String, _ pid: Int) -> [Directive] {
            k.onMessage(.hello(Hello(fingerprint: fp, blasCore: "Haswell", threads: 1, pid: pid, dataHash: hash)), from: p, now: 0)
        }
        XCTAssertTrue(join(a, "abc", 1).contains(.log("worker pid 1 (\(a)) joined (BLAS Haswell, reads the data from its own copy, 1 alive)")))
        XCTAssertTrue(join(b, "zzz", 2).contains { if case .log(let l) = $0 { return l.contains("its data copy differs from the run's") } else { return false } })
        _ = join(c, "", 3)
        let w = works(k.beginStep(1, shards: [[0, 1], [2, 3], [4, 5]], now: 0))
        XCTAssertEqual(w.count, 3)
        for (peer, _, _, fresh) in w {
            if peer == a { XCTAssertEqual(fresh, [], "reads its own copy") } else { XCTAssertEqual(fresh.count, 2, "\(peer) is sent its sequences") }
        }
        let v = works(k.beginStep(1 << 40 + 1, shards: [[10], [11], [12]], now: 0.1, evaluate: true, weightsStep: 1))
        XCTAssertEqual(v.first { $0.0 == a }?.3.count, 1, "validation sequences are not in the training copy: sent")
    }

    /// Each component that can change a bit, changed alone, is refused with its name and both values.
    func testEveryNumericsComponentThatDiffersIsRefusedByName() {
        for key in NumericsIdentity.compared(in: .openblas) {
            var k = core()
            let other = key == "blas-threads" ? "2" : "other-\(key)"
            let out = k.onMessage(hello([key: other]), from: b, now: 0)
            guard case let .send(_, .refuse(reason, _)) = out.first else { XCTFail("\(key): expected a refusal, got \(out)"); continue }
            let was = CoordinatorCoreTests.numerics.values[key]!
            XCTAssertTrue(reason.contains("\(key): worker \(other), coordinator \(was)"), reason)
            XCTAssertEqual(reason.components(separatedBy: ", coordinator ").count, 2, "only \(key) is named: \(reason)")
            XCTAssertEqual(k.alive, 0)
        }
        // A worker of an older protocol, or one that leaves a component out, is named too.
        var k = core()
        let out = k.onMessage(.hello(Hello(fingerprint: "mode=openblas", blasCore: "Haswell", threads: 1, pid: 9)), from: c, now: 0)
        guard case let .send(_, .refuse(reason, _)) = out.first else { return XCTFail("\(out)") }
        XCTAssertTrue(reason.contains("build: worker (none)"), reason)
    }

    /// In portable mode only the portable kernels' probe must agree: another OpenBLAS kernel,
    /// library or build joins; another portable result is refused.
    func testAPortableRunComparesOnlyThePortableProbe() {
        var w = welcome
        w.numerics = .portable
        var k = CoordinatorCore(numerics: CoordinatorCoreTests.numerics, welcome: w)
        let other = k.onMessage(hello(["blas": "SkylakeX", "probe": "beef", "build": "arm64 swift6.1 release", "blas-library": "OpenBLAS 0.3.26"]), from: a, now: 0)
        XCTAssertTrue(other.contains(.send(a, .welcome(w))), "\(other)")
        let bad = k.onMessage(hello(["probe-portable": "0bad"]), from: b, now: 0)
        guard case let .send(_, .refuse(reason, _)) = bad.first else { return XCTFail("\(bad)") }
        XCTAssertTrue(reason.contains("probe-portable: worker 0bad, coordinator cafe") && reason.contains("same Lockstep version"), reason)
    }

    func testOnlyADifferentKernelIsPinnableAndOnlyOnACPUThatCanRunIt() {
        let coord = CoordinatorCoreTests.numerics
        var kernelOnly = coord, kernelAndBuild = coord
        kernelOnly.values["blas"] = "Sandybridge"; kernelOnly.values["probe"] = "0bad"
        kernelAndBuild.values["blas"] = "Sandybridge"; kernelAndBuild.values["build"] = "x86_64 swift>=6.3 debug"
        XCTAssertTrue(kernelOnly.onlyKernelDiffers(from: coord))
        XCTAssertFalse(kernelAndBuild.onlyKernelDiffers(from: coord), "pinning cannot fix another build")
        XCTAssertFalse(coord.onlyKernelDiffers(from: coord))
        XCTAssertEqual(NumericsIdentity(encoded: kernelOnly.encoded), kernelOnly)
        let epyc: Set<String> = ["sse2", "pni", "ssse3", "sse4_1", "sse4_2", "avx", "avx2", "fma"]
        XCTAssertNil(CPUFeatures.cannotRun("Haswell", flags: epyc))
        XCTAssertNil(CPUFeatures.cannotRun("Sandybridge", flags: epyc))
        XCTAssertEqual(CPUFeatures.cannotRun("SkylakeX", flags: epyc), "this CPU lacks avx512f, avx512cd, avx512bw, avx512dq, avx512vl, which the coordinator's SkylakeX kernel needs")
        XCTAssertNotNil(CPUFeatures.cannotRun("Haswell", flags: ["sse2", "avx"]))
        XCTAssertNotNil(CPUFeatures.cannotRun("NeoverseN1", flags: epyc), "an ARM64 kernel cannot be pinned on x86-64")
        XCTAssertTrue(CPUFeatures.kernelNeeds.keys.contains(BLAS.coreName), "this machine's kernel \(BLAS.coreName) is in the table")
    }

    /// A validation round has its own id, reuses the weights of the step it follows, and takes
    /// only well-formed counts: a gradient, bad counts or a result of another round are dropped.
    func testAValidationRoundReusesTheStepsWeightsAndTakesOnlyCounts() {
        var k = core(max: 8)
        _ = k.onMessage(hello(), from: a, now: 0)
        XCTAssertEqual(works(k.beginStep(3, shards: [[0]], now: 0)).map(\.2), [true])
        _ = k.onMessage(result(3, 0), from: a, now: 0.1)
        let round = (1 << 40) + 4
        let w = works(k.beginStep(4, shards: [[1]], now: 0.2))
        XCTAssertEqual(w.map(\.2), [true], "step 4 is new weights")
        _ = k.onMessage(result(4, 0), from: a, now: 0.3)
        let v = works(k.beginStep(round, shards: [[7], [8]], now: 0.4, evaluate: true, weightsStep: 4))
        XCTAssertEqual(v.map(\.2), [false], "the validation of step 4 uses the weights a already has")
        XCTAssertTrue(k.evaluating)
        // A gradient where counts belong, counts that do not add up, and a training step's result: dropped.
        XCTAssertTrue(k.onMessage(result(round, 0), from: a, now: 0.5).contains { if case .log(let s) = $0 { s.contains("malformed validation result") } else { false } })
        let bad = ShardResult(step: round, shard: 0, lossSum: 1, frames: 3, grad: FloatBuffer(count: 0), counts: [1, 0, 2])
        _ = k.onMessage(.result(bad), from: a, now: 0.6)
        _ = k.onMessage(result(4, 0), from: a, now: 0.6)
        XCTAssertFalse(k.complete)
        let good = { (shard: Int) in ShardResult(step: round, shard: shard, lossSum: 1, frames: 3, grad: FloatBuffer(count: 0), counts: [3, 0, 1, 3, 2]) }
        _ = k.onMessage(.result(good(0)), from: a, now: 0.7)
        let out = k.onMessage(.result(good(1)), from: a, now: 0.8)
        XCTAssertTrue(out.contains(.stepComplete))
        XCTAssertEqual(k.results.map(\.counts!), [[3, 0, 1, 3, 2], [3, 0, 1, 3, 2]])
        let sums = EvalSums(classes: 2, lossSum: 1, frames: 3, counts: [3, 0, 1, 3, 2])!
        XCTAssertEqual(sums.counts, [3, 0, 1, 3, 2])
        XCTAssertEqual(sums.perClass.truth, [1, 2])
        XCTAssertEqual(sums.perClass.recall(0), 1)
        XCTAssertNil(EvalSums(classes: 2, lossSum: 1, frames: 3, counts: [2, 0, 1, 3, 2]), "correct must be the diagonal")
        XCTAssertNil(EvalSums(classes: 2, lossSum: 1, frames: 3, counts: [1, 4, 3]), "cell 4 is outside a 2×2 matrix")
        // Back to training: step 4's round has the weights the validation used.
        XCTAssertEqual(works(k.beginStep(4, shards: [[1]], now: 1)).map(\.2), [false])
        XCTAssertFalse(k.evaluating)
    }

    func testAWorkerThatCanReadSharedMemoryIsMarkedSoItsWeightsSkipTheSocket() {
        var k = core()
        _ = k.onMessage(.hello(Hello(fingerprint: fp, blasCore: "Haswell", threads: 1, pid: 1, sharedMemory: true)), from: a, now: 0)
        _ = k.onMessage(hello(pid: 2), from: b, now: 0)
        XCTAssertEqual(k.workers.map(\.sharedMemory), [true, false])
        // A worker whose mapping failed says hello again without the claim.
        _ = k.onMessage(.hello(Hello(fingerprint: fp, blasCore: "Haswell", threads: 1, pid: 1, sharedMemory: false)), from: a, now: 1)
        XCTAssertEqual(k.workers.first { $0.peer == a }?.sharedMemory, false)
    }

    func testNoWorkBeforeMinWorkersThenLowestShardsFirstWithWeightsAndSequencesOnce() {
        var k = core(min: 2)
        XCTAssertTrue(works(k.beginStep(0, shards: [[0, 1], [2], [1, 3]], now: 0)).isEmpty)
        XCTAssertTrue(works(k.onMessage(hello(), from: a, now: 0)).isEmpty, "waits for 2 workers")
        let w = works(k.onMessage(hello(pid: 2), from: b, now: 0))
        XCTAssertEqual(w.map(\.0), [a, b])
        XCTAssertEqual(w.map(\.1), [0, 1])
        XCTAssertEqual(w.map(\.2), [true, true], "first work of a step carries the weights")
        XCTAssertEqual(w[0].3, [0, 1])
        let next = works(k.onMessage(result(0, 0), from: a, now: 1))
        XCTAssertEqual(next.count, 1)
        XCTAssertEqual(next[0].1, 2)
        XCTAssertFalse(next[0].2, "a has this step's weights already")
        XCTAssertEqual(next[0].3, [3], "sequence 1 was already sent to a")
    }

    func testStepCompletesOnlyWithEveryShardAndResultsComeInShardOrder() {
        var k = core()
        _ = k.onMessage(hello(), from: a, now: 0)
        _ = k.onMessage(hello(pid: 2), from: b, now: 0)
        _ = k.beginStep(4, shards: [[0], [1]], now: 0)
        XCTAssertFalse(k.onMessage(result(4, 1, 2), from: b, now: 1).contains(.stepComplete))
        XCTAssertTrue(k.onMessage(result(4, 0, 1), from: a, now: 1).contains(.stepComplete))
        XCTAssertEqual(k.results.map(\.shard), [0, 1])
    }

    func testStaleResultsAreDroppedAndDuplicatesComparedBitForBit() {
        var k = core()
        _ = k.onMessage(hello(), from: a, now: 0)
        _ = k.onMessage(hello(pid: 2), from: b, now: 0)
        _ = k.beginStep(2, shards: [[0], [1], [2]], now: 0)
        let stale = k.onMessage(result(1, 0), from: a, now: 1)
        XCTAssertTrue(stale.contains { if case .log(let s) = $0 { return s.contains("stale") } else { return false } })
        XCTAssertNil(k.shards[0].result)
        _ = k.onMessage(result(2, 0, 1), from: a, now: 1)
        let same = k.onMessage(result(2, 0, 1), from: b, now: 1)
        XCTAssertTrue(same.contains { if case .log(let s) = $0 { return s.contains("bit for bit") } else { return false } })
        let differ = k.onMessage(result(2, 0, 1.0000001), from: b, now: 1)
        guard case .fatal(let why)? = differ.first else { return XCTFail("a mismatch must stop the run: \(differ)") }
        XCTAssertTrue(why.contains("pid 1") && why.contains("pid 2"), "names both workers: \(why)")
    }

    func testSilentWorkerIsDeclaredDeadAndItsShardGoesToAnother() {
        var k = core()
        _ = k.onMessage(hello(), from: a, now: 0)
        _ = k.onMessage(hello(pid: 2), from: b, now: 0)
        _ = k.beginStep(0, shards: [[0], [1], [2]], now: 0)
        XCTAssertEqual(k.workers.map(\.assigned), [[0], [1]])
        _ = k.onMessage(.heartbeat, from: b, now: Timing.liveness)  // any message counts
        _ = k.onMessage(result(0, 1), from: b, now: Timing.liveness)
        XCTAssertEqual(k.workers[1].assigned, [2])
        let tick = k.onTick(now: Timing.liveness + 0.1)
        XCTAssertEqual(k.alive, 1, "a was silent past the liveness window")
        XCTAssertTrue(tick.contains { if case .log(let s) = $0 { return s.contains("declared dead") } else { return false } })
        XCTAssertEqual(k.reissuedThisStep, 1)
        _ = k.onMessage(result(0, 2), from: b, now: Timing.liveness + 0.2)
        XCTAssertEqual(k.workers[0].assigned, [0], "b takes the dead worker's shard")
    }

    func testAClosedConnectionReleasesItsWorkerAtOnce() {
        var k = core()
        _ = k.onMessage(hello(), from: a, now: 0)
        _ = k.onMessage(hello(pid: 2), from: b, now: 0)
        _ = k.beginStep(0, shards: [[0], [1], [2]], now: 0)
        _ = k.onMessage(result(0, 1), from: b, now: 0.1)
        XCTAssertEqual(k.workers.map(\.assigned), [[0], [2]])
        let out = k.onDisconnect(a, now: 0.2)  // long before the liveness window
        XCTAssertEqual(k.alive, 1)
        XCTAssertTrue(out.contains { if case .log(let s) = $0 { return s.contains("closed its connection: released at once") && s.contains("shard 0") } else { return false } }, "\(out)")
        XCTAssertEqual(k.reissuedThisStep, 1)
        _ = k.onMessage(result(0, 2), from: b, now: 0.3)
        XCTAssertEqual(k.workers[0].assigned, [0], "b takes the dead worker's shard")
        XCTAssertTrue(k.onDisconnect(c, now: 0.4).isEmpty, "an unknown peer's close changes nothing")
    }

    func testAWorkerWithThreadsIsGivenThatManyMoreShardsInFlight() {
        var k = core(inFlight: 2)
        _ = k.onMessage(.hello(Hello(fingerprint: fp, blasCore: "Haswell", threads: 3, pid: 1)), from: a, now: 0)
        _ = k.onMessage(hello(pid: 2), from: b, now: 0)
        _ = k.beginStep(0, shards: (0..<8).map { [$0] }, now: 0)
        XCTAssertEqual(k.workers.map { $0.assigned.count }, [4, 2], "3 computing + 1 queued, against 1 + 1")
        XCTAssertEqual(Set(k.workers.flatMap(\.assigned)).count, 6, "each shard to one worker")
    }

    /// A link flap: the worker process comes back on a new connection (a new routing id). Its
    /// old connection is dropped at once, without waiting out the liveness window.
    func testAWorkerBackOnANewConnectionReplacesItsOldOneAtOnce() {
        var k = core()
        _ = k.onMessage(hello(pid: 1, incarnation: 41), from: a, now: 0)
        _ = k.onMessage(hello(pid: 2, incarnation: 42), from: b, now: 0)
        _ = k.beginStep(0, shards: [[0], [1], [2]], now: 0)
        XCTAssertEqual(k.workers.map(\.assigned), [[0], [1]])
        let out = k.onMessage(hello(pid: 1, incarnation: 41), from: c, now: 0.5)
        XCTAssertEqual(k.workers.map(\.peer), [b, c], "a's old connection is gone, c is the same process")
        XCTAssertTrue(out.contains { if case .log(let s) = $0 { return s.contains("reconnected as 03") && s.contains("shard 0 goes back") } else { return false } }, "\(out)")
        XCTAssertEqual(k.reissuedThisStep, 1)
        XCTAssertEqual(k.workers[1].assigned, [0], "the new connection takes the shard back")
        // Another process (another incarnation) is a new worker, as is one without an incarnation.
        _ = k.onMessage(hello(pid: 3, incarnation: 43), from: Peer([4]), now: 0.6)
        _ = k.onMessage(hello(pid: 4), from: Peer([5]), now: 0.6)
        _ = k.onMessage(hello(pid: 5), from: Peer([6]), now: 0.6)
        XCTAssertEqual(k.alive, 5)
    }

    func testStragglersShardIsAlsoIssuedToAnIdleWorker() {
        var k = core()
        _ = k.onMessage(hello(), from: a, now: 0)
        _ = k.onMessage(hello(pid: 2), from: b, now: 0)
        _ = k.beginStep(0, shards: [[0], [1]], now: 0)
        _ = k.onMessage(result(0, 1), from: b, now: 0.1)  // b idle now; a holds shard 0
        XCTAssertTrue(works(k.onTick(now: 0.2)).isEmpty, "not a straggler yet")
        let later = k.stragglerAfter + 0.5
        _ = k.onMessage(.heartbeat, from: a, now: later)
        _ = k.onMessage(.heartbeat, from: b, now: later)
        let dup = works(k.onTick(now: later))
        XCTAssertEqual(dup.map(\.0), [b])
        XCTAssertEqual(dup.map(\.1), [0])
        XCTAssertEqual(k.reissuedThisStep, 1)
        XCTAssertTrue(k.onMessage(result(0, 0), from: b, now: later + 0.1).contains(.stepComplete))
    }

    func testUnknownPeerIsAskedToSayHelloAndFullCoordinatorRefuses() {
        var k = core(max: 1)
        XCTAssertEqual(k.onMessage(.heartbeat, from: c, now: 0).first, .send(c, .reset))
        _ = k.onMessage(hello(), from: a, now: 0)
        guard case .send(_, .refuse(let why, _))? = k.onMessage(hello(pid: 2), from: b, now: 0).first else { return XCTFail() }
        XCTAssertTrue(why.contains("--max-workers"))
    }

    func testNonFiniteResultsAreKeptForTheTrainerToStopOrSkip() {
        var k = core()
        _ = k.onMessage(hello(), from: a, now: 0)
        _ = k.beginStep(9, shards: [[0]], now: 0)
        let out = k.onMessage(.result(ShardResult(step: 9, shard: 0, lossSum: 1, frames: 1, grad: FloatBuffer([.nan, 0]))), from: a, now: 1)
        XCTAssertTrue(out.contains(.stepComplete), "\(out)")
        XCTAssertTrue(k.results[0].grad[0].isNaN)
    }

    func testTwoShardsInFlightPerWorkerRoundRobinAndADeadWorkerReleasesBoth() {
        var k = core(inFlight: 2)
        _ = k.onMessage(hello(), from: a, now: 0)
        _ = k.onMessage(hello(pid: 2), from: b, now: 0)
        let w = works(k.beginStep(0, shards: [[0], [1], [2], [3], [4]], now: 0))
        XCTAssertEqual(w.map(\.1), [0, 1, 2, 3], "one each, then a second each")
        XCTAssertEqual(k.workers.map(\.assigned), [[0, 2], [1, 3]])
        XCTAssertEqual(works(k.onMessage(result(0, 1), from: b, now: 0.1)).map(\.1), [4])
        _ = k.onMessage(.heartbeat, from: b, now: Timing.liveness + 0.05)
        _ = k.onTick(now: Timing.liveness + 0.1)
        XCTAssertEqual(k.reissuedThisStep, 2, "a held two shards")
        XCTAssertEqual(k.workers.map(\.assigned), [[3, 4]])
        XCTAssertEqual(works(k.onMessage(result(0, 3), from: b, now: Timing.liveness + 0.2)).map(\.1), [0])
    }

    func testHeartbeatsGoToEveryWorkerEachInterval() {
        var k = core()
        _ = k.onMessage(hello(), from: a, now: 0)
        _ = k.onMessage(hello(pid: 2), from: b, now: 0)
        XCTAssertEqual(k.onTick(now: 1).filter { if case .send(_, .heartbeat) = $0 { return true } else { return false } }.count, 2)
        XCTAssertTrue(k.onTick(now: 1 + Timing.heartbeatInterval / 2).isEmpty)
    }
}
