//! What one connection has used of its limits (the policy's `limits` section, semantics.md
//! §6): the subscriptions it holds, and its publish rates as token buckets. Counting happens
//! on the broker thread, with no allocation per message: a bucket is one number, and the
//! subscription set grows only on a SUBSCRIBE. The subscriptions are also what a swap
//! re-decides (`plugin.rs`, revocation).
//!
//! The limits themselves come from the policy (`policy_core::Limits`, through the module);
//! this module only counts against them, and says which one a refused request is over.

use std::collections::BTreeMap;

use policy_core::{Limits, Rate};

/// A limit a request is over: the record's reason and the metric's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    Payload { size: u32, max: u32 },
    Retain,
    Messages(Rate),
    Bytes(Rate),
    Subscriptions { max: u32 },
}

impl Over {
    /// Every label, in the order of [`Over::index`].
    pub const LABELS: [&'static str; 5] =
        ["max_payload_bytes", "retain", "publish_messages", "publish_bytes", "max_subscriptions"];

    pub fn index(self) -> usize {
        match self {
            Over::Payload { .. } => 0,
            Over::Retain => 1,
            Over::Messages(_) => 2,
            Over::Bytes(_) => 3,
            Over::Subscriptions { .. } => 4,
        }
    }

    pub fn reason(self) -> String {
        match self {
            Over::Payload { size, max } => {
                format!("over its limit: a payload of {size} bytes is more than max_payload_bytes {max}")
            }
            Over::Retain => "over its limit: its limits refuse retained publishes (retain: false)".into(),
            Over::Messages(r) => {
                format!("over its limit: more than {} publishes a second (burst {})", r.per_second, r.burst)
            }
            Over::Bytes(r) => {
                format!(
                    "over its limit: more than {} payload bytes a second (burst {})",
                    r.per_second, r.burst
                )
            }
            Over::Subscriptions { max } => {
                format!("over its limit: it holds max_subscriptions {max} subscriptions already")
            }
        }
    }
}

/// A token bucket kept as the time it is full again (the generic cell-rate algorithm): one
/// number per bucket, no refill arithmetic on a clock tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bucket {
    /// Nanoseconds (on the plugin's monotonic clock) when everything taken so far is paid
    /// back at the rate.
    due: u64,
}

impl Bucket {
    /// Nanoseconds `units` take to refill at `per_second` units a second, rounded up: a unit
    /// is never free however high the rate, and a burst of `n` holds `n` units exactly, as
    /// each unit taken is rounded up at least as much as the burst.
    fn refill(units: u64, per_second: u32) -> u64 {
        let ns = (u128::from(units) * 1_000_000_000).div_ceil(u128::from(per_second.max(1)));
        u64::try_from(ns).unwrap_or(u64::MAX)
    }

    /// The bucket after taking `units` at `now`, or `None` when that is more than the burst
    /// allows.
    fn after(self, rate: Rate, units: u64, now: u64) -> Option<Bucket> {
        let due = self.due.max(now).saturating_add(Self::refill(units, rate.per_second));
        (due - now <= Self::refill(u64::from(rate.burst), rate.per_second)).then_some(Bucket { due })
    }
}

/// A publish [`Usage::admits_publish`] admitted: the buckets once it is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Admitted {
    messages: Bucket,
    bytes: Bucket,
}

/// A subscription a connection holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The QoS it was asked at.
    pub qos: u8,
    /// A swap's pass found the live policy no longer grants it (reported once, until a
    /// later generation grants it again or the client subscribes anew).
    pub revoked: bool,
}

/// One connection's use of its limits.
#[derive(Debug, Default, Clone)]
pub struct Usage {
    /// The filters this connection subscribed to and did not leave, with the QoS each was
    /// asked at: a repeated SUBSCRIBE of a filter replaces it and counts once. Kept whatever
    /// the limits (the filter's bytes, as the broker keeps them too), so a limit a swap brings
    /// counts what the client holds already, and a swap can re-decide each one.
    subscriptions: BTreeMap<Box<str>, Held>,
    messages: Bucket,
    bytes: Bucket,
}

