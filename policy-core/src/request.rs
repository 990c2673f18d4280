//! Requests as JSON: what `mqtt-policy eval` reads on a line, what a policy test case holds.
//!
//! `{"subject": {...}}` or `{"claims": {...}}` (claims mapped as in semantics.md §4, with no
//! signature check: this is for testing policies, the host verifies real tokens), plus
//! `"action"` (`subscribe`, `read`, `publish`, or `superuser`), `"topic"`, and optional
//! `"clientid"` and `"username"`.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde::Serialize;

use crate::claims::subject_from_claims;
use crate::decide::Query;
use crate::invalid::Invalid;
use crate::json::{Json, Path, quote};
use crate::loader::{Loader, one_of};
use crate::model::{Action, Decision, Message, Subject, SubjectType};
use crate::policy::Policy;

/// What is asked: an ACL action, or the superuser question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ask {
    Subscribe,
    Read,
    Publish,
    Superuser,
}

impl Ask {
    pub fn parse(s: &str) -> Option<Ask> {
        match s {
            "superuser" => Some(Ask::Superuser),
            other => Action::parse(other).map(Ask::from),
        }
    }
    pub fn action(self) -> Option<Action> {
        match self {
            Ask::Subscribe => Some(Action::Subscribe),
            Ask::Read => Some(Action::Read),
            Ask::Publish => Some(Action::Publish),
            Ask::Superuser => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self.action() {
            Some(a) => a.as_str(),
            None => "superuser",
        }
    }
}

impl From<Action> for Ask {
    fn from(a: Action) -> Ask {
        match a {
            Action::Subscribe => Ask::Subscribe,
            Action::Read => Ask::Read,
            Action::Publish => Ask::Publish,
        }
    }
}

/// A parsed request, subject already resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalRequest {
    pub subject: Subject,
    pub ask: Ask,
    /// Ignored for `superuser`.
    pub topic: String,
    pub clientid: String,
    pub username: String,
    /// The message's QoS and retain flag (subscribe: the requested QoS), where known.
    pub message: Message,
}

/// Written in `mqtt-policy eval`'s input format: `subject`, `action`, `topic` (not for the
/// superuser question), `clientid` and `username` when they are not empty, and `qos` and
/// `retain` when they are known.
impl Serialize for EvalRequest {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = ser.serialize_map(None)?;
        m.serialize_entry("subject", &self.subject)?;
        m.serialize_entry("action", self.ask.as_str())?;
        if self.ask != Ask::Superuser {
            m.serialize_entry("topic", &self.topic)?;
        }
        if !self.clientid.is_empty() {
            m.serialize_entry("clientid", &self.clientid)?;
        }
        if !self.username.is_empty() {
            m.serialize_entry("username", &self.username)?;
        }
        if let Some(qos) = self.message.qos {
            m.serialize_entry("qos", &qos)?;
        }
        if let Some(retain) = self.message.retain {
            m.serialize_entry("retain", &retain)?;
        }
        m.end()
    }
}

impl EvalRequest {
    /// The ACL query, or `None` for the superuser question.
    pub fn query(&self) -> Option<Query<'_>> {
        Some(Query {
            subject: &self.subject,
            action: self.ask.action()?,
            topic: &self.topic,
            clientid: &self.clientid,
            username: &self.username,
            message: self.message,
        })
    }
}

impl Policy {
    /// Answers an [`EvalRequest`]: `check` for an action, `superuser` for the superuser question.
    pub fn evaluate(&self, r: &EvalRequest) -> Decision {
        match r.query() {
            Some(q) => self.check(&q),
            None => self.superuser(&r.subject),
        }
    }
}

const REQUEST_FIELDS: [&str; 8] =
    ["subject", "claims", "action", "topic", "clientid", "username", "qos", "retain"];

fn joined(errors: Vec<crate::model::Diagnostic>) -> String {
    let parts: Vec<String> = errors
        .into_iter()
        .map(|d| if d.path.is_empty() { d.message } else { format!("{}: {}", d.path, d.message) })
        .collect();
    parts.join("; ")
}

/// Parses one request object (an `eval` line). The error says which field is wrong.
pub fn parse_request(v: &Json) -> Result<EvalRequest, Invalid> {
    let mut l = Loader::default();
    let r = read_request(&mut l, v, &Path::root(), &[]);
    match r {
        Some(r) if l.errors.is_empty() => Ok(r),
        _ => Err(Invalid(joined(l.errors))),
    }
}

/// [`parse_request`] over JSON text.
pub fn parse_request_json(text: &str) -> Result<EvalRequest, Invalid> {
    parse_request(&Json::parse(text)?)
}

/// Parses a subject object `{"id", "type", "groups"?, "scopes"?}`.
pub fn parse_subject(v: &Json) -> Result<Subject, Invalid> {
    let mut l = Loader::default();
    let s = read_subject(&mut l, v, &Path::root());
    match s {
        Some(s) if l.errors.is_empty() => Ok(s),
        _ => Err(Invalid(joined(l.errors))),
    }
}

