import BiLSTM
import Cluster
import Foundation
import Numerics

#if FUZZING
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    FuzzInput.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
#else
/// Without -DFUZZING: `lockstep-fuzz seeds DIR` writes the seed corpus;
/// `lockstep-fuzz replay FILE…` decodes each file (the regression check for a corpus).
@main
struct FuzzTool {
    static func main() throws {
        let args = CommandLine.arguments.dropFirst()
        switch args.first {
        case "seeds":
            guard let dir = args.dropFirst().first else { fallthrough }
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            for (name, frames) in FuzzInput.seeds {
                try Data(FuzzInput.encode(frames)).write(to: URL(fileURLWithPath: "\(dir)/\(name)"))
            }
            print("wrote \(FuzzInput.seeds.count) seeds to \(dir)")
        case "replay":
            for path in args.dropFirst() {
                let d = try Data(contentsOf: URL(fileURLWithPath: path))
                d.withUnsafeBytes { FuzzInput.run($0) }
            }
            print("replayed \(args.count - 1) input(s): no crash")
        default:
            print("usage: lockstep-fuzz seeds DIR | replay FILE…   (scripts/fuzz builds the libFuzzer binary)")
        }
    }
}
#endif
