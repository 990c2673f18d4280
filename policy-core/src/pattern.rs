//! Rule topic patterns: MQTT filters whose whole levels may be placeholders
//! (`${username}`, `${clientid}`, `${subject.id}`), resolved per request (semantics.md §2).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::invalid::Invalid;
use crate::json::quote;
use crate::topic::{self, Levels, Tok, TopicError};

/// A request value a pattern level can stand for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Placeholder {
    Username,
    ClientId,
    SubjectId,
}

impl Placeholder {
    pub fn as_str(self) -> &'static str {
        match self {
            Placeholder::Username => "${username}",
            Placeholder::ClientId => "${clientid}",
            Placeholder::SubjectId => "${subject.id}",
        }
    }
}

/// One level of a rule's topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Level {
    Lit(String),
    Plus,
    Hash,
    Var(Placeholder),
}

/// A parsed, valid topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pub(crate) text: String,
    pub(crate) levels: Vec<Level>,
}

/// The request values placeholders resolve to.
#[derive(Debug, Clone, Copy)]
pub struct Bindings<'a> {
    pub username: &'a str,
    pub clientid: &'a str,
    pub subject_id: &'a str,
}

impl<'a> Bindings<'a> {
    fn get(&self, p: Placeholder) -> &'a str {
        match p {
            Placeholder::Username => self.username,
            Placeholder::ClientId => self.clientid,
            Placeholder::SubjectId => self.subject_id,
        }
    }
}

/// Can `value` stand in a topic level without changing the pattern's shape? An empty value,
/// one starting with `$` (would turn a pattern into a `$`-topic), or one holding `/`, `+`, `#`
/// or U+0000 (would add levels or wildcards) cannot (semantics.md §2).
pub fn substitutable(value: &str) -> bool {
    !value.is_empty() && !value.starts_with('$') && !value.contains(['/', '+', '#', '\0'])
}

/// Why a placeholder could not be used, or `None` if it can.
fn unsubstitutable_reason(value: &str) -> Option<&'static str> {
    if value.is_empty() {
        Some("is empty")
    } else if value.starts_with('$') {
        Some("starts with '$'")
    } else if value.contains(['/', '+', '#', '\0']) {
        Some("holds '/', '+', '#' or U+0000")
    } else {
        None
    }
}

impl Pattern {
    /// Parses a rule's topic pattern. The error is the reason, without the JSON path.
    pub fn parse(text: &str) -> Result<Pattern, Invalid> {
        if text.is_empty() {
            return Err(Invalid("a topic pattern must not be empty".to_string()));
        }
        if text.len() > topic::MAX_TOPIC_BYTES {
            return Err(Invalid(TopicError::TooLong(text.len()).to_string()));
        }
        if text.contains('\0') {
            return Err(Invalid(TopicError::Nul.to_string()));
        }
        let mut levels = Vec::new();
        let mut placeholder_free = String::with_capacity(text.len());
        for (i, level) in text.split('/').enumerate() {
            if i > 0 {
                placeholder_free.push('/');
            }
            let parsed = match level {
                "+" => Level::Plus,
                "#" => Level::Hash,
                "${username}" => Level::Var(Placeholder::Username),
                "${clientid}" => Level::Var(Placeholder::ClientId),
                "${subject.id}" => Level::Var(Placeholder::SubjectId),
                l if l.starts_with("${") && l.ends_with('}') => {
                    return Err(Invalid(format!(
                        "unknown placeholder {}: use ${{username}}, ${{clientid}} or ${{subject.id}}",
                        quote(l)
                    )));
                }
                l if l.contains("${") => {
                    return Err(Invalid(format!(
                        "a placeholder must occupy a whole topic level, found {}",
                        quote(l)
                    )));
                }
                l => Level::Lit(l.to_string()),
            };
            placeholder_free.push_str(match &parsed {
                Level::Var(_) => "x",
                _ => level,
            });
            levels.push(parsed);
        }
        topic::validate_filter_levels(&placeholder_free).map_err(|e| Invalid(e.to_string()))?;
        Ok(Pattern { text: text.to_string(), levels })
    }

