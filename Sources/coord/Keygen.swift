import ArgumentParser
import Foundation
import Transport

struct Keygen: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a CURVE keypair for the coordinator: NAME.key (secret, mode 0600) and NAME.pub.",
        discussion: "Give workers NAME.pub (their --server-key); start the coordinator with --curve-keys NAME.key --allow FILE.")

    @Option(help: "Path prefix of the files to write.")
    var out = "coordinator"

    func run() throws {
        do { print(try CurveKeypair.keygen(out: out)) } catch { fail(error) }
    }
}
