// swift-tools-version:6.0
import PackageDescription

// Release builds drop bounds and exclusivity checks on the math hot paths; floating-point
// semantics are unchanged (Swift never contracts or reorders float arithmetic on its own).
let fast: [SwiftSetting] = [.unsafeFlags(["-Ounchecked", "-enforce-exclusivity=unchecked"], .when(configuration: .release))]

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
    ],
    targets: [
        // C libraries from Debian.
        .systemLibrary(name: "CZMQ", providers: [.apt(["libzmq3-dev"])]),
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        // Linux futexes (a header of inline wrappers; no library).
        .systemLibrary(name: "CFutex"),

        // Pure math: flat buffers, GEMM, deterministic transcendental functions, Philox, hashing.
        // Lockstep's own GEMM for --numerics portable (C: AVX2/FMA intrinsics chosen at run time).
        .target(name: "CPortableGEMM", cSettings: [.unsafeFlags(["-O3", "-ffp-contract=off"])]),
        .target(name: "Numerics", dependencies: ["COpenBLAS", "CCrypto", "CPortableGEMM"], swiftSettings: fast),
        // The model: config, parameter layout, packed forward/backward, loss, init.
        .target(name: "BiLSTM", dependencies: ["Numerics", "CPortableGEMM"], swiftSettings: fast),
        // Data, batching, optimizers, clipping, checkpoints, the local trainer.
        .target(name: "Training", dependencies: ["BiLSTM", "Numerics", "CZlib"], swiftSettings: fast),
        // Protocol codec, coordinator/worker state machines, and the ZeroMQ shell.
        .target(name: "Cluster", dependencies: ["Training", "BiLSTM", "Numerics", "CZMQ", "CFutex"], swiftSettings: fast),

        // The log handler coord and worker share.
        .target(name: "LockstepLog", dependencies: [.product(name: "Logging", package: "swift-log")]),
        .executableTarget(name: "coord", dependencies: [
            "Cluster", "Training", "LockstepLog",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "FlyingFox", package: "FlyingFox"),
        ], swiftSettings: fast),
        .executableTarget(name: "worker", dependencies: [
            "Cluster", "Numerics", "Training", "LockstepLog",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: fast),
        .executableTarget(name: "lockstep-bench", dependencies: [
            "Training",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: fast),

        // The wire decoder's fuzz target (scripts/fuzz builds it with libFuzzer).
        .executableTarget(name: "lockstep-fuzz", dependencies: ["Cluster", "Training", "BiLSTM", "Numerics"]),

        .testTarget(name: "NumericsTests", dependencies: ["Numerics"]),
        .testTarget(name: "BiLSTMTests", dependencies: ["BiLSTM", "Training", "CPortableGEMM"], resources: [.copy("Fixtures")]),
        .testTarget(name: "TrainingTests", dependencies: ["Training"], resources: [.copy("Fixtures")]),
        .testTarget(name: "ClusterTests", dependencies: ["Cluster", "Training"], resources: [.copy("FuzzCorpus")]),
    ],
    swiftLanguageModes: [.v5]
)
