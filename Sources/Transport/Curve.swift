import CZMQ
import Formats
import Foundation
import Training

/// ZeroMQ CURVE keys (Z85 text, 40 characters) and the files that hold them.
///
/// A keypair file (`NAME.key`, mode 0600) holds `public-key = …` and `secret-key = …`; the
/// public file (`NAME.pub`) holds the public key alone. An allow-list file has one public key
/// per line; `#` starts a comment. Both `coord keygen` and `worker keygen` write these files.
public struct CurveKeypair: Sendable, Equatable {
    public let publicKey: String
    public let secretKey: String

    public static func generate() throws -> CurveKeypair {
        var pub = [CChar](repeating: 0, count: 41), sec = [CChar](repeating: 0, count: 41)
        guard zmq_curve_keypair(&pub, &sec) == 0 else {
            throw LockstepError("cannot make a CURVE keypair: this libzmq was built without CURVE support",
                                hint: "install Debian's libzmq3-dev (built with libsodium); on loopback, --insecure runs without keys")
        }
        return CurveKeypair(publicKey: String(cString: pub), secretKey: String(cString: sec))
    }

    /// Writes `base.key` (0600) and `base.pub`; refuses to overwrite an existing key.
    public func write(base: String) throws {
        let keyPath = base + ".key", pubPath = base + ".pub"
        for p in [keyPath, pubPath] where FileManager.default.fileExists(atPath: p) {
            throw LockstepError("\(p) already exists; not overwriting a key", hint: "choose another --out or delete the old key first")
        }
        let secret = "# Lockstep CURVE keypair: keep this file secret\npublic-key = \(publicKey)\nsecret-key = \(secretKey)\n"
        let fd = open(keyPath, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw LockstepError("cannot create \(keyPath): \(String(cString: strerror(errno)))", hint: "check the directory") }
        _ = secret.withCString { Foundation.write(fd, $0, strlen($0)) }
        fchmod(fd, 0o600)
        close(fd)
        try "# Lockstep CURVE public key\npublic-key = \(publicKey)\n".write(toFile: pubPath, atomically: true, encoding: .utf8)
    }

    /// What both `keygen` commands do: a new keypair in `out.key` and `out.pub`.
    public static func keygen(out: String) throws -> String {
        try generate().write(base: out)
        return "wrote \(out).key (secret, 0600) and \(out).pub"
    }

    public static func read(_ path: String) throws -> CurveKeypair {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw LockstepError("\(path): cannot read the key file", hint: "create one with `coord keygen` or `worker keygen`")
        }
        var pub: String?, sec: String?
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2 else { continue }
            if parts[0] == "public-key" { pub = parts[1] }
            if parts[0] == "secret-key" { sec = parts[1] }
        }
        guard let pub, let sec, isKey(pub), isKey(sec) else {
            throw LockstepError("\(path): not a Lockstep keypair (needs public-key = … and secret-key = …, 40-character Z85 each)",
                                hint: "create one with `coord keygen --out NAME` or `worker keygen --out NAME`")
        }
        return CurveKeypair(publicKey: pub, secretKey: sec)
    }

    public static func isKey(_ s: String) -> Bool {
        guard s.utf8.count == 40 else { return false }
        var out = [UInt8](repeating: 0, count: 32)
        return zmq_z85_decode(&out, s) != nil
    }

    public static func z85(_ raw: [UInt8]) -> String? {
        guard raw.count == 32 else { return nil }
        var out = [CChar](repeating: 0, count: 41)
        return zmq_z85_encode(&out, raw, 32) != nil ? String(cString: out) : nil
    }

    /// A public key given inline (40 characters) or as a path to a `.pub` / `.key` file.
    public static func publicKey(_ arg: String) throws -> String {
        if isKey(arg) { return arg }
        let keys = try allowList(arg)
        guard keys.count == 1 else {
            throw LockstepError("\(arg): expected one public key", hint: "pass the coordinator's .pub file or its 40-character key")
        }
        return keys[0]
    }

    /// The keys of an allow-list file: one key per line, as the first word of the line or as
    /// `public-key = KEY` (so `.pub` files can be appended as they are). Z85 keys may contain
    /// `#`, so a comment is a line that starts with `# ` (or is `#` alone), and words after the
    /// key are ignored.
    public static func allowList(_ path: String) throws -> [String] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw LockstepError("\(path): cannot read the allow-list", hint: "one worker public key (40-character Z85) per line")
        }
        var keys: [String] = []
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line == "#" || line.hasPrefix("# ") { continue }
            var words = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            if words.count >= 3 && words[0] == "public-key" && words[1] == "=" { words.removeFirst(2) }
            guard let key = words.first, isKey(key) else {
                throw LockstepError("\(path):\(n + 1): '\(line.prefix(60))' is not a 40-character Z85 public key",
                                    hint: "copy the key from the worker's .pub file; comment lines start with '# '")
            }
            keys.append(key)
        }
        return keys
    }
}

