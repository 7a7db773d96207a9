import BiLSTM
import Datasets
import Foundation
import Numerics
import Training

/// Lockstep's messages (DESIGN.md §4). On the wire: frame 0 is a small header
/// (`LKST`, protocol version u16, type u8, reserved u8, then the type's fields, little-endian);
/// large payloads (weights, gradients, sequences) follow as raw frames.
public enum Message: Equatable {
    case hello(Hello)
    case welcome(Welcome)
    /// Why the worker is refused; for a numerics refusal, the coordinator's `NumericsIdentity`
    /// (encoded), so a worker that can pin the coordinator's BLAS kernel does so and joins.
    case refuse(String, numerics: String = "")
    case work(Work)
    case result(ShardResult)
    case heartbeat
    case stop
    /// "I do not know you": the receiver should say hello again (e.g. after a coordinator restart).
    case reset

    /// 2: results carry the worker's compute seconds; hello carries the worker's incarnation.
    /// 3: weights and gradients may travel in shared memory (hello's `sharedMemory`, welcome's
    /// mapping and shard count, work's carriage 2, result's shared gradient).
    /// 4: hello's fingerprint is a `NumericsIdentity`; refuse carries the coordinator's; work
    /// may be a validation shard (forward only, the weights of another step), and its result
    /// carries counts (gradient carriage 2).
    /// 7: work carries its round's shard count (a relay places its block in the tree over them);
    /// welcome carries the training sequence count (ids below it are a data copy's).
    public static let protocolVersion: UInt16 = 8
    public static let magic: [UInt8] = Array("LKST".utf8)

    public var typeName: String {
        switch self {
        case .hello: "hello"
        case .welcome: "welcome"
        case .refuse: "refuse"
        case .work: "work"
        case .result: "result"
        case .heartbeat: "heartbeat"
        case .stop: "stop"
        case .reset: "reset"
        }
    }
}

public struct Hello: Equatable, Sendable {
    public var fingerprint: String
    public var blasCore: String
    public var threads: Int
    public var pid: Int
    /// Random, fixed for the worker process's life (0: none): a worker that reconnects on a new
    /// connection is known at once, and its old connection's shards go back to the queue.
    public var incarnation: UInt64
    /// The worker reached the coordinator over its local socket and can exchange weights and
    /// gradients with it through shared memory.
    public var sharedMemory: Bool
    /// The content hash of the packed data this worker reads itself (`worker join --data-root`),
    /// "" when it has none: the coordinator sends such a worker no training sequences when the
    /// hash is the run's.
    public var dataHash: String
    public init(fingerprint: String, blasCore: String, threads: Int, pid: Int, incarnation: UInt64 = 0, sharedMemory: Bool = false,
                dataHash: String = "") {
        self.fingerprint = fingerprint; self.blasCore = blasCore; self.threads = threads; self.pid = pid
        self.incarnation = incarnation; self.sharedMemory = sharedMemory; self.dataHash = dataHash
    }
}

public struct Welcome: Equatable, Sendable {
    public var runId: UInt64
    public var model: ModelConfig
    public var seed: UInt64
    /// Where local workers map the step weights (`SharedSlots`), and the token that
    /// proves it is this run's mapping; "" when the coordinator has none.
    public var sharedWeights: String
    public var sharedToken: UInt64
    /// The most shards a step has: a local worker keeps one gradient slot per shard index.
    public var maxShards: Int
    /// How the run computes products: a worker switches to it before its first shard.
    public var numerics: NumericsMode
    /// The content hash of the run's training data: a worker reads sequences from its own
    /// packed copy only when that copy's hash is this one.
    public var dataHash: String
    /// The run's training sequences: ids below this are the data copy's (a relay passes it on).
    public var dataCount: Int
    /// `--class-weights`, one per class, or nil: part of the loss every shard computes.
    public var classWeights: [Float]?
    public init(runId: UInt64, model: ModelConfig, seed: UInt64, sharedWeights: String = "", sharedToken: UInt64 = 0, maxShards: Int = 1,
                numerics: NumericsMode = .openblas, dataHash: String = "", dataCount: Int = 0, classWeights: [Float]? = nil) {
        self.runId = runId; self.model = model; self.seed = seed; self.sharedWeights = sharedWeights; self.sharedToken = sharedToken
        self.maxShards = maxShards; self.numerics = numerics; self.dataHash = dataHash; self.dataCount = dataCount
        self.classWeights = classWeights
    }
}

