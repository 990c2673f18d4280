//! What a new policy generation takes from connected clients: the subscriptions they hold
//! that it no longer grants, found by deciding each one again (as a SUBSCRIBE at the QoS it
//! was asked at) under the new generation, a slice of connections per broker tick so that a
//! swap with many connected clients never holds up the broker. `plugin.rs` drives the pass,
//! reports it and acts on it (`plugin_opt_on_revoke`); this module holds the pass and the
//! decision for one connection.
//!
//! Deliveries are decided one by one whatever this finds: keeping a revoked subscription
//! never delivers what the policy denies. What the pass adds is telling the operator (and,
//! with `disconnect`, the client) that a subscription is no longer granted.

use std::sync::Arc;

use policy_core::Message;
use policy_engine::{Action, Generation};

use crate::client::ClientKey;
use crate::connections::{Mapped, aim};
use crate::usage::Usage;

/// What the plugin does with a connected client that holds a subscription the live policy no
/// longer grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnRevoke {
    /// It stays connected; each delivery on that subscription is denied.
    #[default]
    Keep,
    /// It is disconnected (without its will), so it reconnects under the new policy and its
    /// SUBSCRIBE is decided again.
    Disconnect,
    /// Just that subscription is removed (Mosquitto 2.1's `mosquitto_subscription_delete`), in
    /// the tick that found it; the client stays connected and is not told. Where the broker
    /// cannot remove it, the client is disconnected instead.
    Unsubscribe,
}

impl OnRevoke {
    pub fn as_str(self) -> &'static str {
        match self {
            OnRevoke::Keep => "keep",
            OnRevoke::Disconnect => "disconnect",
            OnRevoke::Unsubscribe => "unsubscribe",
        }
    }
}

/// One client's lost subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    /// Where the client was found: it is acted on only if that entry still holds it.
    pub key: ClientKey,
    pub client_id: Box<str>,
    pub subject: String,
    /// Each filter, and why the generation refuses it.
    pub filters: Vec<(Box<str>, String)>,
    /// With `on_revoke unsubscribe`: the broker did not remove one of the filters, so the
    /// client is disconnected instead.
    pub removal_failed: bool,
}

/// Why a pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A new generation went live: every connected client is looked at.
    Swap,
    /// Clients re-authenticated under the live generation: those are looked at.
    Reauthentication,
}

/// A pass over connected clients under one generation.
pub struct Pass {
    pub generation: Arc<Generation>,
    pub cause: Cause,
    keys: Vec<ClientKey>,
    next: usize,
    pub lost: Vec<Lost>,
    /// The connected clients looked at, as the swap's report of whom its changes reach
    /// takes them (`Live::report_identities`, off the broker thread).
    pub identities: Vec<policy_engine::Identity>,
}

impl Pass {
    pub fn new(generation: Arc<Generation>, keys: Vec<ClientKey>, cause: Cause) -> Pass {
        Pass { generation, cause, keys, next: 0, lost: Vec::new(), identities: Vec::new() }
    }

    /// The next connection to look at.
    pub fn next_key(&mut self) -> Option<ClientKey> {
        let key = self.keys.get(self.next).copied();
        self.next += usize::from(key.is_some());
        key
    }

    /// Connections to look at too (re-authenticated under this generation), each once.
    pub fn add(&mut self, keys: impl IntoIterator<Item = ClientKey>) {
        for key in keys {
            if !self.keys[self.next..].contains(&key) {
                self.keys.push(key);
            }
        }
    }

    /// Connections looked at so far.
    pub fn checked(&self) -> usize {
        self.next
    }

    pub fn done(&self) -> bool {
        self.next >= self.keys.len()
    }
}

/// The filters of `usage` that `generation` no longer grants the connection `mapped` (mapped
/// under that generation) and that no earlier pass reported, with the reason of each
/// refusal; each is marked revoked (and a granted one unmarked). A filter the module could
/// not decide (a fault) is left as it was: its deliveries are still decided one by one.
pub fn lost_filters(
    generation: &Generation,
    mapped: &mut Mapped,
    usage: &mut Usage,
) -> Vec<(Box<str>, String)> {
    let mut lost = Vec::new();
    for (filter, held) in usage.filters_mut() {
        let message = Message { qos: (held.qos <= 2).then_some(held.qos), retain: None };
        aim(&mut mapped.request, Action::Subscribe, filter, message);
        let Ok(decision) = generation.try_check_prepared(mapped.prepared.as_ref(), &mapped.request) else {
            continue;
        };
        if !decision.allow && !held.revoked {
            lost.push((filter.into(), decision.reason));
        }
        held.revoked = !decision.allow;
    }
    lost
}