/// The per-run key that keeps other users' processes out of a loopback coordinator at no cost
/// to the same user: the coordinator makes a fresh CURVE keypair for itself and one for its
/// workers, admits only the latter, and writes both public keys and the workers' secret into a
/// 0600 file in a 0700 directory of the user's (`JoinKey.directory`), named after the endpoint.
/// A worker joining that endpoint without keys of its own reads the file by itself. Loopback is
/// not a trust boundary on a shared host; file permissions are.
public struct JoinKey: Equatable, Sendable {
    public let serverPublic: String
    public let worker: CurveKeypair

    /// `$LOCKSTEP_JOIN_DIR`, else `$XDG_RUNTIME_DIR/lockstep`, else `$HOME/.lockstep/join`.
    public static var directory: String {
        let env = ProcessInfo.processInfo.environment
        if let d = env["LOCKSTEP_JOIN_DIR"], !d.isEmpty { return d }
        if let d = env["XDG_RUNTIME_DIR"], !d.isEmpty { return d + "/lockstep" }
        if let d = env["HOME"], !d.isEmpty { return d + "/.lockstep/join" }
        return NSTemporaryDirectory() + "lockstep-join-\(getuid())"
    }

    /// The loopback host and port of a `tcp://` endpoint, or nil for any other endpoint.
    public static func loopback(_ endpoint: String) -> (host: String, port: String)? {
        guard endpoint.hasPrefix("tcp://"), let colon = endpoint.lastIndex(of: ":") else { return nil }
        var host = String(endpoint[endpoint.index(endpoint.startIndex, offsetBy: 6)..<colon])
        let port = String(endpoint[endpoint.index(after: colon)...])
        if host == "localhost" { host = "127.0.0.1" }
        host = host.trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        guard host.hasPrefix("127.") || host == "::1", port == "*" || (!port.isEmpty && port.allSatisfy(\.isNumber)) else { return nil }
        return (host, port)
    }

    /// Where the join key of a loopback or local-socket endpoint lives (nil for any other).
    public static func path(endpoint: String) -> String? {
        if endpoint.hasPrefix("ipc://") {
            let name = (String(endpoint.dropFirst(6)) as NSString).lastPathComponent
            return name.isEmpty ? nil : "\(directory)/ipc-\(name).key"
        }
        return loopback(endpoint).map { "\(directory)/tcp-\($0.host.replacingOccurrences(of: ":", with: "_"))-\($0.port).key" }
    }

    /// A fresh keypair for the coordinator and the join key that goes with it.
    public static func generate() throws -> (server: CurveKeypair, join: JoinKey) {
        let server = try CurveKeypair.generate()
        return (server, JoinKey(serverPublic: server.publicKey, worker: try CurveKeypair.generate()))
    }

