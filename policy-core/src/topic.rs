//! MQTT topic names and filters: validation, matching, containment and overlap.
//!
//! Everything here follows MQTT 3.1.1 / 5.0 §4.7 (semantics.md §2). The three relations are
//! written once, over [`Levels`], so that a request's filter and a rule's topic pattern (whose
//! placeholders are resolved per request, see `pattern.rs`) go through the same code.

use alloc::string::String;
use alloc::vec::Vec;

/// The largest topic, in bytes of UTF-8 (MQTT-1.5.3: a UTF-8 string is at most 65535 bytes).
pub const MAX_TOPIC_BYTES: usize = 65_535;

/// One level of a name, filter or resolved pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tok<'a> {
    /// A literal level (may be empty: `a//b`).
    Lit(&'a str),
    /// `+`: exactly one level.
    Plus,
    /// `#`: this level and all below it, and the parent level itself (MQTT-4.7.1-2).
    Hash,
}

/// A sequence of levels. Implemented for split topics and for resolved rule patterns.
pub trait Levels<'a> {
    fn count(&self) -> usize;
    fn at(&self, i: usize) -> Tok<'a>;
}

/// A topic or filter already split on `/`. `"+"` and `"#"` levels are wildcards; callers
/// validate first, so a level holding `+` or `#` with other characters never reaches here.
impl<'a> Levels<'a> for [&'a str] {
    fn count(&self) -> usize {
        self.len()
    }
    fn at(&self, i: usize) -> Tok<'a> {
        match self[i] {
            "+" => Tok::Plus,
            "#" => Tok::Hash,
            s => Tok::Lit(s),
        }
    }
}

impl<'a> Levels<'a> for [Tok<'a>] {
    fn count(&self) -> usize {
        self.len()
    }
    fn at(&self, i: usize) -> Tok<'a> {
        self[i]
    }
}

/// Why a topic name or filter is not valid. `Display` gives the reason users see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicError {
    Empty,
    TooLong(usize),
    Nul,
    WildcardInName,
    PlusNotWholeLevel,
    HashNotWholeLevel,
    HashNotLast,
    BadShareGroup,
    EmptySharedFilter,
}

impl core::fmt::Display for TopicError {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            TopicError::Empty => f.write_str("a topic must not be empty"),
            TopicError::TooLong(n) => write!(
                f,
                "a topic is at most {MAX_TOPIC_BYTES} bytes of UTF-8; this one has {n}"
            ),
            TopicError::Nul => f.write_str("a topic must not contain U+0000"),
            TopicError::WildcardInName => {
                f.write_str("a topic name (publish, read) must not contain '+' or '#'")
            }
            TopicError::PlusNotWholeLevel => f.write_str("'+' must occupy a whole topic level"),
            TopicError::HashNotWholeLevel => f.write_str("'#' must occupy a whole topic level"),
            TopicError::HashNotLast => f.write_str("'#' must be the last topic level"),
            TopicError::BadShareGroup => f.write_str(
                "a shared subscription needs a non-empty share name without '+' or '#': $share/<name>/<filter>",
            ),
            TopicError::EmptySharedFilter => {
                f.write_str("a shared subscription needs a filter after $share/<name>/")
            }
        }
    }
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong(s.len()));
    }
    if s.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// A topic *name* as published or delivered (MQTT-4.7.3-1, -2, MQTT-4.7.1-1).
pub fn validate_name(s: &str) -> Result<(), TopicError> {
    // One pass over the bytes, written to compile to a vector loop (a broker checks a name
    // per message); which rule a bad name breaks is worked out after.
    let special = s.bytes().fold(false, |seen, b| seen | (b == b'+') | (b == b'#') | (b == 0));
    if !special && !s.is_empty() && s.len() <= MAX_TOPIC_BYTES {
        return Ok(());
    }
    check_common(s)?;
    if s.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Whether `bytes` are a valid topic name: UTF-8 that [`validate_name`] accepts. For a caller
/// that holds the broker's bytes: a name of ASCII bytes is checked eight bytes at a time with
/// no table or constant from memory (a broker checks a name per delivery, between which its
/// other work evicts such lines from the CPU's caches); any other is converted and validated.
#[inline]
pub fn is_name(bytes: &[u8]) -> bool {
    if bytes.is_empty() || bytes.len() > MAX_TOPIC_BYTES {
        return false;
    }
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut w = [0; 8];
        w.copy_from_slice(word);
        if !plain_word(u64::from_le_bytes(w)) {
            return is_name_converted(bytes);
        }
    }
    // The last few bytes one at a time (a copy into a word would be a call to `memcpy`).
    words.remainder().iter().all(|&b| b.wrapping_sub(1) < 0x7f && b != b'+' && b != b'#')
        || is_name_converted(bytes)
}

