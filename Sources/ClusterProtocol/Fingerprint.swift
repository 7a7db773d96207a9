import BiLSTM
import Datasets
import Foundation
import Numerics
import Training

/// Everything about a host that can change a bit of a shard's gradient (DESIGN.md §3.6): the
/// numerics mode, the BLAS kernel and library, the BLAS threads per shard, the build, and the
/// bits of a fixed tiny forward/backward (`probe`), which catches whatever the names miss.
/// A worker joins only when every component equals the coordinator's; a refusal names each
/// one that differs. On the wire it is one string, `key=value;…`, in hello's fingerprint.
public struct NumericsIdentity: Equatable, Sendable {
    /// Component names, in their wire order.
    public static let keys = ["mode", "blas", "blas-library", "blas-threads", "build", "probe", "probe-portable"]

    /// What must be equal for a run in `mode`: everything for OpenBLAS; for the portable mode only
    /// its probe (its products do not depend on the kernel, the build or the CPU).
    public static func compared(in mode: NumericsMode) -> [String] {
        mode == .portable ? ["probe-portable"] : ["mode", "blas", "blas-library", "blas-threads", "build", "probe"]
    }
    public var values: [String: String]

    public init(values: [String: String]) { self.values = values }

    /// This process's numerics, as its shards will be computed (BLAS threads read after
    /// `BLAS.setThreads(1)`, which every command calls before its first product).
    public static func current() -> NumericsIdentity {
        let saved = BLAS.mode
        defer { BLAS.mode = saved }
        BLAS.mode = .openblas
        let openblas = probe()
        BLAS.mode = .portable
        let portable = probe()
        return NumericsIdentity(values: [
            "mode": "openblas", "blas": BLAS.coreName, "blas-library": BLAS.libraryVersion,
            "blas-threads": "\(BLAS.threads)", "build": build, "probe": openblas, "probe-portable": portable,
        ])
    }

    /// The CPU architecture, compiler and optimisation of this build.
    public static var build: String {
        #if arch(x86_64)
        let arch = "x86_64"
        #elseif arch(arm64)
        let arch = "arm64"
        #else
        let arch = "other"
        #endif
        #if compiler(>=6.3)
        let swift = "swift>=6.3"
        #elseif compiler(>=6.2)
        let swift = "swift6.2"
        #elseif compiler(>=6.1)
        let swift = "swift6.1"
        #else
        let swift = "swift<6.1"
        #endif
        #if DEBUG
        let mode = "debug"
        #else
        let mode = "release"
        #endif
        return "\(arch) \(swift) \(mode)"
    }

    /// A fixed tiny forward/backward (dropout on, both directions, two layers), hashed.
    public static func probe() -> String {
        let model = ModelConfig(inputSize: 5, hidden: 16, layers: 2, classes: 4, bidirectional: true, arch: .stacked, dropout: 0.25)
        let data = SyntheticTask(sequences: 6, inputSize: 5, classes: 4, minLength: 1, maxLength: 9).generate(seed: 0xF1)
        let params = ParameterLayout(model).initialParameters(seed: 0xF2)
        let grads = FloatBuffer(count: params.count)
        let r = ShardComputer(model: model, seed: 0xF3).compute(params: params, examples: data.examples, step: 3, into: grads)
        var h = SHA256()
        grads.withBytes { h.update($0) }
        withUnsafeBytes(of: r.lossSum.bitPattern) { h.update($0) }
        return String(h.finalize().hexString.prefix(32))
    }

    public var encoded: String {
        NumericsIdentity.keys.map { "\($0)=\(values[$0] ?? "")" }.joined(separator: ";")
    }

    /// Reads `encoded`; a component it lacks reads as "" (so it differs, and is named).
    public init(encoded: String) {
        var v: [String: String] = [:]
        for part in encoded.split(separator: ";") {
            let kv = part.split(separator: "=", maxSplits: 1).map(String.init)
            if kv.count == 2, NumericsIdentity.keys.contains(kv[0]) { v[kv[0]] = kv[1] }
        }
        values = v
    }

    /// The components (of `keys`) that differ from `other`: (key, ours, theirs).
    public func differences(from other: NumericsIdentity, keys: [String] = NumericsIdentity.keys) -> [(key: String, mine: String, theirs: String)] {
        keys.compactMap { k in
            let a = values[k] ?? "", b = other.values[k] ?? ""
            return a == b ? nil : (k, a, b)
        }
    }

    /// Whether pinning this host's BLAS kernel to `other`'s can make the two equal: only the
    /// kernel (and so the probe) differs.
    public func onlyKernelDiffers(from other: NumericsIdentity) -> Bool {
        let keys = Set(differences(from: other, keys: NumericsIdentity.compared(in: .openblas)).map(\.key))
        return keys.contains("blas") && keys.isSubset(of: ["blas", "probe"])
    }
}

/// Which OpenBLAS x86-64 kernels this CPU can run, from the instruction-set flags the kernel
/// needs (its `cpuid` checks in OpenBLAS's `driver/others/dynamic.c`).
public enum CPUFeatures {
    /// The flags each kernel needs, as /proc/cpuinfo spells them.
    public static let kernelNeeds: [String: [String]] = [
        "Prescott": ["pni"], "Core2": ["ssse3"], "Penryn": ["ssse3", "sse4_1"], "Dunnington": ["ssse3", "sse4_1"],
        "Atom": ["ssse3"], "Nehalem": ["ssse3", "sse4_2"], "Sandybridge": ["avx"],
        "Haswell": ["avx2", "fma"], "Zen": ["avx2", "fma"],
        "SkylakeX": ["avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"],
        "Cooperlake": ["avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx512_bf16"],
        "SapphireRapids": ["avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx512_bf16", "avx512_fp16"],
        "Opteron": ["sse2"], "Opteron_SSE3": ["pni"], "Barcelona": ["sse4a"],
        "Bulldozer": ["avx", "fma4"], "Piledriver": ["avx", "fma"], "Steamroller": ["avx", "fma"], "Excavator": ["avx", "fma"],
    ]

    /// This CPU's flags (the first `flags` line of /proc/cpuinfo; empty where there is none).
    public static func current() -> Set<String> {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("flags") }),
              let colon = line.firstIndex(of: ":") else { return [] }
        return Set(line[line.index(after: colon)...].split(separator: " ").map(String.init))
    }

    /// nil when a CPU with `flags` can run `kernel`; otherwise why not.
    public static func cannotRun(_ kernel: String, flags: Set<String>) -> String? {
        #if arch(x86_64)
        guard let needs = kernelNeeds[kernel] else {
            return "the coordinator's BLAS kernel \(kernel) is not an x86-64 kernel this worker knows how to pin"
        }
        let missing = needs.filter { !flags.contains($0) }
        return missing.isEmpty ? nil : "this CPU lacks \(missing.joined(separator: ", ")), which the coordinator's \(kernel) kernel needs"
        #else
        return "pinning another BLAS kernel is implemented for x86-64 workers only"
        #endif
    }
}
