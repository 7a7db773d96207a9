import Foundation

/// A value of a config file: what a Lockstep option can take.
public indirect enum ConfigValue: Sendable, Equatable {
    case string(String), int(Int), double(Double), bool(Bool), table(ConfigTable)

    public var string: String? { if case .string(let s) = self { return s }; return nil }
    public var int: Int? { if case .int(let i) = self { return i }; return nil }
    public var double: Double? { if case .double(let d) = self { return d }; return nil }
    public var bool: Bool? { if case .bool(let b) = self { return b }; return nil }
    public var table: ConfigTable? { if case .table(let t) = self { return t }; return nil }
}

/// Keys and values in file order.
public struct ConfigTable: Sendable, Equatable {
    public private(set) var keys: [String] = []
    package var values: [String: ConfigValue] = [:]
    public subscript(key: String) -> ConfigValue? { values[key] }
    mutating func set(_ key: String, _ v: ConfigValue) { if values[key] == nil { keys.append(key) }; values[key] = v }
}

/// The TOML that a Lockstep config uses, read strictly: comments, `key = value` with bare or
/// quoted keys, `[table]` headers, basic and literal strings, integers, floats and booleans.
/// Anything else TOML allows (arrays, inline tables, dates, dotted keys, multi-line strings) is
/// refused by line and name, as no option takes it. Our own reader: the C++ parser behind
/// TOMLKit aborted the process on malformed files (`scripts/fuzz` found two inputs), where a
/// config error must be a message.
public enum ConfigFile {
    public struct ParseError: Error, CustomStringConvertible {
        public let line: Int
        public let reason: String
        public var description: String { "line \(line): \(reason)" }
    }

