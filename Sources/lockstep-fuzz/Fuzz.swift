import Foundation
import FuzzTargets

/// The target chosen by `LOCKSTEP_FUZZ_TARGET` (default: the wire decoder).
let fuzzTarget: FuzzTarget = {
    let name = ProcessInfo.processInfo.environment["LOCKSTEP_FUZZ_TARGET"] ?? "wire"
    guard let t = FuzzTarget(rawValue: name) else {
        FileHandle.standardError.write(Data("unknown LOCKSTEP_FUZZ_TARGET \(name); one of: \(FuzzTarget.allCases.map(\.rawValue).joined(separator: ", "))\n".utf8))
        exit(2)
    }
    return t
}()

#if FUZZING
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    fuzzTarget.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
#else
/// Without -DFUZZING: `lockstep-fuzz seeds DIR` writes the seed corpus of the target;
/// `lockstep-fuzz replay FILE…` runs each file through it (the regression check for a corpus).
@main
struct FuzzTool {
    static func main() throws {
        let args = CommandLine.arguments.dropFirst()
        switch args.first {
        case "seeds":
            guard let dir = args.dropFirst().first else { fallthrough }
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            let seeds = fuzzTarget.seeds()
            for (name, bytes) in seeds { try Data(bytes).write(to: URL(fileURLWithPath: "\(dir)/\(name)")) }
            print("wrote \(seeds.count) \(fuzzTarget.rawValue) seeds to \(dir)")
        case "replay":
            for path in args.dropFirst() {
                let d = try Data(contentsOf: URL(fileURLWithPath: path))
                d.withUnsafeBytes { fuzzTarget.run($0) }
            }
            print("replayed \(args.count - 1) \(fuzzTarget.rawValue) input(s): no crash")
        default:
            print("usage: [LOCKSTEP_FUZZ_TARGET=\(FuzzTarget.allCases.map(\.rawValue).joined(separator: "|"))] lockstep-fuzz seeds DIR | replay FILE…   (scripts/fuzz builds the libFuzzer binary)")
        }
    }
}
#endif
