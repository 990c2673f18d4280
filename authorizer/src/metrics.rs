//! The decision metrics both front ends serve, under one set of names:
//!
//! - `mqtt_policy_decisions_total{action,decision}`: checks decided, by action and outcome;
//! - `mqtt_policy_decision_cache_total{result}`: whether the front end's decision cache held
//!   the answer;
//! - `mqtt_policy_check_duration_seconds`: the time to decide one check from the cache (the
//!   lookup) or the module (the call), never a front end's own work (a log-linear histogram,
//!   4 buckets per power of two from 64 ns to ~17 ms; one check in [`SAMPLE`] is timed, the
//!   first included).
//!
//! - `mqtt_policy_wildcard_subscriptions_total{subject_type,group}`: subscriptions granted
//!   with a wildcard filter (`+` or `#`), once per group of the subject (`group=""` for a
//!   subject without groups); at most [`WILDCARD_LABELS`] label pairs, the rest counted under
//!   `group="<other>"` (groups come from tokens: their number is not the service's to choose).
//!
//! Counted in stripes (one per thread, cache-line sized), so the service's worker threads
//! never write each other's cache lines: one uncontended atomic add per counter. Wildcard
//! subscriptions are rare next to checks, and counted under a lock.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use policy_engine::{Action, Subject};

/// The most (subject type, group) pairs `mqtt_policy_wildcard_subscriptions_total` keeps.
pub const WILDCARD_LABELS: usize = 256;

/// The group label of the groups counted past [`WILDCARD_LABELS`] (no Keycloak group path
/// holds angle brackets).
pub const OVERFLOW_GROUP: &str = "<other>";

/// Latency buckets: 4 per power of two from 64 ns, then one open bucket.
const SUB: usize = 4;
const FIRST_POW: u32 = 6;
const POWERS: usize = 18;
const BUCKETS: usize = SUB * POWERS + 1;
const STRIPES: usize = 16;

/// One check in this many is timed: reading the clock twice costs about as much as a cached
/// decision.
pub const SAMPLE: u64 = 8;

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

#[repr(align(128))]
struct Stripe {
    /// `[subscribe, read, publish][allow, deny]`.
    decisions: [[AtomicU64; 2]; 3],
    /// `[hit, miss]`.
    cache: [AtomicU64; 2],
    latency: [AtomicU64; BUCKETS],
    latency_ns: AtomicU64,
}

impl Default for Stripe {
    fn default() -> Stripe {
        Stripe {
            decisions: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            cache: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_ns: AtomicU64::new(0),
        }
    }
}

/// The decision metrics of one authorizer.
pub struct DecisionMetrics {
    stripes: Box<[Stripe]>,
    /// Granted wildcard subscriptions by (subject type, group).
    wildcards: Mutex<BTreeMap<(&'static str, String), u64>>,
}

impl Default for DecisionMetrics {
    fn default() -> DecisionMetrics {
        DecisionMetrics {
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
            wildcards: Mutex::default(),
        }
    }
}

thread_local! {
    static STRIPE: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Relaxed) % STRIPES
    };
}

fn action_index(a: Action) -> usize {
    match a {
        Action::Subscribe => 0,
        Action::Read => 1,
        Action::Publish => 2,
    }
}

const ACTIONS: [&str; 3] = ["subscribe", "read", "publish"];

impl DecisionMetrics {
    fn stripe(&self) -> &Stripe {
        &self.stripes[STRIPE.with(|s| *s)]
    }

    /// One check decided: its action, its outcome, and whether a decision cache held it
    /// (`None`: no cache was asked: a superuser, an identity that could not be named, an
    /// expired token, a front end that does not cache this kind of check).
    pub fn decided(&self, action: Action, allow: bool, cached: Option<bool>) {
        let s = self.stripe();
        s.decisions[action_index(action)][usize::from(!allow)].fetch_add(1, Relaxed);
        if let Some(hit) = cached {
            s.cache[usize::from(!hit)].fetch_add(1, Relaxed);
        }
    }