public struct Work: Equatable {
    public var step: Int
    public var shard: Int
    public var sequenceIds: [Int]
    /// The weights of `step`, when this worker does not have them yet.
    public var weights: FloatBuffer?
    /// The weights of `step` are in the coordinator's shared memory instead (a local worker).
    public var weightsShared: Bool
    /// Sequences this worker has not been sent before (it caches them by id).
    public var sequences: [Example]
    /// Forward only, no dropout (a validation shard): the result carries counts, not a gradient.
    public var evaluate: Bool
    /// The step whose weights to use: `step` for training; a validation round (its own `step`
    /// id) uses the weights of the step it follows.
    public var weightsStep: Int
    /// Sequences this worker will likely be given next step (the same shard index of the
    /// next step's plan), for a worker that reads its own copy to read ahead: a hint only.
    public var prefetchIds: [Int]
    /// The aligned block of shards (a subtree of the reduction tree) this shard was given with:
    /// the worker adds their gradients in that subtree's order and sends one result for the
    /// block, from `blockStart`. A span of 1 is a shard alone.
    public var blockStart: Int
    public var blockSpan: Int
    /// Shards in this round: the reduction tree is over them (a relay hands out sub-blocks of
    /// its block, which must be subtrees of that tree).
    public var shardCount: Int

    public init(step: Int, shard: Int, sequenceIds: [Int], weights: FloatBuffer?, weightsShared: Bool = false, sequences: [Example],
                evaluate: Bool = false, weightsStep: Int? = nil, prefetchIds: [Int] = [], block: Range<Int>? = nil, shardCount: Int? = nil) {
        self.step = step; self.shard = shard; self.sequenceIds = sequenceIds; self.weights = weights
        self.weightsShared = weightsShared; self.sequences = sequences
        self.evaluate = evaluate; self.weightsStep = weightsStep ?? step; self.prefetchIds = prefetchIds
        blockStart = block?.lowerBound ?? shard; blockSpan = block?.count ?? 1
        self.shardCount = shardCount ?? max(shard + 1, blockStart + blockSpan)
    }

    public var block: Range<Int> { blockStart ..< blockStart + blockSpan }

    public static func == (a: Work, b: Work) -> Bool {
        a.step == b.step && a.shard == b.shard && a.sequenceIds == b.sequenceIds && a.sequences == b.sequences
            && a.weights?.array == b.weights?.array && a.weightsShared == b.weightsShared
            && a.evaluate == b.evaluate && a.weightsStep == b.weightsStep && a.prefetchIds == b.prefetchIds
            && a.blockStart == b.blockStart && a.blockSpan == b.blockSpan && a.shardCount == b.shardCount
    }
}

public struct ShardResult: Equatable {
    public var step: Int
    public var shard: Int
    public var lossSum: Double
    public var frames: Int
    /// Σ class weight over the counted frames (`BatchResult.weightSum`).
    public var weightSum: Double
    public var grad: FloatBuffer
    /// Wall seconds the worker spent computing the shard: for the metrics, never for the math.
    public var computeSeconds: Double
    /// The gradient is in the worker's shared memory (slot `shard` of this mapping), not a frame;
    /// `grad` stays empty until the coordinator maps it.
    public var sharedGradient: SharedGradient?
    /// A validation shard's counts instead of a gradient (`EvalSums.counts`).
    public var counts: [Int]?
    /// Shards this result sums, from `shard`: more than 1 for a block (`Work.blockSpan`).
    public var span: Int

    public init(step: Int, shard: Int, lossSum: Double, frames: Int, weightSum: Double? = nil, grad: FloatBuffer, computeSeconds: Double = 0,
                sharedGradient: SharedGradient? = nil, counts: [Int]? = nil, span: Int = 1) {
        self.step = step; self.shard = shard; self.lossSum = lossSum; self.frames = frames; self.grad = grad
        self.weightSum = weightSum ?? Double(frames)
        self.computeSeconds = computeSeconds; self.sharedGradient = sharedGradient; self.counts = counts; self.span = span
    }