impl Usage {
    /// Whether a publish of `size` payload bytes (retained or not, or not known) fits the
    /// limits at `now`, checked in this order: payload size, retain, message rate, byte
    /// rate. The buckets are not taken from: [`Usage::published`] does that with the
    /// answer, once the policy allowed the publish.
    pub fn admits_publish(
        &self,
        limits: &Limits,
        size: u32,
        retain: Option<bool>,
        now: u64,
    ) -> Result<Admitted, Over> {
        if let Some(max) = limits.max_payload_bytes
            && size > max
        {
            return Err(Over::Payload { size, max });
        }
        if !limits.retain && retain == Some(true) {
            return Err(Over::Retain);
        }
        let messages = match limits.publish_messages {
            Some(rate) => self.messages.after(rate, 1, now).ok_or(Over::Messages(rate))?,
            None => self.messages,
        };
        let bytes = match limits.publish_bytes {
            Some(rate) => self.bytes.after(rate, u64::from(size), now).ok_or(Over::Bytes(rate))?,
            None => self.bytes,
        };
        Ok(Admitted { messages, bytes })
    }

    /// Takes an admitted publish from the buckets.
    pub fn published(&mut self, admitted: Admitted) {
        (self.messages, self.bytes) = (admitted.messages, admitted.bytes);
    }

    /// What a new connection of the same client carries over: the buckets always (a
    /// reconnect earns no fresh burst), the subscriptions when it resumes the session (which
    /// Mosquitto then hands it).
    pub fn carried(&self, resumes_session: bool) -> Usage {
        Usage {
            subscriptions: if resumes_session { self.subscriptions.clone() } else { BTreeMap::new() },
            messages: self.messages,
            bytes: self.bytes,
        }
    }

    /// Whether a SUBSCRIBE to `filter` fits: one it holds already is replaced, so it always
    /// does.
    pub fn admits_subscription(&self, limits: &Limits, filter: &str) -> Result<(), Over> {
        match limits.max_subscriptions {
            Some(max)
                if !self.subscriptions.contains_key(filter) && self.subscriptions.len() >= max as usize =>
            {
                Err(Over::Subscriptions { max })
            }
            _ => Ok(()),
        }
    }

    /// Records a granted subscription, asked at `qos`.
    pub fn subscribed(&mut self, filter: &str, qos: u8) {
        let held = Held { qos, revoked: false };
        match self.subscriptions.get_mut(filter) {
            Some(h) => *h = held,
            None => {
                self.subscriptions.insert(filter.into(), held);
            }
        }
    }

    /// Records an UNSUBSCRIBE.
    pub fn unsubscribed(&mut self, filter: &str) {
        self.subscriptions.remove(filter);
    }

    /// The filters held.
    pub fn filters(&self) -> impl Iterator<Item = (&str, Held)> {
        self.subscriptions.iter().map(|(f, h)| (&**f, *h))
    }

    /// The filters held, to mark as revoked or granted again.
    pub fn filters_mut(&mut self) -> impl Iterator<Item = (&str, &mut Held)> {
        self.subscriptions.iter_mut().map(|(f, h)| (&**f, h))
    }

