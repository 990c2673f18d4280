//! Audit lines: one per decision, the authorizer's [`DecisionRecord`] (the record the broker
//! plugin logs too), written to the log queue (`logqueue.rs`) without going through
//! `tracing`'s field formatting, which cost about a fifth of `/mqtt/acl`'s throughput.
//!
//! Format, like the other log lines (`--log-format`):
//! - pretty: `2026-11-26T16:20:01.123456Z  INFO audit: {"endpoint":"acl","subject":"alice",
//!   "subject_type":"user","username":"alice","clientid":"c1","topic":"celine/t",
//!   "action":"read","decision":"allow","rule":"viewers-read","reason":"..."}` (one line);
//! - json: `{"timestamp":"…","level":"INFO","target":"audit","endpoint":"acl",…}`.
//!
//! On or off with the log filter: `MQTT_POLICY_LOG=info,audit=off` turns them off.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use authorizer::DecisionRecord;

use crate::logqueue::QueueWriter;

/// Where audit lines go: the log queue, in the log's format.
#[derive(Clone)]
pub struct Audit {
    queue: QueueWriter,
    json: bool,
}

thread_local! {
    /// The formatted date and time of the last second a line was stamped with.
    static STAMP: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

impl Audit {
    pub fn new(queue: QueueWriter, json: bool) -> Audit {
        Audit { queue, json }
    }

    /// Log lines (of any kind) dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.queue.dropped()
    }

    /// Whether audit lines are written at all (a caller may skip making a record's parts).
    pub fn enabled(&self) -> bool {
        tracing::enabled!(target: "audit", tracing::Level::INFO)
    }

    pub fn write(&self, e: &DecisionRecord<'_>) {
        if !self.enabled() {
            return;
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let json = self.json;
        self.queue.gather(now.as_secs(), |line| {
            if json {
                json_line(line, e, now);
            } else {
                pretty_line(line, e, now);
            }
        });
    }
}

fn pretty_line(line: &mut Vec<u8>, e: &DecisionRecord<'_>, now: Duration) {
    timestamp(line, now);
    line.extend_from_slice(b"  INFO audit: {");
    e.write_members(line);
    line.extend_from_slice(b"}\n");
}

fn json_line(line: &mut Vec<u8>, e: &DecisionRecord<'_>, now: Duration) {
    line.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(line, now);
    line.extend_from_slice(b"\",\"level\":\"INFO\",\"target\":\"audit\",");
    e.write_members(line);
    line.extend_from_slice(b"}\n");
}

/// Appends a time (since the Unix epoch) as RFC 3339 in UTC with microseconds
/// (`2026-11-26T16:20:01.123456Z`).
fn timestamp(out: &mut Vec<u8>, now: Duration) {
    let secs = now.as_secs();
    STAMP.with_borrow_mut(|(at, text)| {
        if *at != secs {
            *at = secs;
            text.clear();
            let (y, m, d) = civil_from_days((secs / 86_400) as i64);
            let t = secs % 86_400;
            let _ = write!(text, "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60);
        }
        out.extend_from_slice(text.as_bytes());
    });
    let micros = now.subsec_micros();
    out.push(b'.');
    out.extend((0..6).rev().map(|i| b'0' + (micros / 10u32.pow(i) % 10) as u8));
    out.push(b'Z');
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(topic: &'a str, reason: &'a str) -> DecisionRecord<'a> {
        DecisionRecord {
            endpoint: "acl",
            subject: "alice",
            subject_type: "user",
            username: "",
            clientid: "c1",
            topic,
            action: "read",
            decision: "allow",
            rule: "viewers-read",
            reason,
            watch: None,
        }
    }

    #[test]
    fn dates_match_the_calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_418), (2025, 11, 26));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn pretty_lines_hold_the_record_as_json() {
        let mut line = Vec::new();
        let record = entry("a b=\"c\"\n", "allowed by rule 'x'");
        pretty_line(&mut line, &record, Duration::from_secs(1_764_174_001));
        let line = String::from_utf8(line).unwrap();
        let (stamp, rest) = line.split_once("  INFO audit: ").unwrap();
        assert_eq!(stamp, "2025-11-26T16:20:01.000000Z");
        assert_eq!(rest, format!("{}\n", record.to_json()), "the plugin's record, as it logs it");
        let v: serde_json::Value = serde_json::from_str(rest).unwrap();
        assert_eq!(v["topic"], "a b=\"c\"\n");
    }

    #[test]
    fn json_lines_are_json_with_every_field() {
        let mut line = Vec::new();
        json_line(&mut line, &entry("t/\u{1}\"\\", "r"), Duration::from_micros(1_764_174_001_123_456));
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["target"], "audit");
        assert_eq!(v["topic"], "t/\u{1}\"\\");
        assert_eq!(v["username"], "");
        assert_eq!(v["timestamp"], "2025-11-26T16:20:01.123456Z");
    }
}
