import ArgumentParser
import Datasets
import Formats
import Foundation
import LockstepLog
import Training

/// `coord data pack|verify|info`: data sets packed into hashed shard files.
struct DataCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "data",
        abstract: "Pack .npz data into a directory of hashed shards, verify a copy, or print its summary.",
        discussion: """
        A packed directory is read wherever an .npz is (--data, --valid-data, eval, predict) and \
        is the same data: its content hash is the .npz's, so a run on either ends at the same \
        SHA-256. Every shard's SHA-256 is checked before its sequences are used.
        """,
        subcommands: [Pack.self, Verify.self, Info.self])

    struct Pack: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Pack .npz files (concatenated in order) into a new directory of shards and a manifest.json.",
            discussion: """
            Streams: memory is one input's `lengths`, one padded sequence and one shard, not the \
            data, so inputs larger than memory pack. The directory appears only when complete.
            """)
        @Argument(help: "Input .npz files (x float32 [N, Lmax, d_in], lengths [N], y [N, Lmax]; y optional).")
        var inputs: [String]
        @Option(help: "The new directory to write (must not exist).")
        var out: String
        @Option(help: "Shard size in MB (10^6 bytes) of packed frames; fractions allowed (default 64).")
        var shardMb: Double = 64
        @Option(help: "Number of classes (default: the largest label + 1).")
        var classes: Int?
        @OptionGroup var log: LogOptions

        func validate() throws {
            if !(shardMb >= 0.001 && shardMb <= 4096) { throw ValidationError("--shard-mb must be in 0.001...4096 (got \(shardMb))") }
            if let c = classes, c < 2 { throw ValidationError("--classes must be at least 2 (got \(c))") }
        }

        func run() throws {
            log.setup(role: "data")
            do {
                var last = Date()
                let r = try PackedData.pack(inputs: inputs, out: out, shardBytes: Int(shardMb * 1e6), classes: classes) { done, total in
                    guard Date().timeIntervalSince(last) >= 1 else { return }
                    last = Date()
                    LockstepLog.line("pack: \(done)/\(total) sequences")
                }
                let m = r.manifest
                let mb = Double(r.inputBytes) / 1e6
                print(String(format: "packed %d sequences, %d frames (d_in %d, %d classes) into %d shards in %@: %.0f MB of input in %.1f s (%.0f MB/s), peak RSS %.0f MB, content %@",
                             m.sequences, m.frames, m.dIn, m.classes, m.shards.count, out, mb, r.seconds, mb / max(r.seconds, 1e-9),
                             Double(Memory.peakResident) / 1e6, String(m.contentSHA256.prefix(16))))
            } catch { fail(error) }
        }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Check a packed directory: every shard present, of its size, with its SHA-256; every sequence's labels and inputs; the content hash recomputed.")
        @Argument(help: "The packed directory.")
        var dir: String

        func run() throws {
            do {
                var last = Date()
                let (m, problems) = try PackedData.verify(dir) { done, total in
                    guard Date().timeIntervalSince(last) >= 1 else { return }
                    last = Date()
                    LockstepLog.line("verify: \(done)/\(total) shards")
                }
                for p in problems { print("BAD \(p)") }
                if problems.isEmpty {
                    print("ok: \(m.shards.count) shards, \(m.sequences) sequences, \(m.frames) frames; every SHA-256 matches, every label and input is valid, the content hash is the manifest's; identity \(m.identity)")
                } else {
                    throw LockstepError("\(dir): \(problems.count) of \(m.shards.count) shards are bad",
                                        hint: "copy those files again from a good copy, or repack")
                }
            } catch { fail(error) }
        }
    }

    struct Info: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a packed directory's summary (from its manifest; nothing is hashed).")
        @Argument(help: "The packed directory.")
        var dir: String
        @Flag(help: "Print one JSON object.")
        var json = false

        func run() throws {
            do {
                let m = try DataManifest.load(dir)
                let bytes = m.shards.reduce(0) { $0 + $1.bytes }
                let lens = m.lengths.sorted()
                if json {
                    let o: [String: Any] = ["format": m.format, "version": m.version, "d_in": m.dIn, "classes": m.classes, "labelled": m.labelled,
                                            "sequences": m.sequences, "frames": m.frames, "shards": m.shards.count, "bytes": bytes,
                                            "content_sha256": m.contentSHA256, "identity": m.identity,
                                            "min_length": lens.first ?? 0, "max_length": lens.last ?? 0]
                    print(String(decoding: try JSONSerialization.data(withJSONObject: o, options: [.sortedKeys]), as: UTF8.self))
                    return
                }
                print("""
                \(dir): \(m.format) version \(m.version)
                  sequences  \(m.sequences) (lengths \(lens.first ?? 0)...\(lens.last ?? 0), median \(lens.isEmpty ? 0 : lens[lens.count / 2]))
                  frames     \(m.frames)
                  d_in       \(m.dIn)
                  classes    \(m.classes)\(m.labelled ? "" : " (unlabelled)")
                  shards     \(m.shards.count), \(String(format: "%.1f", Double(bytes) / 1e6)) MB
                  content    \(m.contentSHA256)
                  identity   \(m.identity) (the manifest's own hash: a run on this copy records it)
                """)
            } catch { fail(error) }
        }
    }
}
