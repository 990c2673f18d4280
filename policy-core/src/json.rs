//! A JSON value that remembers everything the text said, and the JSON paths used in
//! diagnostics.
//!
//! `serde_json::Value` silently keeps the last of two equal keys. A policy document with
//! `"effect": "deny", ..., "effect": "allow"` must be refused, not quietly widened, so objects
//! here keep every entry in document order and the loader checks for repeats (semantics.md §1).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::invalid::Invalid;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A parsed JSON value. Objects keep all entries, duplicates included, in document order.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    /// Parses JSON text. The error says where the text stopped making sense.
    pub fn parse(text: &str) -> Result<Json, Invalid> {
        serde_json::from_str(text).map_err(|e| {
            // serde_json's messages already end in "at line L column C".
            Invalid(format!("invalid JSON: {e}"))
        })
    }

    /// What kind of value this is, for "expected a list, found an object" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number(_) => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "a list",
            Json::Object(_) => "an object",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    /// The first entry named `key`, if this is an object.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(v as f64))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(v as f64))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
        Ok(Json::Number(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(String::from(v)))
    }
    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut entries = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Json>()? {
            entries.push((k, v));
        }
        Ok(Json::Object(entries))
    }
}

/// A JSON path as shown to people: `celine.mqtt.acl.rules[3].topics[1]`.
///
/// Built by appending; cheap enough for a loader, never used on the decision path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Path(String);

impl Path {
    pub fn root() -> Path {
        Path(String::new())
    }

    /// `parent.key`, or `parent["odd key"]` when the key is not a plain identifier.
    pub fn key(&self, key: &str) -> Path {
        let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        let mut s = self.0.clone();
        if plain {
            if !s.is_empty() {
                s.push('.');
            }
            s.push_str(key);
        } else {
            s.push('[');
            push_json_string(&mut s, key);
            s.push(']');
        }
        Path(s)
    }

    pub fn index(&self, i: usize) -> Path {
        Path(format!("{}[{i}]", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.0.is_empty() { f.write_str("(document)") } else { f.write_str(&self.0) }
    }
}

/// Appends `s` as a JSON string literal (quotes and escapes included).
pub(crate) fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Shows a user-supplied string in a message: in single quotes, control characters
/// escaped, cut when very long, so a hostile topic can neither flood a log line nor forge a
/// second one.
pub fn quote(s: &str) -> String {
    const MAX: usize = 200;
    let (shown, cut) = if s.len() <= MAX {
        (s, false)
    } else {
        let mut end = MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        (&s[..end], true)
    };
    let mut out = String::with_capacity(shown.len() + 2);
    out.push('\'');
    for c in shown.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\'');
    if cut {
        out.push_str(&format!("… ({} bytes)", s.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_keep_duplicate_keys_in_order() {
        let v = Json::parse(r#"{"a": 1, "a": "x"}"#).unwrap();
        let Json::Object(entries) = v else { panic!() };
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].1, Json::String("x".into()));
    }

    #[test]
    fn syntax_errors_say_where() {
        let e = Json::parse("{\"a\": [1,}").unwrap_err().0;
        assert!(e.contains("line 1 column"), "{e}");
    }

    #[test]
    fn quoting_escapes_control_characters_and_cuts_long_input() {
        assert_eq!(quote("a/b"), "'a/b'");
        assert_eq!(quote("a\nb"), "'a\\u{000a}b'");
        let long = "x".repeat(1000);
        assert!(quote(&long).ends_with("… (1000 bytes)"));
    }

    #[test]
    fn paths_read_like_the_document() {
        let p = Path::root().key("celine").key("mqtt").key("acl").key("rules").index(3);
        assert_eq!(p.as_str(), "celine.mqtt.acl.rules[3]");
        assert_eq!(Path::root().key("celine").key("a b").as_str(), "celine[\"a b\"]");
    }
}
