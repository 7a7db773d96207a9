@testable import Observe
import XCTest

/// Tier 1 (pure): the progress line's arithmetic.
final class ProgressTests: XCTestCase {
    /// The outside report: `eta 1s` with about 6 s left after --resume (step 200 of 300, 10 steps in 1 s).
    func testTheETAAfterAResumeCountsOnlyTheStepsDoneSinceIt() {
        XCTAssertEqual(ProgressLine.eta(step: 210, first: 200, total: 300, elapsed: 1), 9, accuracy: 1e-12)
        XCTAssertEqual(ProgressLine.eta(step: 10, first: 0, total: 300, elapsed: 1), 29, accuracy: 1e-12)
        XCTAssertEqual(ProgressLine.eta(step: 200, first: 200, total: 300, elapsed: 0), 0)
    }
}