    public static func == (a: ShardResult, b: ShardResult) -> Bool {
        a.sameBits(as: b) && a.step == b.step && a.shard == b.shard && a.computeSeconds == b.computeSeconds
            && a.sharedGradient == b.sharedGradient
    }

    /// Bit-for-bit equality of what a duplicate computation must reproduce.
    public func sameBits(as o: ShardResult) -> Bool {
        lossSum.bitPattern == o.lossSum.bitPattern && frames == o.frames && weightSum.bitPattern == o.weightSum.bitPattern
            && grad.count == o.grad.count
            && memcmp(grad.ptr, o.grad.ptr, grad.count * 4) == 0 && counts == o.counts && span == o.span
    }
}

/// Where a local worker's gradients live: its mapping's `/proc/PID/fd/FD` path and token.
public struct SharedGradient: Equatable, Sendable {
    public var path: String
    public var token: UInt64
    public init(path: String, token: UInt64) { self.path = path; self.token = token }
}

/// Why a message was rejected; logged, never fatal.
public struct WireError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ d: String) { description = d }
}

/// Sizes the decoder accepts; anything larger is refused before it is allocated.
public struct WireLimits: Sendable {
    public var maxFrames = 4
    public var maxHeaderBytes = 1 << 20
    public var maxSequences = 1 << 16
    public var maxSequenceLength = 1 << 20
    public var maxStringBytes = 4096
    /// Float count of weights and gradients, when known (the coordinator's and a welcomed worker's).
    public var parameterCount: Int? = nil
    public var inputSize: Int? = nil
    /// The model's classes, when known (a welcomed worker's): a label outside -1..<classes is refused.
    public var classes: Int? = nil
    public init() {}
}

extension WireLimits {
    /// The most a worker accepts in one message (its `ZMQ_MAXMSGSIZE`): a shard's sequences.
    public static let workerMessageBytes = 1 << 31

    /// Every reason a run with this config and data cannot cross the wire, so a cluster run is
    /// refused at start rather than re-queueing messages its workers must reject.
    public static func problems(run: RunConfig, data: Dataset, model: ModelConfig) -> [String] {
        var p: [String] = []
        let l = WireLimits()
        if run.shardSize > l.maxSequences { p.append("--shard-size \(run.shardSize) exceeds the wire's \(l.maxSequences) sequences per message") }
        if model.classes > 1 << 20 { p.append("\(model.classes) classes exceed the wire's limit of \(1 << 20)") }
        if model.inputSize > 1 << 20 { p.append("d_in \(model.inputSize) exceeds the wire's limit of \(1 << 20)") }
        let longest = data.lengths.max() ?? 0
        if longest > l.maxSequenceLength { p.append("a sequence of \(longest) frames exceeds the wire's \(l.maxSequenceLength)") }
        // The largest shard holds at most the shard-size longest sequences.
        let top = data.lengths.sorted(by: >).prefix(run.shardSize)
        let bytes = top.reduce(0) { $0 + 16 + $1 * (model.inputSize + 1) * 4 } + l.maxHeaderBytes
        if bytes > workerMessageBytes {
            p.append("a shard of the \(run.shardSize) longest sequences is \(bytes) bytes, over the \(workerMessageBytes)-byte message a worker accepts; HINT: lower --shard-size")
        }
        return p
    }
}

struct ByteWriter {
    var bytes: [UInt8] = []
    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { bytes += [UInt8(v & 0xff), UInt8(v >> 8)] }
    mutating func u32(_ v: UInt32) { for k in 0..<4 { bytes.append(UInt8((v >> (8 * UInt32(k))) & 0xff)) } }
    mutating func u64(_ v: UInt64) { for k in 0..<8 { bytes.append(UInt8((v >> (8 * UInt64(k))) & 0xff)) } }
    mutating func int(_ v: Int) { u64(UInt64(bitPattern: Int64(v))) }
    mutating func f64(_ v: Double) { u64(v.bitPattern) }
    mutating func string(_ s: String) { let b = Array(s.utf8); u32(UInt32(b.count)); bytes += b }
}

