import BiLSTM
@testable import ClusterProtocol
import Numerics
import Training
import XCTest

/// Tier 1 (pure, no sockets): relays between the coordinator and its workers, event by event.
/// A coordinator core, relay cores (one nested in another) and workers that sum their blocks
/// pass messages in memory; the step's gradient must have the bits of the tree over single
/// shards, whoever summed which subtree.
final class RelayCoreTests: XCTestCase {
    let welcome = Welcome(runId: 7, model: ModelConfig(inputSize: 2, hidden: 2, layers: 1, classes: 2), seed: 1)
    let fp = CoordinatorCoreTests.numerics.encoded
    static let floats = 64

    /// Shard `s`'s gradient in step `step`: magnitudes over 2^-20…2^20, so any other order of
    /// additions gives other bits.
    static func gradient(step: Int, shard: Int) -> FloatBuffer {
        var state = UInt64(step * 1000 + shard) &* 6364136223846793005 &+ 1442695040888963407
        func next() -> UInt64 { state = state &* 6364136223846793005 &+ 1442695040888963407; return state >> 33 }
        return FloatBuffer((0..<floats).map { _ in
            let m = Float(next() % 1_000_000) / 1_000_000 - 0.5
            return m * Float(sign: .plus, exponent: Int(next() % 41) - 20, significand: 1)
        })
    }

    /// How many floats of `a` and `b` differ in their bits.
    static func differing(_ a: FloatBuffer, _ b: FloatBuffer) -> Int {
        a.count != b.count ? max(a.count, b.count) : zip(a.array, b.array).filter { $0.bitPattern != $1.bitPattern }.count
    }

    /// A relay of step 5 (8 shards) with one worker of `threads` joined as peer 9.
    func relayWithOneWorker(threads: Int) -> (RelayCore, Peer) {
        var relay = RelayCore(numerics: CoordinatorCoreTests.numerics, welcome: welcome, maxWorkers: 4)
        let w = Peer([9])
        _ = relay.onMessage(.hello(Hello(fingerprint: fp, blasCore: "Haswell", threads: threads, pid: 9)), from: w, now: 0)
        return (relay, w)
    }

    /// Step 5's shard `s` (of 8) from the coordinator, alone or in `block`.
    func work(_ s: Int, block: Range<Int>? = nil) -> Work {
        Work(step: 5, shard: s, sequenceIds: [s], weights: nil, sequences: [], block: block, shardCount: 8)
    }

    /// The shards (and blocks) a relay gave its workers.
    func given(_ out: RelayCore.Output) -> [(Int, Range<Int>?)] {
        out.down.compactMap { if case let .sendWork(_, _, s, _, _, block) = $0 { return (s, block) } else { return nil } }
    }

    /// One process of the tree: a relay (its core) or a worker of `threads`, with its parent.
    final class Node {
        let name: String
        let peer: Peer
        let threads: Int
        var relay: RelayCore?
        var parent: Node?
        var children: [Node] = []
        /// A worker's shards of blocks still being computed, by block start.
        var blockParts: [Int: [Int: ShardResult]] = [:]
        var resultsSent = 0
        var alive = true
        init(_ name: String, _ id: UInt8, threads: Int, relay: Bool) {
            self.name = name; peer = Peer([id]); self.threads = threads
            if relay { self.relay = RelayCore(numerics: CoordinatorCoreTests.numerics, welcome: Welcome(runId: 7, model: ModelConfig(inputSize: 2, hidden: 2, layers: 1, classes: 2), seed: 1), maxWorkers: 16) }
        }
    }

    /// Messages in flight, delivered in order: down (to a node) or up (to a parent, or the top).
    enum Event { case work(Node, Work), up(Node, Message) }

    var top = CoordinatorCore(numerics: CoordinatorCoreTests.numerics,
                              welcome: Welcome(runId: 7, model: ModelConfig(inputSize: 2, hidden: 2, layers: 1, classes: 2), seed: 1),
                              minWorkers: 2, maxWorkers: 16)
    var nodes: [Node] = []
    var queue: [Event] = []
    var now = 0.0

