//! Prometheus metrics, `execgo_runtime_` prefix, base units. Counters count
//! transitions seen by this process; the gauges are read from the store at
//! scrape time, so they are exact after a restart too.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub tasks_total: IntCounterVec,
    pub task_errors_total: IntCounterVec,
    pub task_duration_seconds: Histogram,
    pub dispatch_latency_seconds: Histogram,
    pub tasks_running: IntGauge,
    pub tasks_queued: IntGauge,
    pub helper_up: IntGauge,
    pub helper_reconnects_total: IntCounter,
    pub capacity: IntGaugeVec,
    pub reserved: IntGaugeVec,
    pub connections_refused_total: IntCounterVec,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are static; a failure here is a programming error
    // caught by the unit test below.
    r.unwrap_or_else(|e| panic!("invalid metric definition: {e}"))
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let tasks_total = must(IntCounterVec::new(
            Opts::new(
                "execgo_runtime_tasks_total",
                "Tasks that reached each status (accepted, running, success, failed, cancelled).",
            ),
            &["status"],
        ));
        let task_errors_total = must(IntCounterVec::new(
            Opts::new(
                "execgo_runtime_task_errors_total",
                "Tasks that ended with each error code.",
            ),
            &["code"],
        ));
        let task_duration_seconds = must(Histogram::with_opts(
            HistogramOpts::new(
                "execgo_runtime_task_duration_seconds",
                "Run time of finished tasks, from exec to exit.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 1800.0,
            ]),
        ));
        let dispatch_latency_seconds = must(Histogram::with_opts(
            HistogramOpts::new(
                "execgo_runtime_dispatch_latency_seconds",
                "Time from accepting a task to its process running.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 10.0, 60.0,
            ]),
        ));
        let tasks_running = must(IntGauge::new(
            "execgo_runtime_tasks_running",
            "Tasks running now.",
        ));
        let tasks_queued = must(IntGauge::new(
            "execgo_runtime_tasks_queued",
            "Tasks accepted and not yet running.",
        ));
        let helper_up = must(IntGauge::new(
            "execgo_runtime_helper_up",
            "1 when the helper answered its last request, else 0.",
        ));
        let helper_reconnects_total = must(IntCounter::new(
            "execgo_runtime_helper_reconnects_total",
            "Times the helper connection was re-established (embedded helper restarted).",
        ));
        let capacity = must(IntGaugeVec::new(
            Opts::new(
                "execgo_runtime_capacity",
                "Capacity of the resource ledger (task_slots, memory_bytes, pids).",
            ),
            &["resource"],
        ));
        let reserved = must(IntGaugeVec::new(
            Opts::new(
                "execgo_runtime_reserved",
                "Capacity reserved by tasks now (task_slots, memory_bytes, pids).",
            ),
            &["resource"],
        ));
        let connections_refused_total = must(IntCounterVec::new(
            Opts::new(
                "execgo_runtime_connections_refused_total",
                "Connections to the runtime's listeners answered 403 because they come from a \
                 task (task) or from a local peer whose owner could not be established \
                 (unknown_owner).",
            ),
            &["reason"],
        ));
        for reason in ["task", "unknown_owner"] {
            connections_refused_total.with_label_values(&[reason]);
        }
        for c in [
            Box::new(tasks_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(task_errors_total.clone()),
            Box::new(task_duration_seconds.clone()),
            Box::new(dispatch_latency_seconds.clone()),
            Box::new(tasks_running.clone()),
            Box::new(tasks_queued.clone()),
            Box::new(helper_up.clone()),
            Box::new(helper_reconnects_total.clone()),
            Box::new(capacity.clone()),
            Box::new(reserved.clone()),
            Box::new(connections_refused_total.clone()),
        ] {
            must(registry.register(c));
        }
        for status in execgo_runtime_protocol::TaskStatus::ALL {
            tasks_total.with_label_values(&[status.as_str()]);
        }
        // Every known code has its series at 0 from the start, so alerts
        // and rates see it before the first failure.
        for code in execgo_runtime_protocol::TaskErrorCode::ALL {
            task_errors_total.with_label_values(&[code.as_str()]);
        }
        Metrics {
            registry,
            tasks_total,
            task_errors_total,
            task_duration_seconds,
            dispatch_latency_seconds,
            tasks_running,
            tasks_queued,
            helper_up,
            helper_reconnects_total,
            capacity,
            reserved,
            connections_refused_total,
        }
    }

    /// Sets the ledger gauges from `capacity` and `reserved`.
    pub fn ledger(&self, capacity: &crate::ledger::Amounts, reserved: &crate::ledger::Amounts) {
        let set = |g: &IntGaugeVec, a: &crate::ledger::Amounts| {
            g.with_label_values(&["task_slots"])
                .set(a.task_slots as i64);
            if let Some(m) = a.memory_bytes {
                g.with_label_values(&["memory_bytes"]).set(m as i64);
            }
            if let Some(p) = a.pids {
                g.with_label_values(&["pids"]).set(p as i64);
            }
        };
        set(&self.capacity, capacity);
        set(&self.reserved, reserved);
    }

    pub fn status(&self, status: execgo_runtime_protocol::TaskStatus) {
        self.tasks_total.with_label_values(&[status.as_str()]).inc();
    }

    /// Text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_contract_metrics() {
        let m = Metrics::new();
        m.status(execgo_runtime_protocol::TaskStatus::Success);
        m.task_errors_total
            .with_label_values(&["exit_nonzero"])
            .inc();
        m.task_duration_seconds.observe(0.5);
        let text = m.render();
        for name in [
            "execgo_runtime_tasks_total{status=\"success\"} 1",
            "execgo_runtime_tasks_total{status=\"failed\"} 0",
            "execgo_runtime_tasks_running",
            "execgo_runtime_task_errors_total{code=\"exit_nonzero\"} 1",
            "execgo_runtime_task_errors_total{code=\"timeout\"} 0",
            "execgo_runtime_task_errors_total{code=\"sandbox_setup_failed\"} 0",
            "execgo_runtime_task_duration_seconds_bucket",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
    }
}
