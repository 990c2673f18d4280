//! What the plugin counts and measures, and the two ways operators read it: Prometheus text
//! (`plugin_opt_metrics_listen`) and retained `$SYS/broker/mqtt-policy/...` messages
//! (`plugin_opt_sys_interval`). Metric names are the HTTP service's where the meaning is the
//! same.
//!
//! Atomics written only by the broker thread ([`bump`]: a load and a store, no locked
//! instruction) and read from anywhere: a check pays a few plain increments, not a lock or
//! an allocation.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use policy_engine::{Action, Live};

/// Adds one to a counter only the broker thread writes (readers see it a moment later).
pub fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Relaxed).wrapping_add(1), Relaxed);
}

/// Latency buckets: 4 per power of two from 64 ns to ~17 ms, then one open bucket.
const SUB: usize = 4;
const FIRST_POW: u32 = 6;
const POWERS: usize = 18;
const BUCKETS: usize = SUB * POWERS + 1;

/// A log-linear latency histogram (≤ 19% relative error per bucket).
pub struct Histogram {
    counts: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram { counts: std::array::from_fn(|_| AtomicU64::new(0)), sum_ns: AtomicU64::new(0) }
    }
}

/// The upper bound, in ns, of bucket `i` (the last is unbounded).
fn upper_ns(i: usize) -> u64 {
    let pow = FIRST_POW + (i / SUB) as u32;
    let base = 1u64 << pow;
    base + base / SUB as u64 * (i % SUB + 1) as u64
}

/// The bucket holding `ns`: bucket `i` holds (`upper_ns(i - 1)`, `upper_ns(i)`], as
/// Prometheus' `le` means.
fn bucket_of(ns: u64) -> usize {
    let ns = ns.saturating_sub(1);
    if ns < (1 << FIRST_POW) {
        return 0;
    }
    let pow = 63 - ns.leading_zeros();
    if pow >= FIRST_POW + POWERS as u32 {
        return BUCKETS - 1;
    }
    let base = 1u64 << pow;
    let within = ((ns - base) * SUB as u64 / base) as usize;
    (pow - FIRST_POW) as usize * SUB + within
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        bump(&self.counts[bucket_of(ns)]);
        self.sum_ns.store(self.sum_ns.load(Relaxed).wrapping_add(ns), Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// The bucket bound at or below which fraction `q` of the samples lie, in ns.
    pub fn quantile_ns(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Some(if i == BUCKETS - 1 { u64::MAX } else { upper_ns(i) });
            }
        }
        None
    }
}

/// Everything the plugin counts.
#[derive(Default)]
pub struct Stats {
    pub connections_accepted: AtomicU64,
    pub connections_refused: AtomicU64,
    pub connections_current: AtomicU64,
    /// `[subscribe, read, publish][allow, deny]`.
    decisions: [[AtomicU64; 2]; 3],
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub check_latency: Histogram,
    /// Connections disconnected because their token expired.
    pub expiry_disconnects: AtomicU64,
    /// MQTT 5 re-authentications (AUTH 0x19) accepted and refused.
    pub reauth_accepted: AtomicU64,
    pub reauth_refused: AtomicU64,
    /// Clients this plugin did not admit, known by their certificate, and not known at all.
    pub certificate_clients: AtomicU64,
    pub unknown_clients: AtomicU64,
    /// Identities kept for an address that turned out to hold another client.
    pub stale_entries: AtomicU64,
    /// Denial log lines not written (a client over its log budget).
    pub log_lines_suppressed: AtomicU64,
    /// What pulling bundles did, when the plugin pulls them.
    pub pull: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<policy_engine::pull::PullStatus>>>,
}

fn action_index(a: Action) -> usize {
    match a {
        Action::Subscribe => 0,
        Action::Read => 1,
        Action::Publish => 2,
    }
}

const ACTIONS: [&str; 3] = ["subscribe", "read", "publish"];

impl Stats {
    pub fn decided(&self, action: Action, allow: bool) {
        bump(&self.decisions[action_index(action)][usize::from(!allow)]);
    }

