import BiLSTM
import Datasets
import Foundation
import XCTest

/// Tier 3 (real processes): the README's "A whole experiment" block, run as it stands with the
/// built binaries on a skewed task (62% of frames in class 0), so every command in it works.
final class ExperimentTests: XCTestCase {
    var h: ProcessHarness!
    override func setUp() { h = ProcessHarness() }
    override func tearDown() { h.finish(testRun) }

    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    /// The shell block under "### A whole experiment" in README.md.
    func readmeBlock() throws -> String {
        let readme = try String(contentsOfFile: root + "/README.md", encoding: .utf8)
        let section = try XCTUnwrap(readme.range(of: "### A whole experiment\n"), "README.md has no whole experiment")
        let rest = readme[section.upperBound...]
        let open = try XCTUnwrap(rest.range(of: "```sh\n"))
        let close = try XCTUnwrap(rest[open.upperBound...].range(of: "```\n"))
        return String(rest[open.upperBound..<close.lowerBound])
    }

    func write(_ name: String, count: Int, first: Int, labels: Bool = true) throws {
        let task = SyntheticTask(sequences: count, inputSize: 16, classes: 8, minLength: 5, maxLength: 30)
        let examples = task.generate(seed: 3, firstId: first, count: count).examples.enumerated().map { i, e in
            Example(id: i, x: e.x, y: e.y.map { $0 < 5 ? 0 : $0 - 4 })
        }
        var bytes = Dataset(examples: examples, inputSize: 16, classes: 4, source: name).npzBytes()
        if !labels {
            // new.npz: data to label, with no `y`.
            let path = h.dir + "/unlabelled-src.npz"
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            let d = try Dataset.load(npz: path)
            bytes = Dataset(examples: d.examples.map { Example(id: $0.id, x: $0.x, y: [Int32](repeating: -1, count: $0.length)) },
                            inputSize: 16, classes: 4, source: name).npzBytes()
        }
        try Data(bytes).write(to: URL(fileURLWithPath: h.dir + "/" + name))
    }

    func testTheReadmesWholeExperimentRunsAsWritten() throws {
        let block = try readmeBlock()
        XCTAssertTrue(block.hasPrefix("B=.build/release\n"), block)
        for word in ["--valid-split", "--class-weights", "coord report", "coord export", "--resume", "--config"] {
            XCTAssertTrue(block.contains(word), "the experiment shows \(word)")
        }
        try write("train.npz", count: 180, first: 0)
        try write("test.npz", count: 64, first: 1000)
        try write("new.npz", count: 24, first: 2000, labels: false)
        try write("other.npz", count: 64, first: 3000)
        let script = "set -e\ncd '\(h.dir)'\n" + block.replacingOccurrences(of: "B=.build/release\n", with: "B='\(h.bin)'\n")
        let p = try h.start(path: "/bin/sh", ["-c", script], name: "experiment")
        XCTAssertEqual(h.wait(p, timeout: 600), 0, h.text(h.log("experiment")) + h.text(h.out("experiment")))
        let out = h.text(h.out("experiment"))
        let hashes = out.split(separator: "\n").filter { $0.hasPrefix("final weights sha256: ") }
        XCTAssertEqual(hashes.count, 4, "exp1, its extension, the rerun and the fine-tune:\n\(out)")
        XCTAssertEqual(hashes[2], hashes[1], "config.toml repeats the extended run")
        XCTAssertNotEqual(hashes[1], hashes[0])
        XCTAssertTrue(out.contains("accuracy"), out)
        let report = h.text(h.dir + "/runs/exp1/report.html")
        XCTAssertTrue(report.contains("Best validation: step") && report.contains("data-cell="), "the report shows the best validation")
        XCTAssertTrue(h.text(h.dir + "/runs/exp1/config.toml").contains("class-weights = \""))
        for file in ["exp1.onnx", "new-pred.npz", "runs/ft/checkpoint.safetensors", "runs/exp1-again/best.safetensors"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: h.dir + "/" + file), file)
        }
        XCTAssertTrue(h.text(h.log("experiment")).contains("extending"), "the extension is said: \(h.text(h.log("experiment")))")
    }
}
