import FlyingFox
import Formats
import Foundation
import Prometheus
import Training

/// `coord start --metrics-port P`: the run's figures in the Prometheus text format at
/// `http://HOST:P/metrics`, served from its own threads while the run trains. Fed by the
/// metrics log, so it shows exactly what `metrics.jsonl` records.
public final class MetricsEndpoint: @unchecked Sendable {
    let registry = PrometheusCollectorRegistry()
    let server: HTTPServer
    public private(set) var port: UInt16 = 0
    private let step, totalSteps, loss, lr, fps, workers, coordinator: Gauge
    /// Made at the first validation: a run without one shows no validation figures.
    private var validLoss, validAccuracy: Gauge?
    private let reissued, bytesSent, bytesReceived, stepsDone: Counter
    private let stepSeconds: ValueHistogram

    /// Listens on `host:port` (port 0: a free one) and returns once it does.
    public init(host: String, port: UInt16, totalSteps total: Int) throws {
        let r = registry
        func d(_ name: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(namespace: "lockstep", metricName: name, unitName: unit, helpText: help)
        }
        step = r.makeGauge(descriptor: d("step", "", "Optimizer steps done"))
        totalSteps = r.makeGauge(descriptor: d("total_steps", "", "Steps the run ends at"))
        loss = r.makeGauge(descriptor: d("loss", "", "Mean NLL per frame of the last step's batch"))
        lr = r.makeGauge(descriptor: d("learning_rate", "", "Learning rate of the last step"))
        fps = r.makeGauge(descriptor: d("frames_per_second", "", "Valid frames per second of the last step"))
        workers = r.makeGauge(descriptor: d("workers_alive", "", "Workers alive at the end of the last step (0: --local)"))
        coordinator = r.makeGauge(descriptor: d("coordinator", "seconds", "Coordinator time of the last step: reduce, clip, optimizer, sending work"))
        reissued = r.makeCounter(descriptor: d("shards_reissued", "total", "Shards given to another worker (dead or straggling)"))
        bytesSent = r.makeCounter(descriptor: d("bytes_sent", "total", "Bytes the coordinator sent on its socket"))
        bytesReceived = r.makeCounter(descriptor: d("bytes_received", "total", "Bytes the coordinator received on its socket"))
        stepsDone = r.makeCounter(descriptor: d("steps", "total", "Steps done by this process"))
        stepSeconds = r.makeValueHistogram(descriptor: d("step", "seconds", "Wall time of a step, from its work going out to its last result"),
                                           buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10])
        totalSteps.set(Double(total))
        server = HTTPServer(address: try .inet(ip4: host, port: port), timeout: 10, logger: .disabled)
        let registry = self.registry
        let listening = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var failure: Error? = nil
        let server = self.server
        Task.detached {
            await server.appendRoute("GET /metrics") { _ in
                HTTPResponse(statusCode: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                             body: Data(registry.emitToBuffer()))
            }
            do {
                async let running: Void = server.run()
                try await server.waitUntilListening(timeout: 10)
                listening.signal()
                try await running
            } catch {
                failure = error
                listening.signal()
            }
        }
        listening.wait()
        if let failure {
            throw LockstepError("--metrics-port: cannot listen on \(host):\(port): \(failure)", hint: "choose another --metrics-port (0 picks a free one)")
        }
        let address = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var bound: UInt16 = 0
        Task.detached {
            if case .ip4(_, let p) = await server.listeningAddress { bound = p }
            address.signal()
        }
        address.wait()
        self.port = bound
    }

    public func observe(_ r: StepReport) {
        step.set(Double(r.step))
        stepsDone.increment()
        if r.loss.isFinite { loss.set(r.loss) }
        lr.set(Double(r.lr))
        fps.set(r.seconds > 0 ? Double(r.frames) / r.seconds : 0)
        workers.set(Double(r.workersAlive))
        coordinator.set(r.coordinatorSeconds)
        if r.reissued > 0 { reissued.increment(by: Int64(r.reissued)) }
        bytesSent.increment(by: Int64(r.bytesSent))
        bytesReceived.increment(by: Int64(r.bytesReceived))
        stepSeconds.record(r.seconds)
    }

    public func observe(_ v: ValidationReport) {
        if validLoss == nil {
            validLoss = registry.makeGauge(descriptor: MetricNameDescriptor(namespace: "lockstep", metricName: "valid_loss", unitName: "",
                                                                            helpText: "Mean NLL per frame of the last validation"))
            validAccuracy = registry.makeGauge(descriptor: MetricNameDescriptor(namespace: "lockstep", metricName: "valid_accuracy", unitName: "",
                                                                                helpText: "Frame accuracy of the last validation"))
        }
        validLoss?.set(v.sums.loss)
        validAccuracy?.set(v.sums.accuracy)
    }
}
