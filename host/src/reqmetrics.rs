//! The metrics every go-auth call touches: requests by endpoint and outcome, and their
//! latency. (Decisions, the decision cache and the check latency are the authorizer's, the
//! same metrics the broker plugin serves.)
//!
//! Counted in stripes, one per worker thread (cache-line sized, assigned round-robin), so the
//! threads never write each other's cache lines: one uncontended atomic add per counter. A
//! shared counter costs more than the rest of a cached decision's bookkeeping at 100,000
//! requests a second. `/metrics` sums the stripes; the other metrics stay with the `metrics`
//! crate's recorder.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

pub const ENDPOINTS: [&str; 3] = ["user", "superuser", "acl"];
pub const OUTCOMES: [&str; 3] = ["allow", "deny", "bad_request"];

/// Latency bucket bounds (`le`), in seconds and in nanoseconds.
const BOUNDS: [(&str, u64); 12] = [
    ("0.0001", 100_000),
    ("0.00025", 250_000),
    ("0.0005", 500_000),
    ("0.001", 1_000_000),
    ("0.0025", 2_500_000),
    ("0.005", 5_000_000),
    ("0.01", 10_000_000),
    ("0.025", 25_000_000),
    ("0.05", 50_000_000),
    ("0.1", 100_000_000),
    ("0.25", 250_000_000),
    ("1", 1_000_000_000),
];

const STRIPES: usize = 16;

#[repr(align(128))]
struct Stripe {
    /// `[endpoint][outcome]`.
    requests: [[AtomicU64; 3]; 3],
    /// `[endpoint][bucket]`, the last past every bound.
    latency: [[AtomicU64; BOUNDS.len() + 1]; 3],
    latency_ns: [AtomicU64; 3],
}

impl Stripe {
    const fn new() -> Stripe {
        Stripe {
            requests: [const { [const { AtomicU64::new(0) }; 3] }; 3],
            latency: [const { [const { AtomicU64::new(0) }; BOUNDS.len() + 1] }; 3],
            latency_ns: [const { AtomicU64::new(0) }; 3],
        }
    }
}

static STRIPED: [Stripe; STRIPES] = [const { Stripe::new() }; STRIPES];

fn stripe() -> &'static Stripe {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Relaxed) % STRIPES;
    }
    &STRIPED[MINE.try_with(|i| *i).unwrap_or(0)]
}

/// One request answered: `endpoint` and `outcome` index [`ENDPOINTS`] and [`OUTCOMES`].
pub fn request(endpoint: usize, outcome: usize, took: Duration) {
    let s = stripe();
    s.requests[endpoint][outcome].fetch_add(1, Relaxed);
    let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
    let bucket = BOUNDS.iter().position(|(_, b)| ns <= *b).unwrap_or(BOUNDS.len());
    s.latency[endpoint][bucket].fetch_add(1, Relaxed);
    s.latency_ns[endpoint].fetch_add(ns, Relaxed);
}

fn total(f: impl Fn(&Stripe) -> &AtomicU64) -> u64 {
    STRIPED.iter().map(|s| f(s).load(Relaxed)).fold(0, u64::wrapping_add)
}

/// Prometheus text for these metrics, appended to `out`.
pub fn render(out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP mqtt_policy_requests_total go-auth calls answered, by endpoint and outcome\n\
         # TYPE mqtt_policy_requests_total counter"
    );
    for (e, endpoint) in ENDPOINTS.iter().enumerate() {
        for (o, outcome) in OUTCOMES.iter().enumerate() {
            let n = total(|s| &s.requests[e][o]);
            let _ = writeln!(
                out,
                "mqtt_policy_requests_total{{endpoint=\"{endpoint}\",outcome=\"{outcome}\"}} {n}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP mqtt_policy_request_duration_seconds time from a go-auth call's arrival to its answer\n\
         # TYPE mqtt_policy_request_duration_seconds histogram"
    );
    for (e, endpoint) in ENDPOINTS.iter().enumerate() {
        let mut seen = 0u64;
        for (b, (le, _)) in BOUNDS.iter().enumerate() {
            seen += total(|s| &s.latency[e][b]);
            let _ = writeln!(
                out,
                "mqtt_policy_request_duration_seconds_bucket{{endpoint=\"{endpoint}\",le=\"{le}\"}} {seen}"
            );
        }
        seen += total(|s| &s.latency[e][BOUNDS.len()]);
        let sum = total(|s| &s.latency_ns[e]) as f64 / 1e9;
        let _ = writeln!(
            out,
            "mqtt_policy_request_duration_seconds_bucket{{endpoint=\"{endpoint}\",le=\"+Inf\"}} {seen}\n\
             mqtt_policy_request_duration_seconds_sum{{endpoint=\"{endpoint}\"}} {sum}\n\
             mqtt_policy_request_duration_seconds_count{{endpoint=\"{endpoint}\"}} {seen}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counters are process-wide: this is the only test that records into them.
    #[test]
    fn stripes_from_many_threads_add_up_in_the_exposition() {
        std::thread::scope(|scope| {
            for _ in 0..20 {
                scope.spawn(|| {
                    for i in 0..100u64 {
                        request(2, 0, Duration::from_micros(i * 10));
                    }
                    request(0, 2, Duration::from_secs(3));
                });
            }
        });
        let mut text = String::new();
        render(&mut text);
        let line = |prefix: &str| {
            let l =
                text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("{prefix}\n{text}"));
            l.rsplit(' ').next().unwrap().to_string()
        };
        assert_eq!(line(r#"mqtt_policy_requests_total{endpoint="acl",outcome="allow"}"#), "2000");
        assert_eq!(line(r#"mqtt_policy_requests_total{endpoint="user",outcome="bad_request"}"#), "20");
        assert_eq!(line(r#"mqtt_policy_requests_total{endpoint="acl",outcome="deny"}"#), "0");
        // 0, 10, …, 990 µs: 11 of each 100 at or below 100 µs, 26 at or below 250 µs.
        assert_eq!(line(r#"mqtt_policy_request_duration_seconds_bucket{endpoint="acl",le="0.0001"}"#), "220");
        assert_eq!(
            line(r#"mqtt_policy_request_duration_seconds_bucket{endpoint="acl",le="0.00025"}"#),
            "520"
        );
        assert_eq!(line(r#"mqtt_policy_request_duration_seconds_bucket{endpoint="acl",le="1"}"#), "2000");
        assert_eq!(line(r#"mqtt_policy_request_duration_seconds_count{endpoint="acl"}"#), "2000");
        assert_eq!(line(r#"mqtt_policy_request_duration_seconds_sum{endpoint="acl"}"#), "0.99");
        // 3 s is past every bound: only in +Inf.
        assert_eq!(line(r#"mqtt_policy_request_duration_seconds_bucket{endpoint="user",le="1"}"#), "0");
        assert_eq!(line(r#"mqtt_policy_request_duration_seconds_bucket{endpoint="user",le="+Inf"}"#), "20");
    }
}
