import BiLSTM
@testable import Datasets
@testable import Formats
import Foundation
@testable import Training
import XCTest

/// Tier 3: `coord data pack|verify|info` with the real binary; a packed directory trains to
/// the `.npz`'s hash locally, on workers and across a resume; an input larger than a memory
/// limit packs inside it.
final class PackedDataProcessTests: XCTestCase {
    var h: ProcessHarness!
    override func setUp() { h = ProcessHarness() }
    override func tearDown() { h.finish(testRun) }

    @discardableResult
    func run(_ name: String, _ args: [String], expect code: Int32 = 0) throws -> String {
        let p = try h.start("coord", args, name: name)
        XCTAssertEqual(h.wait(p, timeout: 180), code, h.text(h.log(name)))
        return h.text(h.out(name)) + h.text(h.log(name))
    }

    let model = ["--hidden", "16", "--batch-size", "16", "--shard-size", "4", "--dropout", "0.3", "--max-norm", "0.05", "--seed", "5", "--checkpoint-every", "4"]

    func testPackedDataTrainsToTheNpzHashLocallyOnWorkersAndAcrossAResume() throws {
        let set = SyntheticTask(sequences: 96, inputSize: 16, classes: 8, minLength: 5, maxLength: 25).generate(seed: 5)
        let npz = h.dir + "/train.npz", packed = h.dir + "/packed"
        try Data(set.npzBytes(deflate: true)).write(to: URL(fileURLWithPath: npz))
        let pack = try run("pack", ["data", "pack", npz, "--out", packed, "--shard-mb", "0.005"])
        XCTAssertTrue(pack.contains("packed 96 sequences") && pack.contains("MB/s") && pack.contains("peak RSS"), pack)
        let m = try DataManifest.load(packed)
        XCTAssertGreaterThan(m.shards.count, 4, "several shards")
        XCTAssertTrue(try run("verify", ["data", "verify", packed]).contains("every SHA-256 matches"))
        let info = try run("info", ["data", "info", packed, "--json"])
        let o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(h.text(h.out("info")).utf8)) as? [String: Any], info)
        XCTAssertEqual(o["sequences"] as? Int, 96)
        XCTAssertEqual(o["content_sha256"] as? String, set.hash)
        XCTAssertEqual(o["identity"] as? String, m.identity, "info prints the identity a run on this copy records")

        let base = ["start", "--steps", "12"] + model
        try run("npz", base + ["--local", "--data", npz, "--checkpoint-dir", h.dir + "/npz"])
        let reference = try XCTUnwrap(h.hash("npz"))
        try run("local", base + ["--local", "--data", packed, "--checkpoint-dir", h.dir + "/local"])
        XCTAssertEqual(h.hash("local"), reference, "packed == .npz, --local")
        try run("spawn2", base + ["--spawn", "2", "--data", packed, "--checkpoint-dir", h.dir + "/spawn2"])
        XCTAssertEqual(h.hash("spawn2"), reference, "packed on 2 workers == .npz --local")
        // The same data under another form: a run started on the .npz resumes on the directory.
        try run("half", ["start", "--steps", "6"] + model + ["--local", "--data", npz, "--checkpoint-dir", h.dir + "/half"])
        try run("rest", base + ["--local", "--data", packed, "--checkpoint-dir", h.dir + "/half", "--resume"])
        XCTAssertEqual(h.hash("rest"), reference, "resumed on the packed copy")
        // A packed validation set is read on demand, to the .npz's figures, locally and on workers.
        let valid = SyntheticTask(sequences: 40, inputSize: 16, classes: 8, minLength: 5, maxLength: 25).generate(seed: 5, firstId: 96, count: 40)
        try Data(valid.npzBytes()).write(to: URL(fileURLWithPath: h.dir + "/valid.npz"))
        try run("pack-valid", ["data", "pack", h.dir + "/valid.npz", "--out", h.dir + "/vpacked", "--shard-mb", "0.005"])
        try run("v-npz", base + ["--local", "--data", npz, "--valid-data", h.dir + "/valid.npz", "--valid-every", "4", "--checkpoint-dir", h.dir + "/v-npz"])
        let vPacked = try run("v-packed", base + ["--spawn", "2", "--data", packed, "--valid-data", h.dir + "/vpacked", "--valid-every", "4",
                                                  "--checkpoint-dir", h.dir + "/v-packed"])
        XCTAssertTrue(vPacked.contains("validation: \(h.dir)/vpacked (packed, read on demand), 40 sequences"), vPacked)
        XCTAssertEqual(h.hash("v-packed"), h.hash("v-npz"))
        func validationFigures(_ dir: String) -> [String] {
            h.metricsLines(dir).compactMap { l -> String? in
                guard let o = try? JSONSerialization.jsonObject(with: Data(l.utf8)) as? [String: Any], o["valid_loss"] != nil else { return nil }
                return o.filter { $0.key.hasPrefix("valid_") }.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            }
        }
        XCTAssertEqual(validationFigures(h.dir + "/v-npz").count, 3, "after steps 4, 8 and 12 (the end)")
        XCTAssertEqual(validationFigures(h.dir + "/v-packed"), validationFigures(h.dir + "/v-npz"))
        // eval reads it too, to the same figures.
        let e1 = try run("eval-npz", ["eval", "--checkpoint", h.dir + "/npz/checkpoint.safetensors", "--data", npz, "--json"])
        let e2 = try run("eval-packed", ["eval", "--checkpoint", h.dir + "/npz/checkpoint.safetensors", "--data", packed, "--json"])
        func figures(_ name: String) throws -> NSDictionary {
            let o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(h.text(h.out(name)).utf8)) as? [String: Any], e1 + e2)
            return o.filter { $0.key != "data" } as NSDictionary
        }
        XCTAssertEqual(try figures("eval-npz"), try figures("eval-packed"), "every figure but the data's path")
        // A corrupted shard stops the run before training, naming the file.
        let victim = packed + "/" + m.shards[1].file
        var bytes = try Data(contentsOf: URL(fileURLWithPath: victim))
        bytes[0] ^= 0x80
        try bytes.write(to: URL(fileURLWithPath: victim))
        let bad = try run("bad", base + ["--local", "--data", packed, "--checkpoint-dir", h.dir + "/bad"], expect: 1)
        XCTAssertTrue(bad.contains(m.shards[1].file) && bad.contains("corrupted") && bad.contains("HINT:"), bad)
        let verify = try run("verify-bad", ["data", "verify", packed], expect: 1)
        XCTAssertTrue(verify.contains("BAD \(victim)") && verify.contains("1 of \(m.shards.count) shards are bad"), verify)
    }

    func bytesSent(_ dir: String) -> Int {
        h.metricsLines(dir).compactMap { l -> Int? in
            guard let o = try? JSONSerialization.jsonObject(with: Data(l.utf8)) as? [String: Any], o["loss"] != nil else { return nil }
            return o["bytes_sent"] as? Int
        }.reduce(0, +)
    }

    /// Workers with `--data-root` read the sequences from their own copy: the coordinator sends
    /// them none. A copy whose shards are all damaged falls back at its first read, a copy of
    /// other data is never used; every run ends at the `--local` hash.
    func testWorkersReadTheirOwnCopyAndABadOrForeignCopyFallsBack() throws {
        let task = SyntheticTask(sequences: 96, inputSize: 16, classes: 8, minLength: 5, maxLength: 25)
        let set = task.generate(seed: 5)
        let npz = h.dir + "/train.npz"
        try Data(set.npzBytes()).write(to: URL(fileURLWithPath: npz))
        for copy in ["good", "bad"] { try run("pack-\(copy)", ["data", "pack", npz, "--out", h.dir + "/" + copy, "--shard-mb", "0.01"]) }
        let bad = try DataManifest.load(h.dir + "/bad")
        for s in bad.shards {  // every shard of this copy damaged: whichever sequence it reads first fails
            let f = h.dir + "/bad/" + s.file
            var b = try Data(contentsOf: URL(fileURLWithPath: f)); b[b.count - 1] ^= 1
            try b.write(to: URL(fileURLWithPath: f))
        }
        let other = SyntheticTask(sequences: 96, inputSize: 16, classes: 8, minLength: 5, maxLength: 25).generate(seed: 6)
        try Data(other.npzBytes()).write(to: URL(fileURLWithPath: h.dir + "/other.npz"))
        try run("pack-other", ["data", "pack", h.dir + "/other.npz", "--out", h.dir + "/other"])
        let base = ["start", "--steps", "12", "--data", h.dir + "/good"] + model
        try run("ref", base + ["--local", "--checkpoint-dir", h.dir + "/ref"])
        let reference = try XCTUnwrap(h.hash("ref"))
        func cluster(_ name: String, roots: [String?]) throws -> String {
            let c = try h.start("coord", base + ["--bind", "tcp://127.0.0.1:0", "--min-workers", "\(roots.count)", "--checkpoint-dir", h.dir + "/" + name], name: name)
            let ep = try XCTUnwrap(h.endpoint(name))
            let ws = try roots.enumerated().map { k, r in
                // The first worker with a copy keeps no sequences in memory, the second at most 1 MiB.
                try h.start("worker", ["join", ep] + (r.map { ["--data-root", h.dir + "/" + $0, "--cache-mb", "\(k)"] } ?? []), name: "\(name)-w\(k)")
            }
            XCTAssertEqual(h.wait(c, timeout: 120), 0, h.text(h.log(name)))
            for (k, w) in ws.enumerated() { XCTAssertEqual(h.wait(w, timeout: 20), 0, h.text(h.log("\(name)-w\(k)"))) }
            XCTAssertEqual(h.hash(name), reference, h.text(h.log(name)))
            return h.text(h.log(name))
        }
        let noRoot = try h.start("worker", ["join", "127.0.0.1:1", "--data-root", h.dir + "/nowhere"], name: "noroot")
        XCTAssertEqual(h.wait(noRoot, timeout: 20), 1)
        XCTAssertTrue(h.text(h.log("noroot")).contains("--data-root: ") && h.text(h.log("noroot")).contains("HINT: give the directory"), h.text(h.log("noroot")))
        let sent = try cluster("sent", roots: [nil, nil])
        XCTAssertFalse(sent.contains("reads the data"), sent)
        let own = try cluster("own", roots: ["good", "good"])
        XCTAssertEqual(own.components(separatedBy: "reads the data from its own copy").count - 1, 2, own)
        for (k, bound) in ["0.0 MB", "1.0 MB"].enumerated() {
            let w = h.text(h.log("own-w\(k)"))
            XCTAssertTrue(w.contains(" from the cache (") && w.contains("of \(bound))") && w.contains("peak RSS"), w)
        }
        XCTAssertTrue(h.text(h.log("own-w0")).contains(" 0 from the cache (0.0 of 0.0 MB)"), h.text(h.log("own-w0")))
        // The coordinator hinted the next step's sequences to each worker reading its copy.
        for k in 0..<2 {
            let w = h.text(h.log("own-w\(k)"))
            let hinted = w.range(of: #"(\d+) hinted ahead"#, options: .regularExpression).map { Int(w[$0].split(separator: " ")[0])! }
            XCTAssertGreaterThan(hinted ?? 0, 0, w)
        }
        let badCache = try h.start("worker", ["join", "127.0.0.1:1", "--data-root", h.dir + "/good", "--cache-mb=-1"], name: "badcache")
        XCTAssertNotEqual(h.wait(badCache, timeout: 20), 0)
        XCTAssertTrue(h.text(h.log("badcache")).contains("--cache-mb must be in"), h.text(h.log("badcache")))
        let shards = try DataManifest.load(h.dir + "/good").shards.count
        XCTAssertTrue(own.contains("this process read 0 of \(shards) shards"), "the coordinator read no sequence: \(own)")
        XCTAssertTrue(sent.contains("this process read \(shards) of \(shards) shards"), "it sent every sequence once: \(sent)")
        let dataBytes = set.frames * (16 * 4 + 4)
        print("bytes sent over 12 steps: \(bytesSent(h.dir + "/sent")) with sequences, \(bytesSent(h.dir + "/own")) with both workers reading their copies (the data: \(dataBytes))")
        XCTAssertLessThanOrEqual(bytesSent(h.dir + "/own") + dataBytes / 2, bytesSent(h.dir + "/sent"), "the sequences did not cross the wire")
        XCTAssertTrue(h.text(h.log("ref")).contains("this process read \(shards) of \(shards) shards"), "--local reads them all on demand")
        let mixed = try cluster("mixed", roots: ["good", "bad", "other"])
        XCTAssertTrue(mixed.contains("its data copy differs from the run's"), mixed)
        let badLog = h.text(h.log("mixed-w1"))
        XCTAssertTrue(badLog.contains("corrupted") && badLog.contains("now takes its sequences from the coordinator"), badLog)
    }

    /// A memory cgroup (v1) of 96 MB where the machine allows one: a 200 MB input packs inside
    /// it and trains there from the packed copy, while reading the same file whole
    /// (`coord start --data big.npz`) is refused there. Without
    /// cgroups, the pack's own peak RSS is still held below half the input.
    func testAnInputLargerThanTheMemoryLimitPacks() throws {
        let n = 2000, lmax = 250, dIn = 100
        var rng = SystemRandomNumberGenerator()
        let examples = (0..<n).map { i -> Example in
            let len = 20 + Int(rng.next() % UInt64(lmax - 19))
            return Example(id: i, x: (0..<(len * dIn)).map { Float($0 % 97) * 0.01 }, y: (0..<len).map { Int32($0 % 5) })
        }
        var set = Dataset(examples: examples, inputSize: dIn, classes: 5, source: "big")
        set.paddedLength = lmax
        let npz = h.dir + "/big.npz"
        try Data(set.npzBytes()).write(to: URL(fileURLWithPath: npz))
        let inputBytes = try FileManager.default.attributesOfItem(atPath: npz)[.size] as! Int
        XCTAssertGreaterThan(inputBytes, 190_000_000)
        let limit = 96_000_000
        let cgroup = "/sys/fs/cgroup/memory/lockstep-test-\(getpid())-\(UUID().uuidString.prefix(8))"
        let contained = (try? FileManager.default.createDirectory(atPath: cgroup, withIntermediateDirectories: false)) != nil
            && (try? "\(limit)".write(toFile: cgroup + "/memory.limit_in_bytes", atomically: false, encoding: .utf8)) != nil
        defer { if contained { rmdir(cgroup) } }
        func inside(_ name: String, _ args: [String]) throws -> (Int32?, String) {
            let quoted = args.map { "'\($0)'" }.joined(separator: " ")
            let script = contained ? "echo $$ > \(cgroup)/cgroup.procs && exec '\(h.bin)/coord' \(quoted)" : "exec '\(h.bin)/coord' \(quoted)"
            let p = try h.start(path: "/bin/sh", ["-c", script], name: name)
            return (h.wait(p, timeout: 300), h.text(h.out(name)) + h.text(h.log(name)))
        }
        let (code, out) = try inside("pack", ["data", "pack", npz, "--out", h.dir + "/packed", "--shard-mb", "16"])
        XCTAssertEqual(code, 0, out)
        let rss = try XCTUnwrap(out.range(of: #"peak RSS (\d+) MB"#, options: .regularExpression).map { Int(out[$0].split(separator: " ")[2])! }, out)
        print("packing \(inputBytes / 1_000_000) MB: peak RSS \(rss) MB\(contained ? " inside a \(limit / 1_000_000) MB cgroup" : " (no cgroup here)")")
        XCTAssertLessThan(rss * 1_000_000, inputBytes / 2, out)
        XCTAssertEqual(try DataManifest.load(h.dir + "/packed").contentSHA256, set.hash)
        // Training on the packed copy reads it on demand: it fits where the file does not.
        let (trained, log) = try inside("train", ["start", "--local", "--data", h.dir + "/packed", "--steps", "2", "--batch-size", "16",
                                                  "--shard-size", "16", "--checkpoint-dir", h.dir + "/train"])
        XCTAssertEqual(trained, 0, log)
        XCTAssertTrue(log.contains("final weights sha256"), log)
        // So does evaluating it, batch by batch.
        let (evaluated, text) = try inside("eval", ["eval", "--checkpoint", h.dir + "/train/checkpoint.safetensors", "--data", h.dir + "/packed",
                                                     "--batch-size", "16", "--json"])
        XCTAssertEqual(evaluated, 0, text)
        XCTAssertTrue(text.contains("\"frames\":\(set.frames)"), text)
        if contained {
            let (whole, text) = try inside("whole", ["start", "--local", "--data", npz, "--steps", "1", "--checkpoint-dir", h.dir + "/whole"])
            XCTAssertNotEqual(whole, 0, "reading the file whole fits in the limit, so the limit proves nothing: \(text)")
            XCTAssertTrue(text.contains("more than this process may use"), "refused with the reason, not killed: \(text)")
        } else {
            print("no writable memory cgroup here: the limit part was not run")
        }
    }
}