    /// The pattern as written in the policy document.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn levels(&self) -> &[Level] {
        &self.levels
    }

    pub fn has_placeholders(&self) -> bool {
        self.levels.iter().any(|l| matches!(l, Level::Var(_)))
    }

    /// Resolves placeholders for one request. `None` means the pattern matches nothing for
    /// this request (an allow pattern with an unusable value). A deny pattern resolves an
    /// unusable value to `+`, so it fails closed.
    pub fn resolve<'p>(&'p self, b: &Bindings<'p>, deny: bool) -> Option<Resolved<'p>> {
        for l in &self.levels {
            if let Level::Var(p) = l
                && !deny
                && !substitutable(b.get(*p))
            {
                return None;
            }
        }
        Some(Resolved { levels: &self.levels, bindings: *b })
    }

    /// For explanations: why a placeholder made this pattern inapplicable, if it did.
    pub fn unusable_placeholder(&self, b: &Bindings) -> Option<String> {
        self.levels.iter().find_map(|l| match l {
            Level::Var(p) => unsubstitutable_reason(b.get(*p))
                .map(|why| format!("{} {} ({})", p.as_str(), why, quote(b.get(*p)))),
            _ => None,
        })
    }

    /// The pattern with placeholders shown as written: used by lint's containment checks,
    /// which treat a placeholder as a level that only an equal placeholder, `+` or `#`
    /// covers.
    pub(crate) fn symbolic(&self) -> Vec<Tok<'_>> {
        self.levels
            .iter()
            .map(|l| match l {
                Level::Lit(s) => Tok::Lit(s),
                Level::Plus => Tok::Plus,
                Level::Hash => Tok::Hash,
                Level::Var(p) => Tok::Lit(p.as_str()),
            })
            .collect()
    }
}

/// A pattern with its placeholders bound to one request's values.
#[derive(Clone, Copy)]
pub struct Resolved<'p> {
    levels: &'p [Level],
    bindings: Bindings<'p>,
}

impl<'p> Levels<'p> for Resolved<'p> {
    fn count(&self) -> usize {
        self.levels.len()
    }
    fn at(&self, i: usize) -> Tok<'p> {
        match &self.levels[i] {
            Level::Lit(s) => Tok::Lit(s),
            Level::Plus => Tok::Plus,
            Level::Hash => Tok::Hash,
            Level::Var(p) => {
                let v = self.bindings.get(*p);
                // Only a deny pattern gets here with an unusable value (see `resolve`).
                if substitutable(v) { Tok::Lit(v) } else { Tok::Plus }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::{matches, split};

    fn b<'a>(u: &'a str, c: &'a str, s: &'a str) -> Bindings<'a> {
        Bindings { username: u, clientid: c, subject_id: s }
    }

    #[test]
    fn placeholders_must_be_whole_known_levels() {
        assert!(Pattern::parse("a/${username}/#").is_ok());
        assert!(Pattern::parse("a${username}").unwrap_err().0.contains("whole topic level"));
        assert!(Pattern::parse("${nosuch}/a").unwrap_err().0.contains("unknown placeholder"));
        assert!(Pattern::parse("${username").unwrap_err().0.contains("whole topic level"));
        assert!(Pattern::parse("a/#/${clientid}").unwrap_err().0.contains("last"));
        assert!(Pattern::parse("").is_err());
    }

    #[test]
    fn unusable_values_fail_closed() {
        let p = Pattern::parse("nudge/${subject.id}").unwrap();
        let t = split("nudge/u1");
        let r = p.resolve(&b("", "", "u1"), false).unwrap();
        assert!(matches(&r, &t[..]));
        for bad in ["", "$x", "a/b", "+", "#", "a\0"] {
            assert!(p.resolve(&b("", "", bad), false).is_none(), "allow with {bad:?}");
            let deny = p.resolve(&b("", "", bad), true).unwrap();
            assert!(matches(&deny, &t[..]), "deny with {bad:?} must widen to '+'");
        }
    }
}