/// Whether none of the eight bytes of `w` is NUL, `+`, `#` or beyond ASCII (exactly; the
/// name is decided again the long way after a no all the same).
#[inline(always)]
fn plain_word(w: u64) -> bool {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    // Some high bit of the result is set if and only if some byte of `x` is zero.
    let zero_in = |x: u64| x.wrapping_sub(ONES) & !x;
    let special = zero_in(w) | zero_in(w ^ (ONES * u64::from(b'+'))) | zero_in(w ^ (ONES * u64::from(b'#')));
    (w | special) & HIGH == 0
}

#[cold]
#[inline(never)]
fn is_name_converted(bytes: &[u8]) -> bool {
    core::str::from_utf8(bytes).is_ok_and(|s| validate_name(s).is_ok())
}

/// A topic *filter* as subscribed: `+` a whole level, `#` a whole level and the last
/// (MQTT-4.7.1-2, MQTT-4.7.1-3).
pub fn validate_filter(s: &str) -> Result<(), TopicError> {
    check_common(s)?;
    validate_filter_levels(s)
}

/// The wildcard rules alone, for a string already known to be non-empty and short enough.
pub(crate) fn validate_filter_levels(s: &str) -> Result<(), TopicError> {
    let mut levels = s.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('+') && level != "+" {
            return Err(TopicError::PlusNotWholeLevel);
        }
        if level.contains('#') {
            if level != "#" {
                return Err(TopicError::HashNotWholeLevel);
            }
            if levels.peek().is_some() {
                return Err(TopicError::HashNotLast);
            }
        }
    }
    Ok(())
}

/// Validates a subscribe filter and strips a shared-subscription prefix:
/// `$share/<group>/<filter>` is checked as `<filter>` (MQTT 5 §4.8.2, semantics.md §2).
pub fn subscription_filter(s: &str) -> Result<&str, TopicError> {
    validate_filter(s)?;
    let Some(rest) = s.strip_prefix("$share/") else {
        return Ok(s);
    };
    let (group, filter) = match rest.split_once('/') {
        Some(parts) => parts,
        None => (rest, ""),
    };
    if group.is_empty() || group.contains(['+', '#']) {
        return Err(TopicError::BadShareGroup);
    }
    if filter.is_empty() {
        return Err(TopicError::EmptySharedFilter);
    }
    Ok(filter)
}

/// Splits a topic, name or filter into its levels.
pub fn split(s: &str) -> Vec<&str> {
    s.split('/').collect()
}

fn starts_with_dollar(t: Tok) -> bool {
    matches!(t, Tok::Lit(s) if s.starts_with('$'))
}

fn is_wild(t: Tok) -> bool {
    matches!(t, Tok::Plus | Tok::Hash)
}

/// Does `filter` match the topic name `name`? (MQTT-4.7.2-1: a filter starting with a
/// wildcard does not match a topic starting with `$`.)
pub fn matches<'a, 'b, F, N>(filter: &F, name: &N) -> bool
where
    F: Levels<'a> + ?Sized,
    N: Levels<'b> + ?Sized,
{
    if filter.count() > 0 && name.count() > 0 && is_wild(filter.at(0)) && starts_with_dollar(name.at(0)) {
        return false;
    }
    let (fl, nl) = (filter.count(), name.count());
    let mut i = 0;
    loop {
        if i == fl {
            return i == nl;
        }
        match filter.at(i) {
            // `a/#` matches `a` too: '#' covers the parent level.
            Tok::Hash => return true,
            _ if i == nl => return false,
            Tok::Plus => {}
            Tok::Lit(s) => {
                if name.at(i) != Tok::Lit(s) {
                    return false;
                }
            }
        }
        i += 1;
    }
}

