import Foundation

/// The report's page: charts as inline SVG that scale to the window (a phone's width or a
/// desktop's), the best validation's confusion heat map and per-class table, the config.
extension RunReport {
    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    static func label(_ v: Double) -> String {
        if v == 0 { return "0" }
        let a = abs(v)
        return a >= 1e5 || a < 1e-3 ? String(format: "%.3g", v) : String(format: a >= 100 ? "%.0f" : a >= 1 ? "%.3g" : "%.4g", v)
    }

    /// Round tick values (1, 2 or 5 × 10^k apart) covering [lo, hi], about `count` of them.
    static func ticks(_ lo: Double, _ hi: Double, count: Int = 5) -> [Double] {
        guard hi > lo, lo.isFinite, hi.isFinite else { return [lo] }
        let raw = (hi - lo) / Double(count), mag = pow(10, floor(log10(raw)))
        let step = [1.0, 2, 5, 10].map { $0 * mag }.first { $0 >= raw } ?? 10 * mag
        var out: [Double] = []
        var t = (lo / step).rounded(.up) * step
        while t <= hi + step * 1e-9 { out.append(abs(t) < step * 1e-9 ? 0 : t); t += step }
        return out
    }

    static func f(_ v: Double) -> String { String(format: "%.1f", v) }

    /// One chart as an inline SVG: gridlines and ticks on both axes, a line per series (dots on
    /// validation points), marked steps, the best step's dashed line, and a legend.
    public static func svg(_ c: Chart) -> String {
        // 480 units wide: on a phone the chart is scaled to ~360 px and its text stays readable.
        let w = 480.0, h = 230.0, left = 54.0, right = 12.0, top = 44.0, bottom = 38.0
        let all = c.series.flatMap(\.points) + c.marks
        var out = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 \(Int(w)) \(Int(h))\" class=\"chart\" role=\"img\" aria-label=\"\(escape(c.title))\">"
        out += "<text x=\"\(left)\" y=\"16\" font-size=\"14\" font-weight=\"bold\">\(escape(c.title))</text>"
        guard let x0 = all.map(\.x).min(), var x1 = all.map(\.x).max(), var y0 = all.map(\.y).min(), var y1 = all.map(\.y).max() else {
            return out + "<text x=\"\(left)\" y=\"\(h / 2)\" font-size=\"12\">no data yet</text></svg>"
        }
        if y0 == y1 { let pad = y0 == 0 ? 1 : 0.5 * abs(y0); y0 -= pad; y1 += pad }  // a constant: its own scale
        if x1 == x0 { x1 = x0 + 1 }
        // Widen the y range to the ticks around it, so the top and bottom lines are labelled.
        let yt0 = ticks(y0, y1)
        if let step = yt0.count > 1 ? yt0[1] - yt0[0] : nil {
            y0 = (y0 / step).rounded(.down) * step; y1 = (y1 / step).rounded(.up) * step
        }
        let plotW = w - left - right, plotH = h - top - bottom
        func px(_ x: Double) -> Double { left + (x - x0) / (x1 - x0) * plotW }
        func py(_ y: Double) -> Double { top + (y1 - y) / (y1 - y0) * plotH }
        for t in ticks(y0, y1) {
            out += "<line x1=\"\(left)\" x2=\"\(w - right)\" y1=\"\(f(py(t)))\" y2=\"\(f(py(t)))\" stroke=\"#e3e3e3\"/>"
            out += "<text x=\"\(left - 5)\" y=\"\(f(py(t) + 4))\" font-size=\"11\" text-anchor=\"end\" class=\"ytick\">\(label(t))</text>"
        }
        for t in ticks(x0, x1, count: 5) where t == t.rounded() {
            out += "<line x1=\"\(f(px(t)))\" x2=\"\(f(px(t)))\" y1=\"\(top)\" y2=\"\(h - bottom)\" stroke=\"#efefef\"/>"
            out += "<text x=\"\(f(px(t)))\" y=\"\(h - bottom + 15)\" font-size=\"11\" text-anchor=\"middle\" class=\"xtick\">\(Int(t))</text>"
        }
        out += "<rect x=\"\(left)\" y=\"\(top)\" width=\"\(plotW)\" height=\"\(plotH)\" fill=\"none\" stroke=\"#888\"/>"
        out += "<text x=\"\(f(left + plotW / 2))\" y=\"\(h - 6)\" font-size=\"12\" text-anchor=\"middle\">step</text>"
        out += "<text x=\"13\" y=\"\(f(top + plotH / 2))\" font-size=\"12\" transform=\"rotate(-90 13 \(f(top + plotH / 2)))\" text-anchor=\"middle\">\(escape(c.yLabel))</text>"
        if let v = c.vline {
            out += "<line x1=\"\(f(px(v.x)))\" x2=\"\(f(px(v.x)))\" y1=\"\(top)\" y2=\"\(h - bottom)\" stroke=\"#2ca02c\" stroke-dasharray=\"5,4\" data-best=\"\(Int(v.x))\"/>"
            let anchor = px(v.x) > left + plotW * 0.7 ? "end" : "start", dx = anchor == "end" ? -4.0 : 4.0
            out += "<text x=\"\(f(px(v.x) + dx))\" y=\"\(top + 12)\" font-size=\"11\" fill=\"#2ca02c\" text-anchor=\"\(anchor)\">\(escape(v.label))</text>"
        }
        for s in c.series where !s.points.isEmpty {
            let coords = s.points.map { "\(f(px($0.x))),\(f(py($0.y)))" }.joined(separator: " ")
            if s.points.count > 1 {
                out += "<polyline fill=\"none\" stroke=\"\(s.color)\" stroke-width=\"\(s.faint ? 1 : 1.8)\"\(s.faint ? " stroke-opacity=\"0.3\"" : "") points=\"\(coords)\" data-series=\"\(escape(s.name))\" data-points=\"\(s.points.count)\"/>"
            }
            if s.dots || s.points.count == 1 {
                for p in s.points {
                    out += "<circle cx=\"\(f(px(p.x)))\" cy=\"\(f(py(p.y)))\" r=\"3.2\" fill=\"\(s.color)\" data-dot=\"\(escape(s.name))\"><title>step \(Int(p.x)): \(label(p.y))</title></circle>"
                }
            }
        }
        for m in c.marks { out += "<circle cx=\"\(f(px(m.x)))\" cy=\"\(f(py(m.y)))\" r=\"2.5\" fill=\"#d62728\" data-mark=\"1\"/>" }
        var lx = left
        let legend = c.series.map { ($0.name, $0.color, $0.faint) } + (c.marks.isEmpty ? [] : [("\(c.marksLabel) (\(c.marks.count))", "#d62728", false)])
        for (name, color, faint) in legend {
            out += "<rect x=\"\(f(lx))\" y=\"24\" width=\"10\" height=\"10\" fill=\"\(color)\"\(faint ? " fill-opacity=\"0.3\"" : "")/>"
            out += "<text x=\"\(f(lx + 14))\" y=\"33\" font-size=\"11\">\(escape(name))</text>"
            lx += 24 + Double(name.count) * 6
        }
        return out + "</svg>"
    }

    /// The best validation's confusion counts as a heat map: each cell shaded by its share of
    /// its row (the true class), the count written in it while the matrix is small enough to read.
    static func confusionSVG(_ m: [[Int]]) -> String {
        let n = m.count, cell = n <= 12 ? 40.0 : max(6, 480 / Double(n)), margin = 46.0
        let size = margin + cell * Double(n) + 8
        var out = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 \(Int(size)) \(Int(size + 16))\" class=\"confusion\" role=\"img\" aria-label=\"confusion matrix\">"
        out += "<text x=\"\(f(margin + cell * Double(n) / 2))\" y=\"12\" font-size=\"12\" text-anchor=\"middle\">predicted class</text>"
        out += "<text x=\"12\" y=\"\(f(margin + cell * Double(n) / 2))\" font-size=\"12\" text-anchor=\"middle\" transform=\"rotate(-90 12 \(f(margin + cell * Double(n) / 2)))\">true class</text>"
        let labels = n <= 32
        for i in 0..<n where labels {
            out += "<text x=\"\(f(margin + cell * (Double(i) + 0.5)))\" y=\"\(f(margin - 6))\" font-size=\"10\" text-anchor=\"middle\">\(i)</text>"
            out += "<text x=\"\(f(margin - 6))\" y=\"\(f(margin + cell * (Double(i) + 0.5) + 4))\" font-size=\"10\" text-anchor=\"end\">\(i)</text>"
        }
        for (t, row) in m.enumerated() {
            let total = max(row.reduce(0, +), 1)
            for (p, count) in row.enumerated() {
                let share = Double(count) / Double(total)
                let colour = t == p ? "44,160,44" : "214,39,40"
                out += "<rect x=\"\(f(margin + cell * Double(p)))\" y=\"\(f(margin + cell * Double(t)))\" width=\"\(f(cell))\" height=\"\(f(cell))\" fill=\"rgba(\(colour),\(String(format: "%.3f", 0.06 + 0.94 * share)))\" stroke=\"#fff\" data-cell=\"\(t),\(p)\"><title>true \(t), predicted \(p): \(count) (\(String(format: "%.1f", 100 * share))% of class \(t))</title></rect>"
                if n <= 12 {
                    out += "<text x=\"\(f(margin + cell * (Double(p) + 0.5)))\" y=\"\(f(margin + cell * (Double(t) + 0.5) + 4))\" font-size=\"11\" text-anchor=\"middle\" fill=\"\(share > 0.55 ? "#fff" : "#222")\">\(count)</text>"
                }
            }
        }
        return out + "</svg>"
    }

    /// Precision, recall, F1 and frames per class of the best validation.
    static func perClassTable(_ b: BestValidation) -> String {
        let n = max(b.confusion.count, b.recall.count)
        func pct(_ v: Double??) -> String { (v ?? nil).map { String(format: "%.1f%%", 100 * $0) } ?? "–" }
        var out = "<table><thead><tr><th>class</th><th>frames</th><th>predicted</th><th>precision</th><th>recall</th><th>F1</th></tr></thead><tbody>"
        for c in 0..<n {
            let frames = c < b.confusion.count ? String(b.confusion[c].reduce(0, +)) : "–"
            let predicted = b.confusion.isEmpty ? "–" : String(b.confusion.reduce(0) { $0 + (c < $1.count ? $1[c] : 0) })
            out += "<tr><td>\(c)</td><td>\(frames)</td><td>\(predicted)</td><td>\(pct(b.precision.indices.contains(c) ? b.precision[c] : nil))</td>"
            out += "<td>\(pct(b.recall.indices.contains(c) ? b.recall[c] : nil))</td><td>\(pct(b.f1.indices.contains(c) ? b.f1[c] : nil))</td></tr>"
        }
        return out + "</tbody></table>"
    }

    /// The whole page: title, summary, charts, the best validation, the run's config and its final hash.
    public func html(run: String, config: String?, hash: String?, numerics: String, step: Int? = nil) -> String {
        var page = "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        page += "<title>Lockstep run \(RunReport.escape(run))</title><style>"
        page += "body{font-family:sans-serif;margin:16px;color:#222;max-width:1340px}h1{font-size:1.4em;overflow-wrap:anywhere}"
        page += "pre{background:#f4f4f4;padding:8px;font-size:12px;white-space:pre-wrap;overflow-wrap:anywhere}code{overflow-wrap:anywhere}"
        page += ".charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,520px),1fr));gap:12px}.chart{width:100%;height:auto}"
        page += ".best{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}.best>div{flex:1 1 320px;max-width:480px;overflow-x:auto}"
        page += ".confusion{width:100%;height:auto}table{border-collapse:collapse;font-size:13px}"
        page += "td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right}</style></head><body>"
        page += "<h1>Lockstep run: \(RunReport.escape(run))</h1>"
        page += "<p>\(steps) steps and \(validations) validations in metrics.jsonl"
        if let hash { page += "; checkpoint (step \(step ?? 0)) weights SHA-256 <code>\(hash)</code>, numerics: \(RunReport.escape(numerics))" }
        page += ".</p><div class=\"charts\">"
        for c in charts { page += "<div>" + RunReport.svg(c) + "</div>" }
        page += "</div>"
        if let b = best {
            page += "<h2>Best validation: step \(b.step)</h2><p>picked by \(RunReport.escape(b.select)) = \(RunReport.label(b.value))"
            if let a = b.accuracy { page += String(format: "; accuracy %.2f%%", 100 * a) }
            if let m = b.macroF1 { page += String(format: ", macro-F1 %.4f", m) }
            page += " (best.safetensors).</p><div class=\"best\">"
            if !b.confusion.isEmpty { page += "<div>" + RunReport.confusionSVG(b.confusion) + "</div>" }
            if !b.recall.isEmpty || !b.confusion.isEmpty { page += "<div>" + RunReport.perClassTable(b) + "</div>" }
            page += "</div>"
        }
        page += "<h2>Config</h2><pre>\(RunReport.escape(config ?? "(no config.toml)"))</pre>"
        if let lastLine { page += "<h2>Last metrics line</h2><pre>\(RunReport.escape(lastLine))</pre>" }
        return page + "</body></html>\n"
    }
}