    pub fn decisions(&self, action: Action, allow: bool) -> u64 {
        self.decisions[action_index(action)][usize::from(!allow)].load(Relaxed)
    }

    fn allowed_and_denied(&self) -> (u64, u64) {
        self.decisions.iter().fold((0, 0), |(a, d), x| (a + x[0].load(Relaxed), d + x[1].load(Relaxed)))
    }

    /// Prometheus text exposition.
    pub fn render_prometheus(&self, live: &Live) -> String {
        let mut out = String::new();
        let g = live.current();
        let (swaps, rejections) = live.swap_counts();
        let mut metric = |name: &str, kind: &str, help: &str, rows: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let load = |a: &AtomicU64| a.load(Relaxed);
        metric(
            "mqtt_policy_connections_total",
            "counter",
            "CONNECTs decided by the plugin.",
            &[
                ("{result=\"accepted\"}".into(), load(&self.connections_accepted)),
                ("{result=\"refused\"}".into(), load(&self.connections_refused)),
            ],
        );
        metric(
            "mqtt_policy_connections",
            "gauge",
            "Authenticated connections now.",
            &[(String::new(), load(&self.connections_current))],
        );
        let mut rows = Vec::new();
        for (i, a) in ACTIONS.iter().enumerate() {
            for (j, d) in ["allow", "deny"].iter().enumerate() {
                rows.push((format!("{{action=\"{a}\",decision=\"{d}\"}}"), load(&self.decisions[i][j])));
            }
        }
        metric(
            "mqtt_policy_decisions_total",
            "counter",
            "ACL checks decided, by action and decision.",
            &rows,
        );
        metric(
            "mqtt_policy_decision_cache_total",
            "counter",
            "Per-connection decision cache lookups.",
            &[
                ("{result=\"hit\"}".into(), load(&self.cache_hits)),
                ("{result=\"miss\"}".into(), load(&self.cache_misses)),
            ],
        );
        metric(
            "mqtt_policy_expiry_disconnects_total",
            "counter",
            "Connections the plugin disconnected because their token expired.",
            &[(String::new(), load(&self.expiry_disconnects))],
        );
        metric(
            "mqtt_policy_reauthentications_total",
            "counter",
            "MQTT 5 re-authentications (AUTH, method jwt) with a fresh token.",
            &[
                ("{result=\"accepted\"}".into(), load(&self.reauth_accepted)),
                ("{result=\"refused\"}".into(), load(&self.reauth_refused)),
            ],
        );
        metric(
            "mqtt_policy_unadmitted_clients_total",
            "counter",
            "Clients this plugin did not admit (a certificate listener, another plugin): known by their certificate, or not known (every check denied).",
            &[
                ("{identity=\"certificate\"}".into(), load(&self.certificate_clients)),
                ("{identity=\"none\"}".into(), load(&self.unknown_clients)),
            ],
        );
        metric(
            "mqtt_policy_stale_identities_total",
            "counter",
            "Identities kept for a client's address that were found to belong to an earlier client and dropped.",
            &[(String::new(), load(&self.stale_entries))],
        );
        metric(
            "mqtt_policy_denial_log_lines_suppressed_total",
            "counter",
            "Denial log lines not written because a client was over its budget (10, then 1 a second).",
            &[(String::new(), load(&self.log_lines_suppressed))],
        );
        if let Some(pull) = self.pull.get() {
            let rows: Vec<(String, u64)> = pull
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .results
                .iter()
                .map(|(r, n)| (format!("{{result=\"{r}\"}}"), *n))
                .collect();
            metric(
                "mqtt_policy_bundle_pulls_total",
                "counter",
                "Bundle pulls by result (untrusted: not signed by a trusted key; rejected: failed the test gate).",
                &rows,
            );
        }
        metric(
            "mqtt_policy_module_traps_total",
            "counter",
            "Policy module calls that trapped or ran out of time (each denied its request).",
            &[(String::new(), g.module.runtime().faults())],
        );
        metric(
            "mqtt_policy_swaps_total",
            "counter",
            "Candidate generations applied or rejected.",
            &[("{result=\"applied\"}".into(), swaps), ("{result=\"rejected\"}".into(), rejections)],
        );
        metric("mqtt_policy_generation", "gauge", "The live policy generation.", &[(String::new(), g.id)]);
        let _ = writeln!(
            out,
            "# HELP mqtt_policy_check_duration_seconds Time to decide one ACL check inside the broker (one check in 8 is timed).\n\
             # TYPE mqtt_policy_check_duration_seconds histogram"
        );
        let mut cumulative = 0;
        for (i, c) in self.check_latency.counts.iter().enumerate() {
            cumulative += c.load(Relaxed);
            if i < BUCKETS - 1 {
                let le = upper_ns(i) as f64 / 1e9;
                let _ =
                    writeln!(out, "mqtt_policy_check_duration_seconds_bucket{{le=\"{le:e}\"}} {cumulative}");
            }
        }
        let _ = writeln!(out, "mqtt_policy_check_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            out,
            "mqtt_policy_check_duration_seconds_sum {}\nmqtt_policy_check_duration_seconds_count {cumulative}",
            self.check_latency.sum_ns.load(Relaxed) as f64 / 1e9
        );
        out
    }