/// Is every topic that `inner` matches also matched by `outer`? (semantics.md §3: an allow
/// rule grants a subscription only if its pattern *contains* the requested filter.)
pub fn contains<'a, 'b, O, I>(outer: &O, inner: &I) -> bool
where
    O: Levels<'a> + ?Sized,
    I: Levels<'b> + ?Sized,
{
    let (ol, il) = (outer.count(), inner.count());
    if ol == 0 || il == 0 {
        return false;
    }
    // `outer` starting with a wildcard matches no `$` topic; `inner` starting with a literal
    // `$...` matches only `$` topics. (`inner` starting with a wildcard matches none.)
    if is_wild(outer.at(0)) && starts_with_dollar(inner.at(0)) {
        return false;
    }
    let mut i = 0;
    loop {
        if i == il {
            // `inner` matches topics of exactly `il` levels here; `outer` must match those:
            // it ends too, or continues with a final '#' (which covers the parent).
            return ol == il || (ol == il + 1 && outer.at(il) == Tok::Hash);
        }
        if i == ol {
            return false;
        }
        match (outer.at(i), inner.at(i)) {
            (Tok::Hash, _) => return true,
            (o, Tok::Hash) => {
                // `inner` matches its parent and every depth below. Only '#' covers a
                // parent; without a valid parent (at the top level, or when the parent would
                // be the empty topic, as for `/#`), `+/#` from here covers it too.
                let has_parent = i >= 2 || (i == 1 && inner.at(0) != Tok::Lit(""));
                return !has_parent && o == Tok::Plus && ol == i + 2 && outer.at(i + 1) == Tok::Hash;
            }
            (Tok::Plus, _) => {}
            (Tok::Lit(_), Tok::Plus) => return false,
            (Tok::Lit(a), Tok::Lit(b)) => {
                if a != b {
                    return false;
                }
            }
        }
        i += 1;
    }
}

/// Is there a topic both filters match? (semantics.md §3: a deny rule binds a subscription
/// whose filter *overlaps* its pattern.)
pub fn overlaps<'a, 'b, A, B>(a: &A, b: &B) -> bool
where
    A: Levels<'a> + ?Sized,
    B: Levels<'b> + ?Sized,
{
    let (al, bl) = (a.count(), b.count());
    if al == 0 || bl == 0 {
        return false;
    }
    // A common topic starting with '$' needs both sides to start with a literal.
    if (is_wild(a.at(0)) && starts_with_dollar(b.at(0))) || (is_wild(b.at(0)) && starts_with_dollar(a.at(0)))
    {
        return false;
    }
    let mut i = 0;
    loop {
        match (i == al, i == bl) {
            (true, true) => return true,
            // One ended: the other must go on with a final '#' (matching the parent), and
            // the parent must be a valid topic: not the empty one (`/#` vs `+`).
            (true, false) | (false, true) => {
                let final_hash = if al < bl {
                    bl == al + 1 && b.at(al) == Tok::Hash
                } else {
                    al == bl + 1 && a.at(bl) == Tok::Hash
                };
                let empty_topic = i == 1 && (a.at(0) == Tok::Lit("") || b.at(0) == Tok::Lit(""));
                return final_hash && !empty_topic;
            }
            (false, false) => {}
        }
        match (a.at(i), b.at(i)) {
            (Tok::Hash, _) | (_, Tok::Hash) => return true,
            (Tok::Lit(x), Tok::Lit(y)) if x != y => return false,
            _ => {}
        }
        i += 1;
    }
}