    /// `n` checks allowed at once, without a cache (a front end that counts them itself and
    /// adds them up now and then).
    pub fn allowed_at_once(&self, action: Action, n: u64) {
        if n > 0 {
            self.stripe().decisions[action_index(action)][0].fetch_add(n, Relaxed);
        }
    }

    /// A subscription with a wildcard filter was granted to `subject`: counted once per group.
    pub fn wildcard_granted(&self, subject: &Subject) {
        let Ok(mut counts) = self.wildcards.lock() else { return };
        let kind = subject.kind_str();
        let groups: Vec<&str> = if subject.groups.is_empty() {
            vec![""]
        } else {
            subject.groups.iter().map(String::as_str).collect()
        };
        for group in groups {
            let key = (kind, group.to_string());
            // One overflow series per subject type: the bound holds whatever the types.
            let room = WILDCARD_LABELS - policy_core::SubjectType::ALL.len();
            let key = if counts.contains_key(&key) || counts.len() < room {
                key
            } else {
                (kind, String::from(OVERFLOW_GROUP))
            };
            *counts.entry(key).or_default() += 1;
        }
    }

    /// Granted wildcard subscriptions counted for (subject type, group).
    pub fn wildcards(&self, kind: &str, group: &str) -> u64 {
        let Ok(counts) = self.wildcards.lock() else { return 0 };
        counts.iter().filter(|((k, g), _)| *k == kind && g == group).map(|(_, n)| n).sum()
    }

    /// The time one check took ([`crate::Authorizer::lookup`] times one in [`SAMPLE`]).
    pub fn check_took(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let s = self.stripe();
        s.latency[bucket_of(ns)].fetch_add(1, Relaxed);
        s.latency_ns.fetch_add(ns, Relaxed);
    }

    fn sum(&self, f: impl Fn(&Stripe) -> &AtomicU64) -> u64 {
        self.stripes.iter().map(|s| f(s).load(Relaxed)).sum()
    }

    /// Checks decided so far: (allowed, denied).
    pub fn allowed_and_denied(&self) -> (u64, u64) {
        let by = |deny: usize| (0..3).map(|a| self.sum(|s| &s.decisions[a][deny])).sum();
        (by(0), by(1))
    }

    /// Decisions for one action and outcome.
    pub fn decisions(&self, action: Action, allow: bool) -> u64 {
        self.sum(|s| &s.decisions[action_index(action)][usize::from(!allow)])
    }

    /// Decision-cache lookups: (hits, misses).
    pub fn cache(&self) -> (u64, u64) {
        (self.sum(|s| &s.cache[0]), self.sum(|s| &s.cache[1]))
    }

