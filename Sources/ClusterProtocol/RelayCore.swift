import Foundation
import Numerics
import Training

/// A relay's protocol logic as a pure value: the level of the reduction tree between hosts.
///
/// Upstream a relay is one worker of many threads: its coordinator gives it aligned blocks of
/// shards (subtrees of the fixed tree) and lone shards. Downstream it is a coordinator
/// (`CoordinatorCore`) whose round holds every shard index of the upstream round but hands
/// out only the shards it was given, in blocks that never leave the upstream block they came
/// in. When every shard of an upstream block has its answer (lone shards, or blocks its
/// workers summed), the relay adds them as the subtree's own nodes (`TreeSum.reduce(spans:)`)
/// and answers once: the coordinator's tree gets the node it would have computed itself, so
/// the bits do not depend on how many relays, hosts or threads sit below it. Relays nest.
public struct RelayCore {
    /// What the shell must do: directives for the workers below, results for the coordinator.
    public struct Output: Equatable {
        public var down: [Directive] = []
        public var up: [ShardResult] = []
        public init(down: [Directive] = [], up: [ShardResult] = []) { self.down = down; self.up = up }
    }

    /// The relay's own coordinator core, over its workers.
    public private(set) var down: CoordinatorCore
    /// The upstream round being served (its step id), the blocks and lone shards given for it
    /// and not yet answered (by first shard), the answers sent (sent again if asked again),
    /// and the shards of blocks still arriving (a block is offered whole, so it can go whole).
    public private(set) var step: Int? = nil
    var items: [Int: Item] = [:]
    var answered: [Int: ShardResult] = [:]
    var arriving: [Int: [(shard: Int, sequenceIds: [Int])]] = [:]
    /// Rounds restarted because the coordinator asked for shards in another shape.
    public private(set) var restarts = 0

    /// A block or lone shard the coordinator gave, with its shards' sequences.
    struct Item {
        let range: Range<Int>
        let parts: [(shard: Int, sequenceIds: [Int])]
    }

    public init(numerics: NumericsIdentity, welcome: Welcome, maxWorkers: Int) {
        var w = welcome
        // The relay's workers get the weights over the socket: it has no shared memory of its own.
        w.sharedWeights = ""; w.sharedToken = 0
        down = CoordinatorCore(numerics: numerics, welcome: w, minWorkers: 1, maxWorkers: maxWorkers)
        down.data = (welcome.dataHash, welcome.dataCount)
    }

    /// Work from the coordinator: a lone shard, or one shard of a block.
    public mutating func onWork(_ w: Work, now: Double) -> Output {
        var out = Output()
        if w.step != step {
            // The coordinator starts a round only once the last is answered: a new id is a new round.
            step = w.step
            items = [:]; answered = [:]; arriving = [:]
            out.down += down.beginStep(w.step, shards: Array(repeating: [], count: w.shardCount), now: now,
                                       evaluate: w.evaluate, weightsStep: w.weightsStep, offered: false)
        }
        guard w.shardCount == down.shards.count else {
            return Output(down: [.log("work for shard \(w.shard) of step \(w.step) says the round has \(w.shardCount) shards, not \(down.shards.count): dropped")])
        }
        let block = w.block
        if let done = answered[block.lowerBound], done.span == block.count {
            out.up.append(done)  // asked again (its answer was lost, or this relay said hello again)
            return out
        }
        if items[block.lowerBound]?.range == block { return out }  // in progress
        var parts = arriving[block.lowerBound, default: []]
        if !parts.contains(where: { $0.shard == w.shard }) { parts.append((w.shard, w.sequenceIds)) }
        if parts.count < block.count { arriving[block.lowerBound] = parts; return out }
        arriving[block.lowerBound] = nil
        // The coordinator gives only shards no one holds: earlier requests over these shards
        // (a block it dropped because a straggler's copy answered one of its shards alone, or
        // their answer in another shape) are void. The relay's workers may have summed them in
        // blocks that cannot be split, so the round restarts with what is still asked.
        let void = items.filter { $0.value.range.overlaps(block) }.map(\.key)
            + answered.filter { ($0.key ..< $0.key + $0.value.span).overlaps(block) }.map(\.key)
        let restarting = !void.isEmpty || block.contains(where: { down.shards[$0].offered })
        for k in void { items[k] = nil; answered[k] = nil }
        items[block.lowerBound] = Item(range: block, parts: parts)
        out.down += restarting ? restart(now: now) : down.offer(parts, bound: block, now: now)
        return out
    }

    /// Starts the round over with the requests still pending (their shards computed again).
    mutating func restart(now: Double) -> [Directive] {
        restarts += 1
        var out = down.beginStep(step!, shards: Array(repeating: [], count: down.shards.count), now: now, evaluate: down.evaluating,
                                 weightsStep: down.roundWeightsStep, offered: false)
        out.append(.log("step \(step!): the coordinator asked again for shards in another shape; this relay's round starts over with its \(items.count) pending request(s)"))
        for item in items.values.sorted(by: { $0.range.lowerBound < $1.range.lowerBound }) {
            out += down.offer(item.parts, bound: item.range, now: now)
        }
        return out
    }

    /// A message from a worker below.
    public mutating func onMessage(_ m: Message, from peer: Peer, now: Double) -> Output {
        collect(down.onMessage(m, from: peer, now: now))
    }

    public mutating func onDisconnect(_ peer: Peer, now: Double) -> Output { collect(down.onDisconnect(peer, now: now)) }
    public mutating func onTick(now: Double) -> Output { collect(down.onTick(now: now)) }
    /// Stops every worker below.
    public mutating func finish() -> [Directive] { down.finish() }

    /// The answers now complete: each given block or lone shard all of whose shards are in.
    mutating func collect(_ directives: [Directive]) -> Output {
        var out = Output(down: directives.filter { $0 != .stepComplete })
        for (start, item) in items.sorted(by: { $0.key < $1.key }) where item.range.allSatisfy({ down.shards[$0].done }) {
            let block = item.range
            let parts = block.compactMap { down.shards[$0].result }
            items[start] = nil
            let answer: ShardResult
            if parts.count == 1 {
                answer = parts[0]
            } else {
                let spans = parts.map(\.span)
                answer = ShardResult(step: parts[0].step, shard: start, lossSum: TreeSum.reduce(parts.map(\.lossSum), spans: spans),
                                     frames: parts.reduce(0) { $0 + $1.frames }, weightSum: TreeSum.reduce(parts.map(\.weightSum), spans: spans), grad: TreeSum.reduce(parts.map(\.grad), spans: spans) { _, _ in },
                                     computeSeconds: parts.reduce(0) { $0 + $1.computeSeconds }, span: block.count)
            }
            answered[start] = answer
            out.up.append(answer)
        }
        return out
    }
}
