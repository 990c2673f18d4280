//! A subject prepared for many decisions under one loaded policy: what the decision procedure
//! would otherwise work out about the subject on every request (its capabilities from
//! `roles`, which of the index's buckets can hold its rules), found once.
//!
//! A front end that decides many requests for one subject (a broker connection) prepares it
//! once per policy generation; [`Policy::check_prepared`] then decides exactly as
//! [`Policy::check`] would for the same query (the property tests in `tests/properties.rs` hold
//! it to that), only without the per-request lookups. It owns no meaning of its own.

use crate::decide::Query;
use crate::index::Slots;
use crate::model::{Action, Decision, Permissions, Subject};
use crate::policy::Policy;

/// A subject, with what one policy needs to know about it for every decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    subject: Subject,
    /// The [`Policy::id`] it was prepared for.
    policy: u64,
    capabilities: Option<Permissions>,
    slots: Slots,
}

impl Prepared {
    pub fn subject(&self) -> &Subject {
        &self.subject
    }
}

impl Policy {
    /// Prepares `subject` for decisions under this policy.
    pub fn prepare(&self, subject: Subject) -> Prepared {
        Prepared {
            policy: self.id,
            capabilities: self.capabilities(&subject),
            slots: self.index.slots(&subject),
            subject,
        }
    }

    /// Decides one request of a prepared subject: the same decision as [`Policy::check`] for
    /// that subject. Prepared under another policy, it is decided the long way.
    pub fn check_prepared(
        &self,
        prepared: &Prepared,
        action: Action,
        topic: &str,
        clientid: &str,
        username: &str,
    ) -> Decision {
        let q = Query { subject: &prepared.subject, action, topic, clientid, username };
        if prepared.policy == self.id {
            self.decide(prepared.capabilities, &prepared.slots, &q)
        } else {
            self.check(&q)
        }
    }
}