struct ByteReader {
    let bytes: [UInt8]
    var at = 0
    init(_ b: [UInt8]) { bytes = b }
    mutating func take(_ n: Int) throws -> ArraySlice<UInt8> {
        guard n >= 0, at + n <= bytes.count else { throw WireError("message truncated at byte \(at) (wanted \(n) more of \(bytes.count))") }
        defer { at += n }
        return bytes[at..<(at + n)]
    }
    mutating func u8() throws -> UInt8 { try take(1).first! }
    mutating func u16() throws -> UInt16 { let s = try take(2); return UInt16(s[s.startIndex]) | UInt16(s[s.startIndex + 1]) << 8 }
    mutating func u32() throws -> UInt32 { let s = try take(4); return s.reversed().reduce(0) { $0 << 8 | UInt32($1) } }
    mutating func u64() throws -> UInt64 { let s = try take(8); return s.reversed().reduce(0) { $0 << 8 | UInt64($1) } }
    mutating func int(max: Int = Int.max) throws -> Int {
        let v = Int64(bitPattern: try u64())
        guard v >= 0, v <= max else { throw WireError("field value \(v) out of range 0...\(max)") }
        return Int(v)
    }
    mutating func f64() throws -> Double { Double(bitPattern: try u64()) }
    mutating func string(max: Int) throws -> String {
        let n = Int(try u32())
        guard n <= max else { throw WireError("string of \(n) bytes exceeds \(max)") }
        return String(decoding: try take(n), as: UTF8.self)
    }
    var done: Bool { at == bytes.count }
}

extension Message {
    private var typeCode: UInt8 {
        switch self {
        case .hello: 1
        case .welcome: 2
        case .refuse: 3
        case .work: 4
        case .result: 5
        case .heartbeat: 6
        case .stop: 7
        case .reset: 8
        }
    }

    /// The frames of this message.
    public func encode() -> [[UInt8]] {
        var w = ByteWriter()
        w.bytes = Message.magic
        w.u16(Message.protocolVersion)
        w.u8(typeCode)
        w.u8(0)
        var frames: [[UInt8]] = []
        switch self {
        case .hello(let h):
            w.string(h.fingerprint); w.string(h.blasCore); w.int(h.threads); w.int(h.pid); w.u64(h.incarnation)
            w.u8(h.sharedMemory ? 1 : 0); w.string(h.dataHash)
        case .welcome(let m):
            w.u64(m.runId); w.u64(m.seed)
            w.int(m.model.inputSize); w.int(m.model.hidden); w.int(m.model.layers); w.int(m.model.classes)
            w.u8(m.model.bidirectional ? 1 : 0); w.u8(m.model.arch == .split ? 1 : 0); w.u32(m.model.dropout.bitPattern)
            w.string(m.sharedWeights); w.u64(m.sharedToken); w.int(m.maxShards); w.string(m.numerics.rawValue); w.string(m.dataHash)
            w.int(m.dataCount)
            w.u32(UInt32(m.classWeights?.count ?? 0))
            for v in m.classWeights ?? [] { w.u32(v.bitPattern) }
        case .refuse(let reason, let numerics):
            w.string(String(reason.utf8.prefix(4000)) ?? ""); w.string(String(numerics.utf8.prefix(2000)) ?? "")
        case .work(let work):
            let (header, sequences) = Message.encodeWork(work, weights: work.weights != nil ? .frame : work.weightsShared ? .shared : .none)
            return [header] + (work.weights.map { [$0.byteArray] } ?? []) + [sequences]
        case .result(let r):
            w.int(r.step); w.int(r.shard); w.f64(r.lossSum); w.int(r.frames); w.f64(r.weightSum); w.u32(UInt32(r.span)); w.f64(r.computeSeconds)
            w.u8(r.counts != nil ? 2 : r.sharedGradient == nil ? 0 : 1)
            if let counts = r.counts {
                frames.append(counts.withUnsafeBytes { Array($0) })
            } else if let g = r.sharedGradient { w.string(g.path); w.u64(g.token) } else { frames.append(r.grad.byteArray) }
        case .heartbeat, .stop, .reset:
            break
        }
        return [w.bytes] + frames
    }