    public static func parse(_ text: String) throws -> ConfigTable {
        var root = ConfigTable()
        var current: String? = nil
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            var r = Reader(Array(raw.utf8), line: n + 1)
            r.skipBlanks()
            if r.atEnd || r.peek == UInt8(ascii: "#") { continue }
            if r.peek == UInt8(ascii: "[") {
                r.i += 1
                if r.peek == UInt8(ascii: "[") { throw r.error("arrays of tables ([[…]]) are not used in a Lockstep config") }
                r.skipBlanks()
                let name = try r.key()
                r.skipBlanks()
                guard r.peek == UInt8(ascii: "]") else { throw r.error("expected ']' to close the table header") }
                r.i += 1
                try r.endOfLine()
                if root[name] != nil { throw r.error("table [\(ConfigFile.shown(name))] is defined twice") }
                root.set(name, .table(ConfigTable()))
                current = name
                continue
            }
            let key = try r.key()
            r.skipBlanks()
            guard r.peek == UInt8(ascii: "=") else {
                throw r.error(r.peek == UInt8(ascii: ".") ? "dotted keys are not used in a Lockstep config" : "expected '=' after the key '\(ConfigFile.shown(key))'")
            }
            r.i += 1
            r.skipBlanks()
            let value = try r.value()
            try r.endOfLine()
            if let t = current {
                var table = root[t]!.table!
                if table[key] != nil { throw r.error("key '\(ConfigFile.shown(key))' is set twice in [\(ConfigFile.shown(t))]") }
                table.set(key, value)
                root.set(t, .table(table))
            } else {
                if root[key] != nil { throw r.error("key '\(ConfigFile.shown(key))' is set twice") }
                root.set(key, value)
            }
        }
        return root
    }

    struct Reader {
        let b: [UInt8]
        let line: Int
        var i = 0
        init(_ b: [UInt8], line: Int) { self.b = b; self.line = line }

        var atEnd: Bool { i >= b.count || (b[i] == UInt8(ascii: "\r") && i == b.count - 1) }
        var peek: UInt8? { i < b.count ? b[i] : nil }
        func error(_ why: String) -> ParseError { ParseError(line: line, reason: why) }

        mutating func skipBlanks() { while let c = peek, c == UInt8(ascii: " ") || c == UInt8(ascii: "\t") { i += 1 } }

        mutating func endOfLine() throws {
            skipBlanks()
            if atEnd || peek == UInt8(ascii: "#") { return }
            throw error("unexpected '\(String(decoding: b[i...].prefix(12), as: UTF8.self))' after the value")
        }

        static func bare(_ c: UInt8) -> Bool {
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c == UInt8(ascii: "-") || c == UInt8(ascii: "_")
        }

        mutating func key() throws -> String {
            if peek == UInt8(ascii: "\"") || peek == UInt8(ascii: "'") { return try string() }
            let start = i
            while let c = peek, Reader.bare(c) { i += 1 }
            guard i > start else { throw error("expected a key (letters, digits, '-' and '_')") }
            return String(decoding: b[start..<i], as: UTF8.self)
        }

        mutating func value() throws -> ConfigValue {
            guard let c = peek, !atEnd else { throw error("expected a value after '='") }
            switch c {
            case UInt8(ascii: "\""), UInt8(ascii: "'"): return .string(try string())
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                throw error("arrays and inline tables are not used in a Lockstep config: each option takes one string, number or boolean")
            default:
                let start = i
                while let c = peek, c != UInt8(ascii: " "), c != UInt8(ascii: "\t"), c != UInt8(ascii: "#"), c != UInt8(ascii: "\r") { i += 1 }
                let word = String(decoding: b[start..<i], as: UTF8.self)
                if word == "true" { return .bool(true) }
                if word == "false" { return .bool(false) }
                if let v = ConfigFile.number(word) { return v }
                let digits = word.drop { $0 == "+" || $0 == "-" }.replacingOccurrences(of: "_", with: "")
                if !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }) {
                    throw error("the integer \(ConfigFile.shown(word)) is out of range (at most \(Int.max))")
                }
                throw error("'\(ConfigFile.shown(word))' is not a string, number or boolean (strings go in quotes)")
            }
        }

        mutating func string() throws -> String {
            let quote = b[i]
            if i + 2 < b.count && b[i + 1] == quote && b[i + 2] == quote { throw error("multi-line strings are not used in a Lockstep config") }
            i += 1
            var out: [UInt8] = []
            while true {
                guard let c = peek, !(c == UInt8(ascii: "\r") && i == b.count - 1) else { throw error("the string has no closing \(quote == UInt8(ascii: "\"") ? "\"" : "'")") }
                i += 1
                if c == quote { break }
                if c < 0x20 && c != UInt8(ascii: "\t") || c == 0x7f { throw error("control character 0x\(String(c, radix: 16)) in a string") }
                guard quote == UInt8(ascii: "\""), c == UInt8(ascii: "\\") else { out.append(c); continue }
                guard let e = peek else { throw error("the string ends in an escape") }
                i += 1
                switch e {
                case UInt8(ascii: "\""): out.append(e)
                case UInt8(ascii: "\\"): out.append(e)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "n"): out.append(0x0a)
                case UInt8(ascii: "f"): out.append(0x0c)
                case UInt8(ascii: "r"): out.append(0x0d)
                case UInt8(ascii: "u"), UInt8(ascii: "U"):
                    let n = e == UInt8(ascii: "u") ? 4 : 8
                    guard i + n <= b.count, let v = UInt32(String(decoding: b[i..<(i + n)], as: UTF8.self), radix: 16),
                          let scalar = Unicode.Scalar(v) else { throw error("bad \\\(Character(Unicode.Scalar(e))) escape") }
                    out += Array(String(Character(scalar)).utf8)
                    i += n
                default: throw error("unknown escape \\\(Character(Unicode.Scalar(e)))")
                }
            }
            return String(decoding: out, as: UTF8.self)
        }
    }

    /// At most 40 characters of what a file said, control characters escaped: enough to find
    /// it, never a whole hostile line on the terminal.
    public static func shown(_ s: String) -> String {
        let cut = s.unicodeScalars.prefix(40).map { $0.value < 0x20 || $0.value == 0x7f ? "\\u{\(String($0.value, radix: 16))}" : String($0) }.joined()
        return s.unicodeScalars.count > 40 ? cut + "… (\(s.utf8.count) bytes)" : cut
    }

    /// TOML integers and floats: a sign, digits with single underscores between them, a fraction,
    /// an exponent; `inf` and `nan`.
    package static func number(_ w: String) -> ConfigValue? {
        var s = Substring(w)
        var sign = ""
        if let f = s.first, f == "+" || f == "-" { sign = f == "-" ? "-" : ""; s = s.dropFirst() }
        if s == "inf" { return .double(sign == "-" ? -.infinity : .infinity) }
        if s == "nan" { return .double(.nan) }
        guard let first = s.first, first.isASCII, first.isNumber, !s.contains("__"), !s.hasSuffix("_") else { return nil }
        if s.count > 1 && first == "0" && s.dropFirst().first?.isNumber == true { return nil }  // no leading zeros
        let plain = s.replacingOccurrences(of: "_", with: "")
        guard plain.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == "." || $0 == "e" || $0 == "E" || $0 == "+" || $0 == "-") }) else { return nil }
        if plain.allSatisfy(\.isNumber) { return Int(sign + plain).map { .int($0) } }
        guard !plain.hasSuffix("."), !plain.contains(".e"), !plain.contains(".E") else { return nil }
        return Double(sign + plain).map { .double($0) }
    }
}