/// Reads a request object whose fields are the request's plus `extra` (which the caller
/// reads itself, e.g. a test case's `expect`).
pub(crate) fn read_request(l: &mut Loader, v: &Json, path: &Path, extra: &[&str]) -> Option<EvalRequest> {
    let known: Vec<&str> = REQUEST_FIELDS.iter().chain(extra).copied().collect();
    let f = l.object(v, path, &known)?;
    let before = l.errors.len();
    let subject = match (f.get("subject"), f.get("claims")) {
        (Some(s), None) => read_subject(l, s, &path.key("subject")),
        (None, Some(c)) => match subject_from_claims(c) {
            Ok(s) => Some(s),
            Err(e) => {
                l.error(&path.key("claims"), e.0);
                None
            }
        },
        (Some(_), Some(_)) => {
            l.error(path, "give either 'subject' or 'claims', not both".to_string());
            None
        }
        (None, None) => {
            l.error(path, "missing 'subject' (an object) or 'claims' (a token's claims)".to_string());
            None
        }
    };
    let ask = match f.get("action") {
        None => {
            l.error(path, "missing required field 'action'".to_string());
            None
        }
        Some(a) => l.string(a, &path.key("action")).and_then(|s| {
            let ask = Ask::parse(s);
            if ask.is_none() {
                l.error(
                    &path.key("action"),
                    format!(
                        "unknown action {} (expected {})",
                        quote(s),
                        one_of(&["subscribe", "read", "publish", "superuser"])
                    ),
                );
            }
            ask
        }),
    };
    let mut optional = |name: &str| -> String {
        f.get(name).and_then(|v| l.string(v, &path.key(name))).unwrap_or_default().to_string()
    };
    let clientid = optional("clientid");
    let username = optional("username");
    let topic = match f.get("topic") {
        Some(t) => l.string(t, &path.key("topic")).map(str::to_string),
        None if ask == Some(Ask::Superuser) => Some(String::new()),
        None => {
            l.error(path, "missing required field 'topic'".to_string());
            None
        }
    };
    let qos = f.get("qos").and_then(|v| match v {
        Json::Number(n) if *n == 0.0 || *n == 1.0 || *n == 2.0 => Some(*n as u8),
        Json::Number(n) => {
            l.error(&path.key("qos"), format!("unknown QoS level {n} (expected 0, 1 or 2)"));
            None
        }
        other => {
            l.error(&path.key("qos"), format!("expected a QoS level (0, 1 or 2), found {}", other.kind()));
            None
        }
    });
    let retain = f.get("retain").and_then(|v| match v {
        Json::Bool(b) => Some(*b),
        other => {
            l.error(&path.key("retain"), format!("expected true or false, found {}", other.kind()));
            None
        }
    });
    if ask == Some(Ask::Superuser) && (qos.is_some() || retain.is_some()) {
        l.error(path, "the superuser question has no message: remove 'qos' and 'retain'".to_string());
    }
    if ask == Some(Ask::Subscribe) && retain.is_some() {
        l.error(
            &path.key("retain"),
            "a subscription has no retain flag (its messages' flags are decided when they are read)"
                .to_string(),
        );
    }
    if l.errors.len() != before {
        return None;
    }
    let message = Message { qos, retain };
    Some(EvalRequest { subject: subject?, ask: ask?, topic: topic?, clientid, username, message })
}

fn read_subject(l: &mut Loader, v: &Json, path: &Path) -> Option<Subject> {
    let f = l.object(v, path, &["id", "type", "groups", "scopes"])?;
    let before = l.errors.len();
    let id = match f.get("id") {
        Some(id) => l.string(id, &path.key("id")),
        None => {
            l.error(path, "missing required field 'id'".to_string());
            None
        }
    };
    let kind = match f.get("type") {
        Some(t) => l.string(t, &path.key("type")).and_then(|s| {
            let k = SubjectType::parse(s);
            if k.is_none() {
                l.error(
                    &path.key("type"),
                    format!(
                        "unknown subject type {} (expected {})",
                        quote(s),
                        crate::loader::one_of(&crate::loader::SUBJECT_TYPES)
                    ),
                );
            }
            k
        }),
        None => {
            l.error(path, "missing required field 'type' ('user' or 'service')".to_string());
            None
        }
    };
    let mut strings = |name: &str| -> Vec<String> {
        let Some(v) = f.get(name) else { return Vec::new() };
        let p = path.key(name);
        let Some(items) = l.list(v, &p) else { return Vec::new() };
        items.iter().enumerate().filter_map(|(i, it)| l.string(it, &p.index(i)).map(str::to_string)).collect()
    };
    let groups = strings("groups");
    let scopes = strings("scopes");
    if l.errors.len() != before {
        return None;
    }
    Some(Subject { id: id?.to_string(), kind: kind?, groups, scopes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_line_parses_with_defaults() {
        let r = parse_request_json(r#"{"subject":{"id":"u1","type":"user"},"action":"read","topic":"a/b"}"#)
            .unwrap();
        assert_eq!((r.ask, r.clientid.as_str(), r.subject.groups.len()), (Ask::Read, "", 0));
        let r = parse_request_json(r#"{"claims":{"sub":"x"},"action":"superuser"}"#).unwrap();
        assert_eq!(r.ask, Ask::Superuser);
    }

    #[test]
    fn bad_requests_say_which_field() {
        let e = parse_request_json(r#"{"subject":{"id":"u1","type":"users"},"action":"write","topic":1}"#)
            .unwrap_err()
            .0;
        assert!(e.contains("subject.type: unknown subject type 'users'"), "{e}");
        assert!(e.contains("action: unknown action 'write'"), "{e}");
        assert!(e.contains("topic: expected a string, found a number"), "{e}");
        let e = parse_request_json(r#"{"subject":{"id":"u1","type":"user"},"action":"read","topik":"a"}"#)
            .unwrap_err()
            .0;
        assert!(e.contains("did you mean 'topic'"), "{e}");
        assert!(parse_request_json("not json").unwrap_err().0.starts_with("invalid JSON"));
    }
}