/// Joins levels back into a topic string, for messages.
pub fn join(levels: &[Tok]) -> String {
    let mut s = String::new();
    for (i, t) in levels.iter().enumerate() {
        if i > 0 {
            s.push('/');
        }
        match t {
            Tok::Lit(l) => s.push_str(l),
            Tok::Plus => s.push('+'),
            Tok::Hash => s.push('#'),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_with_a_wildcard_a_nul_or_nothing_or_too_long_is_refused() {
        for bad in ["", "a/+", "a/#", "#", "+", "a\0b"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name(&"a".repeat(MAX_TOPIC_BYTES + 1)).is_err());
        assert!(validate_name(&"a".repeat(MAX_TOPIC_BYTES)).is_ok());
        assert!(validate_name("celine/telemetry/meter/m-1/readings").is_ok());
        assert!(validate_name("a//b/").is_ok(), "empty levels are levels");
    }

    /// `is_name` is `validate_name` of the bytes as UTF-8, for every byte in every place and
    /// for names that are not UTF-8.
    #[test]
    fn is_name_says_what_validate_name_says_of_the_bytes() {
        let agrees = |bytes: &[u8]| {
            let expected = core::str::from_utf8(bytes).is_ok_and(|s| validate_name(s).is_ok());
            assert_eq!(is_name(bytes), expected, "{bytes:?}");
        };
        // Every byte at every place of a name that spans words and a remainder.
        for b in 0..=u8::MAX {
            for at in 0..21 {
                let mut name = alloc::vec![b'x'; 21];
                name[at] = b;
                agrees(&name);
                agrees(&name[..=at]);
            }
        }
        for name in ["é", "celine/zähler/1", "日本/+", "a/é#", "\u{10FFFF}"] {
            agrees(name.as_bytes());
        }
        for name in
            [&[0xC3][..], &[b'a', 0xC3, 0x28], &[0xED, 0xA0, 0x80], &[0xF8, 0x88, 0x80, 0x80, 0x80], &[]]
        {
            agrees(name);
        }
        agrees("a".repeat(MAX_TOPIC_BYTES).as_bytes());
        agrees("a".repeat(MAX_TOPIC_BYTES + 1).as_bytes());
        agrees("é".repeat(MAX_TOPIC_BYTES / 2 + 1).as_bytes());
    }

    fn m(f: &str, n: &str) -> bool {
        matches(&split(f)[..], &split(n)[..])
    }
    fn c(o: &str, i: &str) -> bool {
        contains(&split(o)[..], &split(i)[..])
    }
    fn o(a: &str, b: &str) -> bool {
        overlaps(&split(a)[..], &split(b)[..])
    }

    #[test]
    fn names_and_filters_are_validated_as_mqtt_says() {
        assert_eq!(validate_name(""), Err(TopicError::Empty));
        assert_eq!(validate_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_name("a\0b"), Err(TopicError::Nul));
        assert!(validate_name("a//b/").is_ok());
        assert!(validate_name(&"x".repeat(65_535)).is_ok());
        assert_eq!(validate_name(&"x".repeat(65_536)), Err(TopicError::TooLong(65_536)));
        assert_eq!(validate_filter("a+"), Err(TopicError::PlusNotWholeLevel));
        assert_eq!(validate_filter("a/#b"), Err(TopicError::HashNotWholeLevel));
        assert_eq!(validate_filter("#/a"), Err(TopicError::HashNotLast));
        assert!(validate_filter("+/+/#").is_ok());
    }

    #[test]
    fn shared_subscriptions_are_stripped() {
        assert_eq!(subscription_filter("$share/g/a/#"), Ok("a/#"));
        assert_eq!(subscription_filter("$share/g/#"), Ok("#"));
        assert_eq!(subscription_filter("$share//a"), Err(TopicError::BadShareGroup));
        assert_eq!(subscription_filter("$share/+/a"), Err(TopicError::BadShareGroup));
        assert_eq!(subscription_filter("$share/g"), Err(TopicError::EmptySharedFilter));
        assert_eq!(subscription_filter("$share/g/"), Err(TopicError::EmptySharedFilter));
        assert_eq!(subscription_filter("$SYS/#"), Ok("$SYS/#"));
    }

    #[test]
    fn matching_follows_mqtt_4_7() {
        assert!(m("a/#", "a"));
        assert!(m("a/#", "a/b/c"));
        assert!(m("#", "a/b"));
        assert!(!m("#", "$SYS/uptime"));
        assert!(!m("+/uptime", "$SYS/uptime"));
        assert!(m("$SYS/#", "$SYS/uptime"));
        assert!(m("+/+", "/x"));
        assert!(m("foo/+", "foo/"));
        assert!(!m("foo/+", "foo"));
        assert!(!m("a/b", "a/b/c"));
    }

    #[test]
    fn containment_edges() {
        assert!(c("#", "+"));
        assert!(c("+/#", "#"));
        assert!(!c("+/+/#", "#"));
        // `/#` has no valid parent (the empty topic), so `/+/#` covers it.
        assert!(c("/+/#", "/#"));
        assert!(c("/+/#", "//#"));
        assert!(!c("/+", "/#"));
        assert!(!c("a/+/#", "a/#"));
        assert!(c("a/#", "a"));
        assert!(c("$SYS/+/#", "$SYS/uptime"));
        assert!(!c("#", "$SYS/uptime"));
        assert!(!c("a/b/c/d/", "a/b/c/d/+"));
        assert!(c("celine/digital-twin/#", "celine/digital-twin/events/#"));
        assert!(!c("celine/telemetry/+/+/readings", "celine/telemetry/#"));
    }

    #[test]
    fn overlap_edges() {
        assert!(o("a/#", "a"));
        assert!(o("a/#", "+"));
        assert!(!o("#", "$SYS/#"));
        assert!(!o("/#", "+"), "the only shared topic would be the empty one");
        assert!(o("/#", "+/+"));
        assert!(o("$SYS/#", "$SYS/+"));
        assert!(o("+/b", "a/+"));
        assert!(!o("a/b/c", "a/b/c/+"));
        assert!(o("celine/system/alerts/critical", "celine/system/alerts/#"));
    }
}
