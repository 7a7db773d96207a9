import Foundation

/// `coord report`: one self-contained HTML page (inline SVG, no script, no network) with a
/// run's curves, read from what the run directory holds now (a run still going included).
public struct RunReport {
    /// One plotted line: its name, colour and (step, value) points.
    public struct Series: Equatable {
        public let name: String
        public let color: String
        public var points: [(x: Double, y: Double)]
        public static func == (a: Series, b: Series) -> Bool {
            a.name == b.name && a.points.map(\.x) == b.points.map(\.x) && a.points.map(\.y) == b.points.map(\.y)
        }
    }

    public struct Chart {
        public let title: String
        public let yLabel: String
        public var series: [Series]
        /// Steps marked with a dot on the first series (clipped steps on the gradient norm).
        public var marks: [(x: Double, y: Double)] = []
        public var marksLabel = ""
    }

    public var charts: [Chart] = []
    public var steps = 0, validations = 0
    public var lastLine: String? = nil

    /// The charts of a run's `metrics.jsonl` lines.
    static let palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]

    public init(metricsLines: [String]) {
        var train: [[String: Any]] = [], valid: [[String: Any]] = []
        for line in metricsLines {
            guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { continue }
            if o["valid_loss"] != nil { valid.append(o) } else if o["loss"] != nil { train.append(o) }
        }
        steps = train.count
        validations = valid.count
        lastLine = metricsLines.last
        func pts(_ rows: [[String: Any]], _ key: String, scale: Double = 1) -> [(x: Double, y: Double)] {
            rows.compactMap { r in
                guard let s = (r["step"] as? NSNumber)?.doubleValue, let v = (r[key] as? NSNumber)?.doubleValue, v.isFinite else { return nil }
                return (s, v * scale)
            }
        }
        var loss = Chart(title: "Loss (mean NLL per frame)", yLabel: "loss",
                         series: [Series(name: "train", color: "#1f77b4", points: pts(train, "loss"))])
        if !valid.isEmpty { loss.series.append(Series(name: "validation", color: "#d62728", points: pts(valid, "valid_loss"))) }
        charts.append(loss)
        if !valid.isEmpty {
            charts.append(Chart(title: "Validation accuracy (frames)", yLabel: "accuracy",
                                series: [Series(name: "validation", color: "#d62728", points: pts(valid, "valid_accuracy"))]))
        }
        charts.append(Chart(title: "Learning rate", yLabel: "lr", series: [Series(name: "lr", color: "#2ca02c", points: pts(train, "lr"))]))
        var grad = Chart(title: "Gradient norm (before clipping)", yLabel: "norm",
                         series: [Series(name: "grad norm", color: "#9467bd", points: pts(train, "grad_norm"))])
        grad.marks = train.compactMap { r in
            guard r["clipped"] as? Bool == true, let s = (r["step"] as? NSNumber)?.doubleValue,
                  let v = (r["grad_norm"] as? NSNumber)?.doubleValue, v.isFinite else { return nil }
            return (s, v)
        }
        grad.marksLabel = "clipped"
        charts.append(grad)
        charts.append(Chart(title: "Throughput", yLabel: "frames/s", series: [Series(name: "frames/s", color: "#ff7f0e", points: pts(train, "frames_per_s"))]))
        charts.append(Chart(title: "Workers alive and shards re-issued", yLabel: "count",
                            series: [Series(name: "workers alive", color: "#17becf", points: pts(train, "workers_alive")),
                                     Series(name: "shards re-issued", color: "#d62728", points: pts(train, "shards_reissued"))]))
        charts.append(Chart(title: "Shard compute time (as the workers measured it)", yLabel: "ms",
                            series: [Series(name: "slowest shard", color: "#8c564b", points: pts(train, "shard_seconds_max", scale: 1000)),
                                     Series(name: "mean shard", color: "#e377c2", points: pts(train, "shard_seconds_mean", scale: 1000))]))
        // Each worker's compute time per step (cluster runs): a slow or lost worker shows here.
        var byWorker: [String: [(x: Double, y: Double)]] = [:]
        for r in train {
            guard let s = (r["step"] as? NSNumber)?.doubleValue, let w = r["worker_shard_seconds"] as? [String: Any] else { continue }
            for (name, v) in w { if let v = (v as? NSNumber)?.doubleValue { byWorker[name, default: []].append((s, 1000 * v)) } }
        }
        if !byWorker.isEmpty {
            let names = byWorker.keys.sorted()
            charts.append(Chart(title: "Compute time per worker (sum of its shards in the step)", yLabel: "ms",
                                series: names.enumerated().map { Series(name: $0.element, color: RunReport.palette[$0.offset % RunReport.palette.count],
                                                                        points: byWorker[$0.element]!) }))
        }
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    static func label(_ v: Double) -> String {
        if v == 0 { return "0" }
        let a = abs(v)
        return a >= 1e5 || a < 1e-3 ? String(format: "%.3g", v) : String(format: a >= 100 ? "%.0f" : a >= 1 ? "%.3g" : "%.4f", v)
    }

    /// One chart as an inline SVG: axes with their ranges, a polyline per series, a legend.
    public static func svg(_ c: Chart) -> String {
        let w = 640.0, h = 220.0, left = 64.0, right = 16.0, top = 28.0, bottom = 34.0
        let all = c.series.flatMap(\.points) + c.marks
        var out = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(w))\" height=\"\(Int(h))\" role=\"img\" aria-label=\"\(escape(c.title))\">"
        out += "<text x=\"\(left)\" y=\"16\" font-size=\"13\" font-weight=\"bold\">\(escape(c.title))</text>"
        guard let x0 = all.map(\.x).min(), let x1 = all.map(\.x).max(), var y0 = all.map(\.y).min(), var y1 = all.map(\.y).max() else {
            return out + "<text x=\"\(left)\" y=\"\(h / 2)\" font-size=\"12\">no data yet</text></svg>"
        }
        if y0 == y1 { y0 -= 0.5 * max(abs(y0), 1); y1 += 0.5 * max(abs(y1), 1) }
        let xs = x1 > x0 ? x1 - x0 : 1
        func px(_ x: Double) -> Double { left + (x - x0) / xs * (w - left - right) }
        func py(_ y: Double) -> Double { top + (y1 - y) / (y1 - y0) * (h - top - bottom) }
        out += "<rect x=\"\(left)\" y=\"\(top)\" width=\"\(w - left - right)\" height=\"\(h - top - bottom)\" fill=\"none\" stroke=\"#999\"/>"
        for (v, y) in [(y1, top + 4), (y0, h - bottom)] {
            out += "<text x=\"\(left - 4)\" y=\"\(y)\" font-size=\"11\" text-anchor=\"end\">\(label(v))</text>"
        }
        out += "<text x=\"\(left)\" y=\"\(h - bottom + 14)\" font-size=\"11\">step \(Int(x0))</text>"
        out += "<text x=\"\(w - right)\" y=\"\(h - bottom + 14)\" font-size=\"11\" text-anchor=\"end\">step \(Int(x1))</text>"
        out += "<text x=\"12\" y=\"\(top + (h - top - bottom) / 2)\" font-size=\"11\" transform=\"rotate(-90 12 \(top + (h - top - bottom) / 2))\" text-anchor=\"middle\">\(escape(c.yLabel))</text>"
        for s in c.series where !s.points.isEmpty {
            let coords = s.points.map { String(format: "%.1f,%.1f", px($0.x), py($0.y)) }.joined(separator: " ")
            out += s.points.count == 1
                ? "<circle cx=\"\(px(s.points[0].x))\" cy=\"\(py(s.points[0].y))\" r=\"3\" fill=\"\(s.color)\" data-series=\"\(escape(s.name))\" data-points=\"1\"/>"
                : "<polyline fill=\"none\" stroke=\"\(s.color)\" stroke-width=\"1.5\" points=\"\(coords)\" data-series=\"\(escape(s.name))\" data-points=\"\(s.points.count)\"/>"
        }
        for m in c.marks { out += "<circle cx=\"\(String(format: "%.1f", px(m.x)))\" cy=\"\(String(format: "%.1f", py(m.y)))\" r=\"2.5\" fill=\"#d62728\" data-mark=\"1\"/>" }
        var lx = left + 8
        let legend = c.series.map { ($0.name, $0.color) } + (c.marks.isEmpty ? [] : [("\(c.marksLabel) (\(c.marks.count))", "#d62728")])
        for (name, color) in legend {
            out += "<rect x=\"\(lx)\" y=\"\(top + 6)\" width=\"10\" height=\"10\" fill=\"\(color)\"/>"
            out += "<text x=\"\(lx + 14)\" y=\"\(top + 15)\" font-size=\"11\">\(escape(name))</text>"
            lx += 24 + Double(name.count) * 6.5
        }
        return out + "</svg>"
    }

    /// The whole page: title, summary, charts, the run's config and its final hash.
    public func html(run: String, config: String?, hash: String?, numerics: String, step: Int? = nil) -> String {
        var page = "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Lockstep run \(RunReport.escape(run))</title>"
        page += "<style>body{font-family:sans-serif;margin:24px;color:#222}pre{background:#f4f4f4;padding:8px;font-size:12px}"
        page += ".charts{display:flex;flex-wrap:wrap;gap:12px}</style></head><body>"
        page += "<h1>Lockstep run: \(RunReport.escape(run))</h1>"
        page += "<p>\(steps) steps and \(validations) validations in metrics.jsonl"
        if let hash { page += "; checkpoint (step \(step ?? 0)) weights SHA-256 <code>\(hash)</code>, numerics: \(RunReport.escape(numerics))" }
        page += ".</p><div class=\"charts\">"
        for c in charts { page += "<div>" + RunReport.svg(c) + "</div>" }
        page += "</div><h2>Config</h2><pre>\(RunReport.escape(config ?? "(no config.toml)"))</pre>"
        if let lastLine { page += "<h2>Last metrics line</h2><pre>\(RunReport.escape(lastLine))</pre>" }
        return page + "</body></html>\n"
    }
}