    /// How a work message carries the step's weights: not at all (the worker has them), as
    /// frame 1, or in the coordinator's shared memory. The header's byte after the ids.
    public enum WeightsCarriage: UInt8 { case none = 0, frame = 1, shared = 2 }

    /// A work message without its weights frame: the header says whether one follows it
    /// (frame 1), so the sender can add the step's weights without copying them per worker.
    public static func encodeWork(_ work: Work, weights: WeightsCarriage) -> (header: [UInt8], sequences: [UInt8]) {
        var w = ByteWriter()
        w.bytes = Message.magic
        w.u16(Message.protocolVersion)
        w.u8(4)
        w.u8(0)
        w.int(work.step); w.int(work.shard)
        w.u32(UInt32(work.sequenceIds.count))
        for id in work.sequenceIds { w.int(id) }
        w.u8(weights.rawValue)
        w.u8(work.evaluate ? 1 : 0); w.int(work.weightsStep)
        w.int(work.blockStart); w.u32(UInt32(work.blockSpan)); w.u32(UInt32(work.shardCount))
        w.u32(UInt32(work.prefetchIds.count))
        for id in work.prefetchIds { w.int(id) }
        var s = ByteWriter()
        s.bytes.reserveCapacity(4 + work.sequences.reduce(0) { $0 + 16 + 4 * ($1.x.count + $1.length) })
        s.u32(UInt32(work.sequences.count))
        for e in work.sequences {
            s.int(e.id); s.u32(UInt32(e.length)); s.u32(UInt32(e.x.count / max(e.length, 1)))
            e.x.withUnsafeBytes { s.bytes += $0 }
            e.y.withUnsafeBytes { s.bytes += $0 }
        }
        return (w.bytes, s.bytes)
    }

    /// Validates and decodes; throws `WireError` naming what is wrong, never traps.
    public static func decode(_ frames: [[UInt8]], limits: WireLimits) throws -> Message {
        try decode(frames.map { Frame.bytes($0) }, limits: limits)
    }