    /// The subscriptions counted against the limit.
    pub fn subscriptions(&self) -> usize {
        self.subscriptions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn limits() -> Limits {
        Limits {
            max_subscriptions: Some(2),
            max_payload_bytes: Some(100),
            publish_messages: Some(Rate { per_second: 10, burst: 3 }),
            publish_bytes: None,
            retain: false,
        }
    }

    #[test]
    fn a_burst_passes_then_the_rate_refills_it() {
        let (l, mut u) = (limits(), Usage::default());
        let t0 = 5 * SECOND;
        for i in 0..3 {
            u.published(
                u.admits_publish(&l, 10, Some(false), t0)
                    .unwrap_or_else(|o| panic!("burst message {i}: {o:?}")),
            );
        }
        assert_eq!(
            u.admits_publish(&l, 10, Some(false), t0),
            Err(Over::Messages(Rate { per_second: 10, burst: 3 }))
        );
        // One message's worth (a tenth of a second) later, exactly one more.
        let later = t0 + SECOND / 10;
        u.published(u.admits_publish(&l, 10, None, later).unwrap());
        assert!(u.admits_publish(&l, 10, None, later).is_err());
        // A refused message takes nothing: a second later the whole burst is back.
        let rested = later + SECOND;
        for _ in 0..3 {
            u.published(u.admits_publish(&l, 10, None, rested).unwrap());
        }
    }

    #[test]
    fn bytes_are_counted_by_payload_size() {
        let l = Limits { publish_bytes: Some(Rate { per_second: 1000, burst: 1500 }), ..Limits::NONE };
        let mut u = Usage::default();
        u.published(u.admits_publish(&l, 1000, None, SECOND).unwrap());
        assert_eq!(
            u.admits_publish(&l, 600, None, SECOND),
            Err(Over::Bytes(Rate { per_second: 1000, burst: 1500 }))
        );
        assert!(u.admits_publish(&l, 500, None, SECOND).is_ok());
        assert_eq!(
            u.admits_publish(&l, 1501, None, 100 * SECOND),
            Err(Over::Bytes(Rate { per_second: 1000, burst: 1500 })),
            "more than the burst never fits"
        );
        assert!(u.admits_publish(&l, 0, None, SECOND).is_ok());
    }

    #[test]
    fn payload_size_and_retain_are_refused_whatever_the_rate() {
        let (l, u) = (limits(), Usage::default());
        assert_eq!(
            u.admits_publish(&l, 101, Some(false), SECOND),
            Err(Over::Payload { size: 101, max: 100 })
        );
        assert_eq!(u.admits_publish(&l, 1, Some(true), SECOND), Err(Over::Retain));
        assert!(u.admits_publish(&l, 1, None, SECOND).is_ok(), "an unknown flag is not a retained publish");
        assert!(Usage::default().admits_publish(&Limits::NONE, u32::MAX, Some(true), 0).is_ok());
    }

    #[test]
    fn subscriptions_count_filters_once_and_free_on_unsubscribe() {
        let (l, mut u) = (limits(), Usage::default());
        for f in ["a/#", "b/#"] {
            assert_eq!(u.admits_subscription(&l, f), Ok(()));
            u.subscribed(f, 1);
        }
        assert_eq!(u.admits_subscription(&l, "a/#"), Ok(()), "a filter it holds is replaced");
        u.subscribed("a/#", 0);
        assert_eq!(u.admits_subscription(&l, "c/#"), Err(Over::Subscriptions { max: 2 }));
        u.unsubscribed("b/#");
        assert_eq!(u.admits_subscription(&l, "c/#"), Ok(()));
        assert_eq!(
            u.filters().map(|(f, h)| (f, h.qos)).collect::<Vec<_>>(),
            [("a/#", 0)],
            "renewed at QoS 0"
        );
    }

    #[test]
    fn a_new_connection_of_the_client_carries_its_buckets_and_a_resumed_sessions_subscriptions() {
        let (l, mut u) = (limits(), Usage::default());
        for _ in 0..3 {
            u.published(u.admits_publish(&l, 1, None, SECOND).unwrap());
        }
        u.subscribed("x", 1);
        let resumed = u.carried(true);
        assert!(resumed.admits_publish(&l, 1, None, SECOND).is_err(), "no fresh burst");
        assert_eq!(resumed.subscriptions(), 1);
        let clean = u.carried(false);
        assert!(clean.admits_publish(&l, 1, None, SECOND).is_err());
        assert_eq!(clean.subscriptions(), 0, "a clean start holds no subscriptions");
    }

    #[test]
    fn rounding_gives_the_burst_and_never_more() {
        // 3 a second: a third of a second is 333,333,333.3 ns; taking one costs 333,333,334.
        let rate = Rate { per_second: 3, burst: 1 };
        let b = Bucket::default().after(rate, 1, SECOND).unwrap();
        assert!(b.after(rate, 1, SECOND + 333_333_333).is_none());
        assert!(b.after(rate, 1, SECOND + 333_333_334).is_some());
        // A rate beyond a unit a nanosecond still charges each unit.
        let fast = Rate { per_second: u32::MAX, burst: 1 };
        let b = Bucket::default().after(fast, 1, SECOND).unwrap();
        assert!(b.after(fast, 1, SECOND).is_none());
    }
}