    func hello(_ n: Node) -> Message { .hello(Hello(fingerprint: fp, blasCore: "Haswell", threads: n.threads, pid: Int(n.peer.id[0]))) }

    /// Directives from the core of `from` (nil: the top), turned into events.
    func route(_ ds: [Directive], from: Node?) {
        let round = from?.relay?.down ?? top
        for d in ds {
            guard case let .sendWork(peer, step, shard, _, _, block) = d else { continue }
            let child = nodes.first { $0.peer == peer && $0.parent === from }!
            queue.append(.work(child, Work(step: step, shard: shard, sequenceIds: round.shards[shard].sequenceIds, weights: nil, sequences: [],
                                           evaluate: round.evaluating, weightsStep: round.roundWeightsStep, block: block, shardCount: round.shards.count)))
        }
    }

    func up(_ results: [ShardResult], from n: Node) {
        for r in results { n.resultsSent += 1; queue.append(.up(n, .result(r))) }
    }

    /// Delivers every event until none is left.
    func deliver() {
        while !queue.isEmpty {
            now += 0.01
            let e = queue.removeFirst()
            switch e {
            case .work(let n, let w):
                guard n.alive else { continue }
                if n.relay != nil {
                    let out = n.relay!.onWork(w, now: now)
                    route(out.down, from: n); up(out.up, from: n)
                    continue
                }
                let r = ShardResult(step: w.step, shard: w.shard, lossSum: Double(w.shard) * 0.1 + 0.013, frames: 3,
                                    grad: RelayCoreTests.gradient(step: w.step, shard: w.shard))
                guard w.blockSpan > 1 else { up([r], from: n); continue }
                n.blockParts[w.blockStart, default: [:]][w.shard] = r
                guard n.blockParts[w.blockStart]!.count == w.blockSpan else { continue }
                let parts = w.block.map { n.blockParts[w.blockStart]![$0]! }
                n.blockParts[w.blockStart] = nil
                up([ShardResult(step: w.step, shard: w.blockStart, lossSum: TreeSum.reduce(parts.map(\.lossSum)), frames: 3 * parts.count,
                                grad: TreeSum.reduceInPlace(parts.map { $0.grad.clone() }), span: w.blockSpan)], from: n)
            case .up(let n, let m):
                guard n.alive else { continue }
                if let p = n.parent {
                    let out = p.relay!.onMessage(m, from: n.peer, now: now)
                    route(out.down, from: p); up(out.up, from: p)
                } else {
                    route(top.onMessage(m, from: n.peer, now: now), from: nil)
                }
            }
        }
    }

    func add(_ name: String, _ id: UInt8, threads: Int, relay: Bool = false, under parent: Node?) -> Node {
        let n = Node(name, id, threads: threads, relay: relay)
        n.parent = parent
        parent?.children.append(n)
        nodes.append(n)
        queue.append(.up(n, hello(n)))
        return n
    }

