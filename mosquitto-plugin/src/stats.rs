//! What the plugin counts and measures, and the two ways operators read it: Prometheus text
//! (`plugin_opt_metrics_listen`) and retained `$SYS/broker/mqtt-policy/...` messages
//! (`plugin_opt_sys_interval`). The decision metrics (decisions, decision cache, check
//! latency) are the authorizer's, the ones the HTTP service serves under the same names;
//! what is counted here is the plugin's own: connections, re-authentications, clients it
//! did not admit, log lines it held back.
//!
//! The plugin's own counters are atomics written only by the broker thread ([`bump`]: a load
//! and a store, no locked instruction) and read from anywhere. A check also pays the
//! authorizer's two uncontended atomic adds (its decision and cache counters, striped per
//! thread), never a lock or an allocation.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use authorizer::DecisionMetrics;
use policy_engine::Live;

use crate::usage::Over;

/// Adds one to a counter only the broker thread writes (readers see it a moment later).
pub fn bump(counter: &AtomicU64) {
    add(counter, 1);
}

/// Adds `n` to a counter only the broker thread writes.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

/// What was done with a client a swap took a subscription from, as
/// `mqtt_policy_revoked_clients_total{action}` names it, in the order of
/// [`Stats::revoked_clients`].
pub const REVOKED_ACTIONS: [&str; 3] = ["kept", "disconnected", "unsubscribed"];
pub const REVOKED_KEPT: usize = 0;
pub const REVOKED_DISCONNECTED: usize = 1;
pub const REVOKED_UNSUBSCRIBED: usize = 2;

/// Everything the plugin counts.
pub struct Stats {
    /// The authorizer's decision metrics.
    pub decisions: Arc<DecisionMetrics>,
    pub connections_accepted: AtomicU64,
    pub connections_refused: AtomicU64,
    pub connections_current: AtomicU64,
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
    /// Requests refused for being over a limit, by [`Over::index`].
    pub limit_refusals: [AtomicU64; 5],
    /// Subscriptions connected clients held that a new generation no longer grants, and
    /// those clients by what was done ([`REVOKED_ACTIONS`]).
    pub revoked_subscriptions: AtomicU64,
    pub revoked_clients: [AtomicU64; 3],
    /// What pulling bundles did, when the plugin pulls them.
    pub pull: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<policy_engine::pull::PullStatus>>>,
}

impl Stats {
    pub fn new(decisions: Arc<DecisionMetrics>) -> Stats {
        let zero = || AtomicU64::new(0);
        Stats {
            decisions,
            connections_accepted: zero(),
            connections_refused: zero(),
            connections_current: zero(),
            expiry_disconnects: zero(),
            reauth_accepted: zero(),
            reauth_refused: zero(),
            certificate_clients: zero(),
            unknown_clients: zero(),
            stale_entries: zero(),
            log_lines_suppressed: zero(),
            limit_refusals: std::array::from_fn(|_| zero()),
            revoked_subscriptions: zero(),
            revoked_clients: std::array::from_fn(|_| zero()),
            pull: std::sync::OnceLock::new(),
        }
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
        let refusals: Vec<(String, u64)> = Over::LABELS
            .iter()
            .zip(&self.limit_refusals)
            .map(|(label, n)| (format!("{{limit=\"{label}\"}}"), load(n)))
            .collect();
        metric(
            "mqtt_policy_limit_refusals_total",
            "counter",
            "Publishes and subscriptions refused for being over the client's limits (the policy's limits section), by limit.",
            &refusals,
        );
        metric(
            "mqtt_policy_revoked_subscriptions_total",
            "counter",
            "Subscriptions connected clients held that a new policy generation no longer grants (re-decided after each swap).",
            &[(String::new(), load(&self.revoked_subscriptions))],
        );
        metric(
            "mqtt_policy_revoked_clients_total",
            "counter",
            "Connected clients that lost a subscription to a new policy generation, by what on_revoke did.",
            &REVOKED_ACTIONS
                .iter()
                .zip(&self.revoked_clients)
                .map(|(action, n)| (format!("{{action=\"{action}\"}}"), load(n)))
                .collect::<Vec<_>>(),
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
        self.decisions.render(&mut out);
        out
    }

    /// `(topic below $SYS/broker/mqtt-policy/, value)` pairs for the retained `$SYS` messages.
    pub fn sys_values(&self, live: &Live) -> Vec<(&'static str, String)> {
        let g = live.current();
        let (swaps, rejections) = live.swap_counts();
        let (allowed, denied) = self.decisions.allowed_and_denied();
        let ns = |q| self.decisions.quantile_ns(q).map(|v| v.to_string()).unwrap_or_default();
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
            (
                "checks/over-limits",
                self.limit_refusals.iter().map(|n| n.load(Relaxed)).sum::<u64>().to_string(),
            ),
            ("checks/latency-p50-ns", ns(0.5)),
            ("checks/latency-p99-ns", ns(0.99)),
            ("swaps/applied", swaps.to_string()),
            ("swaps/revoked-subscriptions", self.revoked_subscriptions.load(Relaxed).to_string()),
            ("swaps/rejected", rejections.to_string()),
        ]
    }
}