    /// Makes the directory (0700, ours, closed to others) and writes the file atomically (0600).
    public func write(to path: String, endpoint: String) throws {
        let dir = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        var st = stat()
        guard stat(dir, &st) == 0, st.st_uid == getuid(), st.st_mode & 0o077 == 0 else {
            throw LockstepError("\(dir) (where the run's join key goes) is open to other users or not this user's",
                                hint: "chmod 700 \(dir), or point LOCKSTEP_JOIN_DIR at a private directory")
        }
        let text = "# Lockstep join key of the coordinator at \(endpoint) (pid \(getpid())): this user's workers read it to join. Keep it secret.\n"
            + "server-key = \(serverPublic)\npublic-key = \(worker.publicKey)\nsecret-key = \(worker.secretKey)\n"
        let tmp = path + ".tmp-\(getpid())"
        unlink(tmp)  // a leftover, or something planted: never written through
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw LockstepError("cannot write \(tmp): \(String(cString: strerror(errno)))", hint: "check \(dir)") }
        fchmod(fd, 0o600)
        let ok = text.withCString { Foundation.write(fd, $0, strlen($0)) } == text.utf8.count
        close(fd)
        guard ok, rename(tmp, path) == 0 else {
            unlink(tmp)
            throw LockstepError("cannot write \(path): \(String(cString: strerror(errno)))", hint: "check the space and permissions of \(dir)")
        }
    }

    /// Reads a join key file; nil when there is none.
    public static func read(_ path: String) throws -> JoinKey? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        let keys = try CurveKeypair.read(path)
        guard let text = try? String(contentsOfFile: path, encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("server-key") }),
              let server = line.split(separator: "=", maxSplits: 1).last?.trimmingCharacters(in: .whitespaces),
              CurveKeypair.isKey(server) else {
            throw LockstepError("\(path): not a Lockstep join key (no server-key line)", hint: "delete it; the coordinator writes a new one when it starts")
        }
        return JoinKey(serverPublic: server, worker: keys)
    }

    /// Removes the join keys of coordinators that no longer run (`kill -9` leaves its file
    /// behind); returns the paths removed.
    @discardableResult
    public static func removeStale(in dir: String = directory) -> [String] {
        var removed: [String] = []
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where name.hasSuffix(".key") {
            let path = dir + "/" + name
            guard let text = try? String(contentsOfFile: path, encoding: .utf8),
                  let r = text.range(of: "(pid "), let pid = pid_t(text[r.upperBound...].prefix(while: \.isNumber)), pid > 0 else { continue }
            if kill(pid, 0) != 0 && errno == ESRCH && unlink(path) == 0 { removed.append(path) }
        }
        return removed
    }

    /// Removes the file if it is still this key's (a newer coordinator may have replaced it).
    public func remove(from path: String) {
        if (try? JoinKey.read(path)) == self { unlink(path) }
    }
}

extension ZMQSocket {
    func setString(_ option: Int32, _ value: String) {
        _ = value.withCString { zmq_setsockopt(raw, option, $0, strlen($0)) }
    }

    /// Makes this socket a CURVE server (the coordinator).
    public func curveServer(_ keys: CurveKeypair) {
        setInt(ZMQ_CURVE_SERVER, 1)
        setString(ZMQ_CURVE_SECRETKEY, keys.secretKey)
        setString(ZMQ_ZAP_DOMAIN, "lockstep")
    }

    /// Makes this socket a CURVE client (a worker) of the server with `serverKey`.
    public func curveClient(_ keys: CurveKeypair, serverKey: String) {
        setString(ZMQ_CURVE_SERVERKEY, serverKey)
        setString(ZMQ_CURVE_PUBLICKEY, keys.publicKey)
        setString(ZMQ_CURVE_SECRETKEY, keys.secretKey)
    }
}

/// The ZAP handler (RFC 27): libzmq asks it about every CURVE handshake; only allow-listed
/// public keys pass. Runs on the coordinator's own loop over an inproc REP socket.
public final class ZAPHandler {
    let socket: ZMQSocket
    let allowed: Set<String>
    let log: (String) -> Void
    public private(set) var denied = 0

    public init(context: ZMQContext, allowed: [String], log: @escaping (String) -> Void) throws {
        socket = try ZMQSocket(context, .rep)
        try socket.bind("inproc://zeromq.zap.01")
        self.allowed = Set(allowed)
        self.log = log
    }

    /// Answers every pending request.
    public func serve() {
        while let f = socket.receive() {
            guard f.count >= 6 else { socket.send([Array("1.0".utf8), [], Array("500".utf8), Array("bad request".utf8), [], []]); continue }
            let requestId = f[1]
            let address = String(decoding: f[3], as: UTF8.self)
            let mechanism = String(decoding: f[5], as: UTF8.self)
            var ok = false
            var who = "no key"
            if mechanism == "CURVE", f.count >= 7, let key = CurveKeypair.z85(f[6]) {
                who = "key \(key)"
                ok = allowed.contains(key)
            }
            if !ok {
                denied += 1
                log("refused a worker from \(address.isEmpty ? "?" : address) (\(mechanism), \(who)): not on the allow-list")
            }
            socket.send([Array("1.0".utf8), requestId, Array((ok ? "200" : "400").utf8),
                         Array((ok ? "OK" : "not on the allow-list").utf8), Array((ok ? who : "").utf8), []])
        }
    }
}