    /// Three levels of relays and workers of 1, 2 and 4 threads: every step's sum equals the
    /// tree over 16 single shards bit for bit, and the top takes in one gradient per relay block.
    func testRelaysNestedThreeDeepGiveTheSingleShardTreesBits() {
        let r1 = add("r1", 1, threads: 8, relay: true, under: nil)
        let r2 = add("r2", 2, threads: 8, relay: true, under: nil)
        _ = add("w1", 11, threads: 2, under: r1)
        _ = add("w2", 12, threads: 1, under: r1)
        _ = add("w3", 13, threads: 4, under: r1)
        let r3 = add("r3", 21, threads: 4, relay: true, under: r2)
        _ = add("w4", 22, threads: 2, under: r2)
        _ = add("w5", 31, threads: 2, under: r3)
        _ = add("w6", 32, threads: 1, under: r3)
        deliver()
        XCTAssertEqual(top.alive, 2)
        for step in 1...3 {
            route(top.beginStep(step, shards: (0..<16).map { [$0] }, now: now), from: nil)
            deliver()
            XCTAssertTrue(top.complete, "step \(step): every shard answered")
            let results = top.results
            XCTAssertEqual(results.map(\.span), [8, 8], "step \(step): one sum per relay block")
            let singles = (0..<16).map { RelayCoreTests.gradient(step: step, shard: $0) }
            let want = TreeSum.reduce(singles)
            let got = TreeSum.reduce(results.map(\.grad), spans: results.map(\.span)) { _, _ in }
            XCTAssertEqual(RelayCoreTests.differing(got, want), 0, "step \(step): floats whose bits differ from the single-shard tree's")
            XCTAssertEqual(TreeSum.reduce(results.map(\.lossSum), spans: results.map(\.span)).bitPattern,
                           TreeSum.reduce((0..<16).map { Double($0) * 0.1 + 0.013 }).bitPattern)
            // The test can tell: adding the shards in plain order gives other bits.
            let plain = singles.dropFirst().reduce(singles[0].clone()) { s, g in TreeSum.add(s.ptr, g.ptr, s.count); return s }
            XCTAssertGreaterThan(RelayCoreTests.differing(plain, want), 0)
        }
        XCTAssertGreaterThan(r3.resultsSent, 0, "the nested relay answered")
        XCTAssertTrue(nodes.filter { $0.relay == nil }.allSatisfy { $0.resultsSent > 0 }, "every worker had work: \(nodes.map { "\($0.name) \($0.resultsSent)" })")
    }

    /// A relay's lone shards are never handed out as one block (each is answered alone above);
    /// its block goes whole to a worker wide enough; work asked again is answered again.
    func testLoneShardsStayAloneAndARepeatIsAnsweredAgain() {
        var (relay, w) = relayWithOneWorker(threads: 4)
        let lone = given(relay.onWork(work(4), now: 1)) + given(relay.onWork(work(5), now: 1))
        XCTAssertEqual(lone.map(\.0), [4, 5])
        XCTAssertTrue(lone.allSatisfy { $0.1 == nil }, "two lone shards are not one block: \(lone)")
        let g = { (s: Int) in ShardResult(step: 5, shard: s, lossSum: 1, frames: 1, grad: RelayCoreTests.gradient(step: 5, shard: s)) }
        XCTAssertEqual(relay.onMessage(.result(g(4)), from: w, now: 2).up, [g(4)])
        XCTAssertEqual(relay.onMessage(.result(g(5)), from: w, now: 2).up, [g(5)])
        // A block of 2 arrives shard by shard: nothing goes out before the whole block is here,
        // then the idle 4-thread worker takes it whole.
        XCTAssertTrue(relay.onWork(work(0, block: 0..<2), now: 2).down.isEmpty)
        let blocks = given(relay.onWork(work(1, block: 0..<2), now: 2))
        XCTAssertEqual(blocks.map(\.0), [0, 1])
        XCTAssertTrue(blocks.allSatisfy { $0.1 == 0..<2 }, "\(blocks)")
        // A block result over a lone shard's bound is refused.
        let wide = ShardResult(step: 5, shard: 4, lossSum: 2, frames: 2, grad: FloatBuffer(count: RelayCoreTests.floats), span: 2)
        XCTAssertTrue(relay.onMessage(.result(wide), from: w, now: 3).down.contains { if case .log(let l) = $0 { return l.contains("not a block of this step") } else { return false } })
        let sum = ShardResult(step: 5, shard: 0, lossSum: 2, frames: 2, grad: TreeSum.reduce([g(0).grad, g(1).grad]), span: 2)
        XCTAssertEqual(relay.onMessage(.result(sum), from: w, now: 3).up, [sum])
        XCTAssertEqual(relay.onWork(work(4), now: 4).up, [g(4)], "asked again: answered again")
        XCTAssertEqual(relay.onWork(work(0, block: 0..<2), now: 4).up, [sum])
        // A new round starts clean.
        let fresh = relay.onWork(Work(step: 6, shard: 0, sequenceIds: [0], weights: nil, sequences: [], shardCount: 3), now: 5)
        XCTAssertEqual(relay.down.shards.count, 3)
        XCTAssertEqual(fresh.down.count, 1)
    }