    /// `(topic below $SYS/broker/mqtt-policy/, value)` pairs for the retained `$SYS` messages.
    pub fn sys_values(&self, live: &Live) -> Vec<(&'static str, String)> {
        let g = live.current();
        let (swaps, rejections) = live.swap_counts();
        let (allowed, denied) = self.allowed_and_denied();
        let ns = |q| self.check_latency.quantile_ns(q).map(|v| v.to_string()).unwrap_or_default();
        vec![
            ("generation", g.id.to_string()),
            ("policy/hash", g.policy_hash.clone()),
            ("policy/rules", g.rule_count.to_string()),
            ("connections/current", self.connections_current.load(Relaxed).to_string()),
            ("connections/accepted", self.connections_accepted.load(Relaxed).to_string()),
            ("connections/refused", self.connections_refused.load(Relaxed).to_string()),
            ("connections/expired", self.expiry_disconnects.load(Relaxed).to_string()),
            ("connections/reauthenticated", self.reauth_accepted.load(Relaxed).to_string()),
            ("connections/reauthentication-refused", self.reauth_refused.load(Relaxed).to_string()),
            ("checks/allowed", allowed.to_string()),
            ("checks/denied", denied.to_string()),
            ("checks/faults", g.module.runtime().faults().to_string()),
            ("checks/latency-p50-ns", ns(0.5)),
            ("checks/latency-p99-ns", ns(0.99)),
            ("swaps/applied", swaps.to_string()),
            ("swaps/rejected", rejections.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_contain_their_samples() {
        for i in 1..BUCKETS - 1 {
            assert!(upper_ns(i) > upper_ns(i - 1), "{i}");
        }
        for ns in [0, 63, 64, 65, 80, 81, 100, 1_000, 1_234, 50_000, 1 << 22, (1 << 22) + 1, 17_000_000] {
            let b = bucket_of(ns);
            assert!(ns <= upper_ns(b), "{ns} in bucket {b} ≤ {}", upper_ns(b));
            if b > 0 {
                assert!(ns > upper_ns(b - 1), "{ns} above bucket {}", b - 1);
            }
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_come_from_the_samples() {
        let h = Histogram::default();
        assert_eq!(h.quantile_ns(0.5), None);
        for _ in 0..99 {
            h.record(Duration::from_nanos(500));
        }
        h.record(Duration::from_micros(100));
        let p50 = h.quantile_ns(0.5).unwrap();
        assert!((500..=600).contains(&p50), "{p50}");
        let p99 = h.quantile_ns(0.99).unwrap();
        assert!((500..=600).contains(&p99), "{p99}");
        let max = h.quantile_ns(1.0).unwrap();
        assert!((100_000..=120_000).contains(&max), "{max}");
        assert_eq!(h.count(), 100);
    }
}
