// swift-tools-version:6.0
import PackageDescription

// Modules by what they may touch (Sources/README.md draws the graph). Only the math modules
// drop Swift's bounds and exclusivity checks in release builds: every module that parses bytes
// from outside, touches the disk or speaks to a peer keeps them, so a lying file or message is
// an error, never an out-of-bounds access. Floating-point semantics are the same either way
// (Swift never contracts or reorders float arithmetic on its own).
let math: [SwiftSetting] = [.unsafeFlags(["-Ounchecked", "-enforce-exclusivity=unchecked"], .when(configuration: .release))]

let package = Package(
    name: "Lockstep",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "coord", targets: ["coord"]),
        .executable(name: "worker", targets: ["worker"]),
        .executable(name: "lockstep-bench", targets: ["lockstep-bench"]),
        .executable(name: "lockstep-fuzz", targets: ["lockstep-fuzz"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        // `coord start --metrics-port`: the Prometheus text format, and a small HTTP server for it.
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swhitty/FlyingFox", from: "0.27.1"),
        // Structured logs of coord and worker (--log-level, --log-format).
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        // `coord export`: ONNX's protobuf schema, generated once into Sources/OnnxExport (scripts/gen-onnx-schema).
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
    ],
    targets: [
        // C libraries from Debian.
        .systemLibrary(name: "CZMQ", providers: [.apt(["libzmq3-dev"])]),
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        // Linux futexes (a header of inline wrappers; no library).
        .systemLibrary(name: "CFutex"),
        // Lockstep's own GEMM and LSTM cell (C: fixed-order fma chains, AVX2/FMA chosen at run time).
        .target(name: "CPortableGEMM", cSettings: [.unsafeFlags(["-O3", "-ffp-contract=off"])]),

        // 1. Numerics: flat buffers, GEMM, deterministic math, Philox, hashing, the reduction tree. Math.
        .target(name: "Numerics", dependencies: ["COpenBLAS", "CCrypto", "CPortableGEMM"], swiftSettings: math),
        // 2. BiLSTM: the model (config, parameter layout, packed forward/backward, loss, init). Math.
        .target(name: "BiLSTM", dependencies: ["Numerics", "CPortableGEMM"], swiftSettings: math),
        // 3. Formats: pure codecs, bytes to values and back (zip/npz/npy, safetensors, the TOML
        //    subset, TensorBoard records, the data manifest). No file system, no clock.
        .target(name: "Formats", dependencies: ["CZlib"]),
        // 4. FileIO: the one place files are opened, mapped, replaced and appended to.
        .target(name: "FileIO", dependencies: ["Formats"]),
        // 5. Datasets: datasets, the packed store and packer, batching and sharding.
        .target(name: "Datasets", dependencies: ["Formats", "FileIO", "BiLSTM", "Numerics"]),
        // 6. Training: trainer, shard computers, optimizers, schedules, clipping, checkpoints,
        //    evaluation sums, the run config.
        .target(name: "Training", dependencies: ["Datasets", "Formats", "FileIO", "BiLSTM", "Numerics"]),
        // 7. Observe: progress line, metrics lines, TensorBoard writer, the report, Prometheus.
        .target(name: "Observe", dependencies: [
            "Training", "Formats", "FileIO",
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "FlyingFox", package: "FlyingFox"),
        ]),
        // 8. ClusterProtocol: the wire codec, the coordinator and relay state machines, the numerics
        //    fingerprint. No ZeroMQ, no sockets, no threads: tested without processes.
        .target(name: "ClusterProtocol", dependencies: ["Training", "Datasets", "Formats", "BiLSTM", "Numerics"]),
        // 9. Transport: ZeroMQ, CURVE, the router shell, coordinator/worker/relay servers, shared-memory slots.
        .target(name: "Transport", dependencies: [
            "ClusterProtocol", "Observe", "Training", "Datasets", "FileIO", "Formats", "BiLSTM", "Numerics", "CZMQ", "CFutex",
        ]),

        // 10. OnnxExport: a checkpoint as an ONNX graph (ONNX's schema, written by SwiftProtobuf). Pure: bytes out.
        .target(name: "OnnxExport", dependencies: ["BiLSTM", "Numerics", .product(name: "SwiftProtobuf", package: "swift-protobuf")]),

        // Every parser of untrusted bytes as a fuzz target (lockstep-fuzz runs them; tests replay the corpus).
        .target(name: "FuzzTargets", dependencies: ["ClusterProtocol", "Training", "Datasets", "FileIO", "Formats", "BiLSTM", "Numerics"]),
        // The log handler coord and worker share.
        .target(name: "LockstepLog", dependencies: [.product(name: "Logging", package: "swift-log")]),

        .executableTarget(name: "coord", dependencies: [
            "Transport", "ClusterProtocol", "Observe", "OnnxExport", "Training", "Datasets", "FileIO", "Formats", "BiLSTM", "Numerics", "LockstepLog",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "worker", dependencies: [
            "Transport", "ClusterProtocol", "Training", "Datasets", "Formats", "Numerics", "LockstepLog",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "lockstep-bench", dependencies: [
            "Training", "Datasets", "FileIO", "Formats", "BiLSTM", "Numerics",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // scripts/fuzz builds it with libFuzzer and AddressSanitizer.
        .executableTarget(name: "lockstep-fuzz", dependencies: ["FuzzTargets"]),

        // Tests follow the modules; each file's tier (pure, in-process, process) is in its name or header.
        .testTarget(name: "NumericsTests", dependencies: ["Numerics"]),
        .testTarget(name: "BiLSTMTests", dependencies: ["BiLSTM", "Training", "Datasets", "Formats", "Numerics", "CPortableGEMM"], resources: [.copy("Fixtures")]),
        .testTarget(name: "FormatsTests", dependencies: ["Formats"]),
        .testTarget(name: "FileIOTests", dependencies: ["FileIO", "Formats"]),
        .testTarget(name: "DatasetsTests", dependencies: ["Datasets", "Training", "FileIO", "Formats", "BiLSTM", "Numerics"]),
        .testTarget(name: "TrainingTests", dependencies: ["Training", "Datasets", "FileIO", "Formats", "BiLSTM", "Numerics"], resources: [.copy("Fixtures")]),
        .testTarget(name: "ObserveTests", dependencies: ["Observe", "Training", "Formats"]),
        .testTarget(name: "ClusterProtocolTests", dependencies: ["ClusterProtocol", "Training", "Datasets", "Formats", "BiLSTM", "Numerics"]),
        .testTarget(name: "OnnxExportTests", dependencies: ["OnnxExport", "BiLSTM", "Numerics", .product(name: "SwiftProtobuf", package: "swift-protobuf")]),
        .testTarget(name: "TransportTests", dependencies: ["Transport", "ClusterProtocol", "Training", "BiLSTM", "Numerics"]),
        // Every fuzz target replays its committed corpus; the seeds are accepted.
        .testTarget(name: "FuzzTargetsTests", dependencies: ["FuzzTargets", "ClusterProtocol", "Training", "Datasets", "Formats"], resources: [.copy("FuzzCorpus")]),
        // Real coord and worker processes on loopback (kill -9, CURVE, relays, the scripts).
        .testTarget(name: "ProcessTests", dependencies: ["Transport", "ClusterProtocol", "Observe", "Training", "Datasets", "FileIO", "Formats", "BiLSTM", "Numerics"]),
    ],
    swiftLanguageModes: [.v5]
)