    /// The same over received frames: a weights or gradient frame that arrived as floats is
    /// used as it is.
    public static func decode(_ frames: [Frame], limits: WireLimits) throws -> Message {
        guard !frames.isEmpty else { throw WireError("empty message") }
        guard frames.count <= limits.maxFrames else { throw WireError("\(frames.count) frames (at most \(limits.maxFrames))") }
        guard frames[0].count <= limits.maxHeaderBytes else { throw WireError("header of \(frames[0].count) bytes") }
        var r = ByteReader(frames[0].bytes)
        guard Array(try r.take(4)) == magic else { throw WireError("not a Lockstep message (bad magic)") }
        let version = try r.u16()
        guard version == protocolVersion else {
            throw WireError("protocol version \(version), this build speaks \(protocolVersion)")
        }
        let type = try r.u8()
        _ = try r.u8()
        func expectFrames(_ n: Int) throws {
            guard frames.count == n else { throw WireError("\(type == 4 ? "work" : "message type \(type)") with \(frames.count) frames, expected \(n)") }
        }
        func floats(_ frame: Frame, what: String) throws -> FloatBuffer {
            guard frame.count % 4 == 0 else { throw WireError("\(what) frame of \(frame.count) bytes is not float32") }
            if let p = limits.parameterCount, frame.count != p * 4 {
                throw WireError("\(what) has \(frame.count / 4) floats, the model has \(p)")
            }
            switch frame {
            case .floats(let f): return f
            case .bytes(let bytes):
                let b = FloatBuffer(uninitializedCount: bytes.count / 4)
                bytes.withUnsafeBytes { UnsafeMutableRawPointer(b.ptr).copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
                return b
            }
        }
        let msg: Message
        switch type {
        case 1:
            try expectFrames(1)
            msg = .hello(Hello(fingerprint: try r.string(max: limits.maxStringBytes), blasCore: try r.string(max: limits.maxStringBytes),
                               threads: try r.int(max: 1024), pid: try r.int(max: Int(Int32.max)), incarnation: try r.u64(),
                               sharedMemory: try r.u8() == 1, dataHash: try r.string(max: 64)))
        case 2:
            try expectFrames(1)
            let runId = try r.u64(), seed = try r.u64()
            let model = ModelConfig(inputSize: try r.int(max: 1 << 20), hidden: try r.int(max: 4096), layers: try r.int(max: 64),
                                    classes: try r.int(max: 1 << 20), bidirectional: try r.u8() == 1,
                                    arch: try r.u8() == 1 ? .split : .stacked, dropout: Float(bitPattern: try r.u32()))
            guard model.problems().isEmpty else { throw WireError("welcome with a bad model: \(model.problems().joined(separator: "; "))") }
            let shared = try r.string(max: limits.maxStringBytes), token = try r.u64(), maxShards = try r.int(max: 1 << 20)
            let mode = try r.string(max: 64)
            guard let numerics = NumericsMode(rawValue: mode) else { throw WireError("welcome with numerics mode '\(mode)'") }
            let dataHash = try r.string(max: 64), dataCount = try r.int(max: 1 << 40)
            let weightCount = Int(try r.u32())
            guard weightCount == 0 || weightCount == model.classes else {
                throw WireError("welcome with \(weightCount) class weights for \(model.classes) classes")
            }
            let weights = try (0..<weightCount).map { _ in Float(bitPattern: try r.u32()) }
            if let problem = ClassWeights.problem(weights, classes: model.classes), weightCount > 0 {
                throw WireError("welcome with bad class weights: \(problem)")
            }
            msg = .welcome(Welcome(runId: runId, model: model, seed: seed, sharedWeights: shared, sharedToken: token, maxShards: maxShards,
                                   numerics: numerics, dataHash: dataHash, dataCount: dataCount,
                                   classWeights: weightCount == 0 ? nil : weights))
        case 3:
            try expectFrames(1)
            msg = .refuse(try r.string(max: 8192), numerics: try r.string(max: 4096))
        case 4:
            let step = try r.int(), shard = try r.int(max: 1 << 20)
            let n = Int(try r.u32())
            guard n >= 1, n <= limits.maxSequences else { throw WireError("work with \(n) sequences") }
            let ids = try (0..<n).map { _ in try r.int() }
            let code = try r.u8()
            guard let carriage = WeightsCarriage(rawValue: code) else { throw WireError("work with weights carriage \(code)") }
            let evaluateCode = try r.u8()
            guard evaluateCode <= 1 else { throw WireError("work with evaluate flag \(evaluateCode)") }
            let weightsStep = try r.int()
            let blockStart = try r.int(max: 1 << 20), blockSpan = Int(try r.u32()), shardCount = Int(try r.u32())
            guard blockSpan >= 1, blockSpan <= 1 << 20, blockStart <= shard, shard < blockStart + blockSpan else {
                throw WireError("work for shard \(shard) in a block of \(blockSpan) from \(blockStart)")
            }
            guard shardCount <= 1 << 20, blockStart + blockSpan <= shardCount,
                  blockSpan == 1 || TreeSum.isSubtree(blockStart, blockStart + blockSpan, of: shardCount) else {
                throw WireError("work for shards \(blockStart)..<\(blockStart + blockSpan) of a round of \(shardCount): not a block of its tree")
            }
            let hints = Int(try r.u32())
            guard hints <= limits.maxSequences else { throw WireError("work with \(hints) sequences to read ahead") }
            let prefetchIds = try (0..<hints).map { _ in try r.int() }
            let hasWeights = carriage == .frame
            try expectFrames(hasWeights ? 3 : 2)
            let weights = hasWeights ? try floats(frames[1], what: "weights") : nil
            var s = ByteReader(frames[frames.count - 1].bytes)
            let count = Int(try s.u32())
            guard count <= limits.maxSequences else { throw WireError("\(count) sequences in one message") }
            var seqs: [Example] = []
            for _ in 0..<count {
                let id = try s.int(), len = Int(try s.u32()), width = Int(try s.u32())
                guard len >= 1, len <= limits.maxSequenceLength else { throw WireError("sequence \(id) has length \(len)") }
                if let d = limits.inputSize, width != d { throw WireError("sequence \(id) has d_in \(width), the model takes \(d)") }
                let xb = try s.take(len * width * 4), yb = try s.take(len * 4)
                var x = [Float](repeating: 0, count: len * width), y = [Int32](repeating: 0, count: len)
                x.withUnsafeMutableBytes { $0.copyBytes(from: xb) }
                y.withUnsafeMutableBytes { $0.copyBytes(from: yb) }
                // A sequence reaches the engine only whole and sane: finite inputs, labels of the model.
                if let t = y.firstIndex(where: { v in v < -1 || (limits.classes.map { Int(v) >= $0 } ?? false) }) {
                    throw WireError("sequence \(id), frame \(t) has label \(y[t]); the model takes -1...\((limits.classes ?? 0) - 1)")
                }
                if let k = x.firstIndex(where: { !$0.isFinite }) {
                    throw WireError("sequence \(id), frame \(k / max(width, 1)) has a non-finite input (\(x[k]))")
                }
                seqs.append(Example(id: id, x: x, y: y))
            }
            guard s.done else { throw WireError("trailing bytes after the sequences") }
            msg = .work(Work(step: step, shard: shard, sequenceIds: ids, weights: weights, weightsShared: carriage == .shared, sequences: seqs,
                             evaluate: evaluateCode == 1, weightsStep: weightsStep, prefetchIds: prefetchIds,
                             block: blockStart ..< blockStart + blockSpan, shardCount: shardCount))
        case 5:
            let step = try r.int(), shard = try r.int(max: 1 << 20), loss = try r.f64(), count = try r.int(max: 1 << 40)
            let weightSum = try r.f64()
            guard weightSum.isFinite, weightSum >= 0 else { throw WireError("result with weight sum \(weightSum)") }
            let span = Int(try r.u32())
            guard span >= 1, span <= 1 << 20 else { throw WireError("result over \(span) shards") }
            let seconds = try r.f64()
            guard seconds.isFinite, (0...1e6).contains(seconds) else { throw WireError("result with compute time \(seconds) s") }
            let code = try r.u8()
            guard code <= 2 else { throw WireError("result with gradient carriage \(code)") }
            if code == 2 {
                try expectFrames(2)
                let b = frames[1].bytes
                // correct, then (cell, frames) pairs: at most one pair per counted frame.
                guard b.count % 8 == 0, b.count / 8 % 2 == 1, b.count / 8 <= 1 + 2 * min(count, 1 << 24) else {
                    throw WireError("validation counts frame of \(b.count) bytes for \(count) frames")
                }
                let counts = b.withUnsafeBytes { Array($0.bindMemory(to: Int.self)) }
                msg = .result(ShardResult(step: step, shard: shard, lossSum: loss, frames: count, weightSum: weightSum, grad: FloatBuffer(count: 0),
                                          computeSeconds: seconds, counts: counts, span: span))
                break
            }
            let shared = code == 1 ? SharedGradient(path: try r.string(max: limits.maxStringBytes), token: try r.u64()) : nil
            try expectFrames(shared == nil ? 2 : 1)
            msg = .result(ShardResult(step: step, shard: shard, lossSum: loss, frames: count, weightSum: weightSum,
                                      grad: shared == nil ? try floats(frames[1], what: "gradient") : FloatBuffer(count: 0),
                                      computeSeconds: seconds, sharedGradient: shared, span: span))
        case 6: try expectFrames(1); msg = .heartbeat
        case 7: try expectFrames(1); msg = .stop
        case 8: try expectFrames(1); msg = .reset
        default: throw WireError("unknown message type \(type)")
        }
        guard r.done else { throw WireError("\(msg.typeName) header has \(r.bytes.count - r.at) trailing bytes") }
        return msg
    }
}

/// One received frame: bytes, or (large ones) floats left where ZeroMQ put them.
public enum Frame {
    case bytes([UInt8])
    case floats(FloatBuffer)

    public var count: Int {
        switch self { case .bytes(let b): b.count; case .floats(let f): f.count * 4 }
    }

    public var bytes: [UInt8] {
        switch self { case .bytes(let b): b; case .floats(let f): f.byteArray }
    }
}
