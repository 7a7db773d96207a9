import Foundation

/// `coord report`: one self-contained HTML page (inline SVG, no script, no network) with a
/// run's curves, read from what the run directory holds now (a run still going included).
public struct RunReport {
    /// One plotted line: its name, colour and (step, value) points.
    public struct Series: Equatable {
        public let name: String
        public let color: String
        public var points: [(x: Double, y: Double)]
        /// A dot on every point (validations, which are few), and a faint line (the raw curve
        /// beside its smoothed one).
        public var dots = false
        public var faint = false
        public init(name: String, color: String, points: [(x: Double, y: Double)], dots: Bool = false, faint: Bool = false) {
            self.name = name; self.color = color; self.points = points; self.dots = dots; self.faint = faint
        }
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
        /// A dashed vertical line at a step, with its label (the best validation).
        public var vline: (x: Double, label: String)? = nil
    }

    /// The validation that picked best.safetensors: its step, the figure it was picked by, and
    /// its confusion counts (rows true class, columns predicted) and per-class figures.
    public struct BestValidation {
        public let step: Int
        public let select: String, value: Double
        public let confusion: [[Int]]
        public let precision: [Double?], recall: [Double?], f1: [Double?]
        public let macroF1: Double?, accuracy: Double?
    }

    public var charts: [Chart] = []
    public var steps = 0, validations = 0
    public var lastLine: String? = nil
    public var best: BestValidation? = nil

    /// Debiased exponential moving average (TensorBoard's smoothing) with weight `w`.
    public static func smoothed(_ p: [(x: Double, y: Double)], weight w: Double = 0.9) -> [(x: Double, y: Double)] {
        var last = 0.0, debias = 0.0
        return p.map { q in
            last = last * w + (1 - w) * q.y
            debias = debias * w + (1 - w)
            return (q.x, last / debias)
        }
    }

    static let palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]

    /// The charts of a run's `metrics.jsonl` lines.
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
        let trainLoss = pts(train, "loss")
        var loss = Chart(title: "Loss (mean NLL per frame)", yLabel: "loss",
                         series: [Series(name: "train", color: "#1f77b4", points: trainLoss, faint: trainLoss.count > 10)])
        if trainLoss.count > 10 { loss.series.append(Series(name: "train, smoothed (0.9)", color: "#1f77b4", points: RunReport.smoothed(trainLoss))) }
        if !valid.isEmpty { loss.series.append(Series(name: "validation", color: "#d62728", points: pts(valid, "valid_loss"), dots: true)) }
        best = RunReport.bestValidation(valid)
        if let b = best { loss.vline = (Double(b.step), "best: step \(b.step)") }
        charts.append(loss)
        if !valid.isEmpty {
            var acc = Chart(title: "Validation accuracy and macro-F1 (frames)", yLabel: "fraction",
                            series: [Series(name: "accuracy", color: "#d62728", points: pts(valid, "valid_accuracy"), dots: true)])
            let f1 = pts(valid, "valid_macro_f1")
            if !f1.isEmpty { acc.series.append(Series(name: "macro-F1", color: "#9467bd", points: f1, dots: true)) }
            acc.vline = loss.vline
            charts.append(acc)
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
        // A cluster's: a local run has no workers to show.
        let alive = pts(train, "workers_alive"), reissued = pts(train, "shards_reissued")
        if (alive + reissued).contains(where: { $0.y != 0 }) {
            charts.append(Chart(title: "Workers alive and shards re-issued", yLabel: "count",
                                series: [Series(name: "workers alive", color: "#17becf", points: alive),
                                         Series(name: "shards re-issued", color: "#d62728", points: reissued)]))
        }
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

    /// The last validation line's best step, and that step's own line.
    static func bestValidation(_ valid: [[String: Any]]) -> BestValidation? {
        guard let last = valid.last, let step = (last["valid_best_step"] as? NSNumber)?.intValue,
              let line = valid.last(where: { ($0["step"] as? NSNumber)?.intValue == step }) else { return nil }
        let key = last.keys.first { $0.hasPrefix("valid_best_") && $0 != "valid_best_step" } ?? "valid_best_loss"
        func column(_ k: String) -> [Double?] { (line[k] as? [Any])?.map { ($0 as? NSNumber)?.doubleValue } ?? [] }
        let confusion = (line["valid_confusion"] as? [[Any]])?.map { $0.map { ($0 as? NSNumber)?.intValue ?? 0 } } ?? []
        return BestValidation(step: step, select: String(key.dropFirst("valid_best_".count)), value: (last[key] as? NSNumber)?.doubleValue ?? .nan,
                              confusion: confusion, precision: column("valid_precision"), recall: column("valid_recall"), f1: column("valid_f1"),
                              macroF1: (line["valid_macro_f1"] as? NSNumber)?.doubleValue, accuracy: (line["valid_accuracy"] as? NSNumber)?.doubleValue)
    }
}