    /// The bucket bound at or below which fraction `q` of the timed checks lie, in ns.
    pub fn quantile_ns(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = (0..BUCKETS).map(|i| self.sum(|s| &s.latency[i])).collect();
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

    /// The metrics in Prometheus' text format.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP mqtt_policy_wildcard_subscriptions_total Subscriptions granted with a wildcard filter, by subject type and group (each group of the subject).\n\
             # TYPE mqtt_policy_wildcard_subscriptions_total counter"
        );
        if let Ok(counts) = self.wildcards.lock() {
            for ((kind, group), n) in counts.iter() {
                let group = group.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                let _ = writeln!(
                    out,
                    "mqtt_policy_wildcard_subscriptions_total{{subject_type=\"{kind}\",group=\"{group}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP mqtt_policy_decisions_total ACL checks decided, by action and decision.\n\
             # TYPE mqtt_policy_decisions_total counter"
        );
        for (a, name) in ACTIONS.iter().enumerate() {
            for (d, decision) in ["allow", "deny"].iter().enumerate() {
                let n = self.sum(|s| &s.decisions[a][d]);
                let _ = writeln!(
                    out,
                    "mqtt_policy_decisions_total{{action=\"{name}\",decision=\"{decision}\"}} {n}"
                );
            }
        }
        let (hits, misses) = self.cache();
        let _ = writeln!(
            out,
            "# HELP mqtt_policy_decision_cache_total ACL decision-cache lookups (the service's shared cache, the plugin's per-connection one).\n\
             # TYPE mqtt_policy_decision_cache_total counter\n\
             mqtt_policy_decision_cache_total{{result=\"hit\"}} {hits}\n\
             mqtt_policy_decision_cache_total{{result=\"miss\"}} {misses}"
        );
        let _ = writeln!(
            out,
            "# HELP mqtt_policy_check_duration_seconds Time to decide one check from the decision cache or the policy module (one check in 8 is timed).\n\
             # TYPE mqtt_policy_check_duration_seconds histogram"
        );
        let mut cumulative = 0;
        for i in 0..BUCKETS {
            cumulative += self.sum(|s| &s.latency[i]);
            if i < BUCKETS - 1 {
                let le = upper_ns(i) as f64 / 1e9;
                let _ =
                    writeln!(out, "mqtt_policy_check_duration_seconds_bucket{{le=\"{le:e}\"}} {cumulative}");
            }
        }
        let sum = self.sum(|s| &s.latency_ns) as f64 / 1e9;
        let _ = writeln!(
            out,
            "mqtt_policy_check_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}\n\
             mqtt_policy_check_duration_seconds_sum {sum}\n\
             mqtt_policy_check_duration_seconds_count {cumulative}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_subscriptions_are_counted_per_group_with_bounded_labels() {
        let m = DecisionMetrics::default();
        let subject = |groups: &[&str]| Subject {
            id: "u1".into(),
            type_: policy_engine::SubjectType::User,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            scopes: vec![],
        };
        m.wildcard_granted(&subject(&["viewers", "editors"]));
        m.wildcard_granted(&subject(&["viewers"]));
        m.wildcard_granted(&subject(&[]));
        assert_eq!(
            (m.wildcards("user", "viewers"), m.wildcards("user", "editors"), m.wildcards("user", "")),
            (2, 1, 1)
        );
        // Groups come from tokens: past the bound, they are counted as one.
        for n in 0..2 * WILDCARD_LABELS {
            m.wildcard_granted(&subject(&[&format!("g{n}")]));
        }
        let mut text = String::new();
        m.render(&mut text);
        let lines =
            text.lines().filter(|l| l.starts_with("mqtt_policy_wildcard_subscriptions_total{")).count();
        assert!(lines <= WILDCARD_LABELS, "{lines}");
        assert!(m.wildcards("user", OVERFLOW_GROUP) > WILDCARD_LABELS as u64 / 2, "{text}");
        assert!(
            text.contains(
                "mqtt_policy_wildcard_subscriptions_total{subject_type=\"user\",group=\"viewers\"} 2"
            )
        );
    }

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
    fn counts_and_quantiles_come_from_every_thread() {
        let m = DecisionMetrics::default();
        assert_eq!(m.quantile_ns(0.5), None);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..25 {
                        m.check_took(Duration::from_nanos(500));
                        m.decided(Action::Read, true, Some(true));
                    }
                });
            }
        });
        m.decided(Action::Publish, false, Some(false));
        m.decided(Action::Subscribe, true, None);
        assert_eq!(m.allowed_and_denied(), (101, 1));
        assert_eq!(m.cache(), (100, 1), "a check no cache was asked for is no lookup");
        let p50 = m.quantile_ns(0.5).unwrap();
        assert!((500..=600).contains(&p50), "{p50}");
        let mut text = String::new();
        m.render(&mut text);
        assert!(
            text.contains("mqtt_policy_decisions_total{action=\"read\",decision=\"allow\"} 100"),
            "{text}"
        );
        assert!(text.contains("mqtt_policy_check_duration_seconds_count 100"), "{text}");
    }
}
