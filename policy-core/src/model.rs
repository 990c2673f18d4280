//! The nouns every front-end shares: subject, request, action, decision, diagnostic.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use serde::Serialize;

/// What a request wants to do (semantics.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Subscribe with a topic *filter*.
    Subscribe,
    /// The broker delivers a message on a topic *name* to the client.
    Read,
    /// The client publishes to a topic *name*.
    Publish,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Subscribe, Action::Read, Action::Publish];

    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "subscribe" => Some(Action::Subscribe),
            "read" => Some(Action::Read),
            "publish" => Some(Action::Publish),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Subscribe => "subscribe",
            Action::Read => "read",
            Action::Publish => "publish",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn permission(self) -> Permission {
        match self {
            Action::Subscribe => Permission::Subscribe,
            Action::Read => Permission::Read,
            Action::Publish => Permission::Publish,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A capability granted by the role layer (`roles.group_permissions` / `scope_permissions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    Subscribe,
    Read,
    Publish,
    Superuser,
}

impl Permission {
    pub fn parse(s: &str) -> Option<Permission> {
        match s {
            "subscribe" => Some(Permission::Subscribe),
            "read" => Some(Permission::Read),
            "publish" => Some(Permission::Publish),
            "superuser" => Some(Permission::Superuser),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Subscribe => "subscribe",
            Permission::Read => "read",
            Permission::Publish => "publish",
            Permission::Superuser => "superuser",
        }
    }

    pub(crate) fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of permissions, as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Permissions(pub(crate) u8);

impl Permissions {
    pub fn has(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }
    pub(crate) fn add(&mut self, p: Permission) {
        self.0 |= p.bit();
    }
    pub(crate) fn union(&mut self, other: Permissions) {
        self.0 |= other.0;
    }
    pub fn iter(self) -> impl Iterator<Item = Permission> {
        [Permission::Subscribe, Permission::Read, Permission::Publish, Permission::Superuser]
            .into_iter()
            .filter(move |p| self.has(*p))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SubjectType {
    User,
    Service,
    /// A client known by its TLS certificate (never made from token claims).
    Device,
}

impl SubjectType {
    pub const ALL: [SubjectType; 3] = [SubjectType::User, SubjectType::Service, SubjectType::Device];

    pub fn parse(s: &str) -> Option<SubjectType> {
        match s {
            "user" => Some(SubjectType::User),
            "service" => Some(SubjectType::Service),
            "device" => Some(SubjectType::Device),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectType::User => "user",
            SubjectType::Service => "service",
            SubjectType::Device => "device",
        }
    }
}

/// Who asks (semantics.md §1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subject {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: SubjectType,
    pub groups: Vec<String>,
    pub scopes: Vec<String>,
}

/// What a request says about the message (semantics.md §1): for publish and read, the
/// message's QoS and whether it is retained; for subscribe, the QoS the client asks for (a
/// subscription is no message: it has no retain flag). `None`: the front end cannot see it
/// (go-auth sends neither), and conditions on it are decided as §3 says for unknown values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Message {
    /// 0, 1 or 2.
    pub qos: Option<u8>,
    pub retain: Option<bool>,
}

impl Message {
    /// Nothing known about the message.
    pub const UNKNOWN: Message = Message { qos: None, retain: None };

    /// A message (or subscription) whose QoS and retain flag are known.
    pub const fn known(qos: u8, retain: bool) -> Message {
        Message { qos: Some(qos), retain: Some(retain) }
    }
}

/// The answer: allowed or not, which rule decided (`id` or `rules[N]`), and a short reason
/// for people. A reason never contains a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allow: bool,
    pub rule: Option<String>,
    pub reason: String,
}

impl Decision {
    pub(crate) fn deny(reason: String) -> Decision {
        Decision { allow: false, rule: None, reason }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// A finding about a policy document, located by JSON path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// e.g. `celine.mqtt.acl.rules[3].topics[1]`; empty for the document as a whole.
    pub path: String,
    pub message: String,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        if self.path.is_empty() {
            write!(f, "{sev}: {}", self.message)
        } else {
            write!(f, "{sev}: {}: {}", self.path, self.message)
        }
    }
}
