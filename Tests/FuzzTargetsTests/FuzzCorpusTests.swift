@testable import ClusterProtocol
@testable import Datasets
import Foundation
@testable import FuzzTargets
@testable import Training
import XCTest

/// Tier 1: the fuzzers' regression corpora (scripts/fuzz adds any crasher it finds), one folder per
/// parser of untrusted bytes: every input must be accepted or refused, never trap.
final class FuzzCorpusTests: XCTestCase {
    func corpus(_ t: FuzzTarget) throws -> [Data] {
        let dir = try XCTUnwrap(Bundle.module.path(forResource: "FuzzCorpus", ofType: nil)) + "/" + t.rawValue
        return try FileManager.default.contentsOfDirectory(atPath: dir).map { try Data(contentsOf: URL(fileURLWithPath: dir + "/" + $0)) }
    }

    func testEveryCorpusInputIsDecodedOrRefused() throws {
        let files = try corpus(.wire)
        XCTAssertGreaterThanOrEqual(files.count, 9, "the seeds of every message type are there")
        var decoded = 0
        for d in files {
            d.withUnsafeBytes { FuzzTarget.wire.run($0) }
            if d.withUnsafeBytes({ (try? Message.decode(FuzzInput.frames($0), limits: WireLimits())) != nil }) { decoded += 1 }
        }
        XCTAssertGreaterThanOrEqual(decoded, 9, "the seeds are valid messages")
    }

    /// The file parsers' corpora hold their seeds (valid files) and what fuzzing found.
    func testEveryFileParserCorpusIsReadOrRefused() throws {
        for t in FuzzTarget.allCases where t != .wire {
            let files = try corpus(t)
            XCTAssertGreaterThanOrEqual(files.count, t.seeds().count, "\(t): the seeds are there")
            for d in files { d.withUnsafeBytes { t.run($0) } }
        }
        // The seeds are real inputs: each parser accepts them.
        for (name, b) in FuzzTarget.npz.seeds() {
            XCTAssertNoThrow(try b.withUnsafeBytes { try Dataset.decode(npz: $0, name: name) }, name)
        }
        for (name, b) in FuzzTarget.safetensors.seeds() { XCTAssertNoThrow(try Checkpoint.decode(b, path: name), name) }
    }
}