    /// The coordinator drops a relay's block when a straggler's copy answered one of its shards
    /// alone, and may then ask the relay for the block's other shards in another shape: the
    /// relay starts its round over (its workers summed sub-blocks that cannot be split) and
    /// answers each request with the right bits; a pending request elsewhere is answered too.
    func testAShardAskedAgainInAnotherShapeIsAnsweredAfterARestart() {
        var (relay, w) = relayWithOneWorker(threads: 2)
        let g = { (s: Int) in RelayCoreTests.gradient(step: 5, shard: s) }
        func answer(_ block: Range<Int>) -> RelayCore.Output {
            let grad = block.count == 1 ? g(block.lowerBound) : TreeSum.reduceInPlace(block.map { g($0).clone() })
            return relay.onMessage(.result(ShardResult(step: 5, shard: block.lowerBound, lossSum: 1, frames: block.count, grad: grad, span: block.count)),
                                   from: w, now: 1)
        }
        for s in 0..<4 { _ = relay.onWork(work(s, block: 0..<4), now: 0) }
        XCTAssertEqual(given(answer(0..<2)).map(\.1), [2..<4, 2..<4], "the second sub-block once the first is in")
        let up = answer(2..<4).up
        XCTAssertEqual(up.map(\.span), [4])
        // Dropped above; shard 1 asked alone, and shard 6 given before it is still pending.
        XCTAssertEqual(given(relay.onWork(work(6), now: 2)).map(\.0), [6])
        let again = relay.onWork(work(1), now: 2)
        XCTAssertEqual(relay.restarts, 1)
        XCTAssertEqual(Set(given(again).map(\.0)), [1, 6], "both pending requests are given out again")
        XCTAssertTrue(given(again).allSatisfy { $0.1 == nil })
        XCTAssertEqual(answer(1..<2).up.map(\.shard), [1])
        let six = answer(6..<7).up
        XCTAssertEqual(six.map(\.shard), [6])
        XCTAssertEqual(RelayCoreTests.differing(six[0].grad, g(6)), 0)
        // The old block's answer is void: asked again for it, the relay computes it again.
        for s in 0..<4 { _ = relay.onWork(work(s, block: 0..<4), now: 3) }
        XCTAssertEqual(relay.restarts, 2)
    }

    /// A worker behind a relay that dies: its shards go to the relay's other worker, and the
    /// sum is still the tree's.
    func testAWorkerDyingBehindARelayChangesNoBit() {
        let r = add("r", 1, threads: 4, relay: true, under: nil)
        let dying = add("w1", 11, threads: 2, under: r)
        _ = add("w2", 12, threads: 2, under: r)
        top.minWorkers = 1
        deliver()
        // The first worker's work is lost with it.
        dying.alive = false
        route(top.beginStep(1, shards: (0..<4).map { [$0] }, now: now), from: nil)
        deliver()
        XCTAssertFalse(top.complete)
        let out = r.relay!.onDisconnect(dying.peer, now: now)
        route(out.down, from: r); up(out.up, from: r)
        deliver()
        XCTAssertTrue(top.complete)
        let want = TreeSum.reduce((0..<4).map { RelayCoreTests.gradient(step: 1, shard: $0) })
        let results = top.results
        XCTAssertEqual(results.map(\.span), [4])
        XCTAssertEqual(RelayCoreTests.differing(results[0].grad, want), 0)
    }
}
