//! Where a JSON path is in a document's text, and which path a position in the text is in.
//!
//! Diagnostics and decisions name places by JSON path (`celine.mqtt.acl.rules[3]`); an editor
//! needs lines and offsets to show them. [`locate`] finds the text of the value at a path;
//! [`path_at`] names the value a syntax error stopped in, so even a document that does not
//! parse gets an error with a path. The scanner is tolerant: it never fails, it stops.

use alloc::string::String;
use alloc::vec::Vec;

use crate::json::Path;

/// A stretch of the document's text: byte offsets (`end` exclusive) and the 1-based line and
/// column (in characters) of its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub line: usize,
    pub column: usize,
}

impl Span {
    fn new(text: &str, start: usize, end: usize) -> Span {
        let (line, column) = line_column(text, start);
        Span { start, end, line, column }
    }
}

/// The 1-based line and column (in characters) of byte offset `at` (clamped to the text).
pub fn line_column(text: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The byte offset of 1-based `line` and `column` (in characters), clamped to the text.
pub fn offset_of(text: &str, line: usize, column: usize) -> usize {
    let mut start = 0;
    for _ in 1..line {
        match text[start..].find('\n') {
            Some(i) => start += i + 1,
            None => return text.len(),
        }
    }
    let rest = &text[start..];
    let line_end = rest.find('\n').unwrap_or(rest.len());
    start + rest[..line_end].char_indices().nth(column.saturating_sub(1)).map_or(line_end, |(i, _)| i)
}

/// The text of the value at `path` (as [`Path`] prints it), if the document has one there.
/// With duplicate keys, the first wins, as in the loader.
pub fn locate(text: &str, path: &str) -> Option<Span> {
    let mut found = None;
    let mut s = Scanner { b: text.as_bytes(), i: 0, depth: 0 };
    let _ = s.value(&Path::root(), &mut |p, start, end| {
        if found.is_none() && p.as_str() == path {
            found = Some((start, end));
        }
    });
    found.map(|(start, end)| Span::new(text, start, end))
}

/// The path of the innermost value that the text stops making sense in, for a document that
/// is not valid JSON (`None` when it is).
pub fn path_at_error(text: &str) -> Option<Path> {
    let mut s = Scanner { b: text.as_bytes(), i: 0, depth: 0 };
    match s.value(&Path::root(), &mut |_, _, _| {}) {
        Err(p) => Some(p),
        Ok(()) => {
            s.ws();
            if s.i < s.b.len() { Some(Path::root()) } else { None }
        }
    }
}

/// Deeper nesting than this is refused (serde_json refuses it too), so a hostile document
/// cannot exhaust the stack.
const MAX_DEPTH: usize = 128;

struct Scanner<'t> {
    b: &'t [u8],
    i: usize,
    depth: usize,
}

type Visit<'v> = dyn FnMut(&Path, usize, usize) + 'v;

impl Scanner<'_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// Scans one value; on a syntax error returns the path of the value it was in.
    fn value(&mut self, path: &Path, visit: &mut Visit) -> Result<(), Path> {
        self.ws();
        let start = self.i;
        match self.peek() {
            Some(b'{') => self.object(path, visit)?,
            Some(b'[') => self.array(path, visit)?,
            Some(b'"') => {
                self.string().ok_or_else(|| path.clone())?;
            }
            Some(c) if c == b'-' || c.is_ascii_alphanumeric() => {
                while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || b"+-.".contains(&c)) {
                    self.i += 1;
                }
            }
            _ => return Err(path.clone()),
        }
        visit(path, start, self.i);
        Ok(())
    }

    fn enter(&mut self, path: &Path) -> Result<(), Path> {
        self.depth += 1;
        self.i += 1;
        if self.depth > MAX_DEPTH { Err(path.clone()) } else { Ok(()) }
    }

    fn object(&mut self, path: &Path, visit: &mut Visit) -> Result<(), Path> {
        self.enter(path)?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            self.ws();
            let key = self.string().ok_or_else(|| path.clone())?;
            self.ws();
            if self.peek() != Some(b':') {
                return Err(path.clone());
            }
            self.i += 1;
            self.value(&path.key(&key), visit)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                _ => return Err(path.clone()),
            }
        }
    }

    fn array(&mut self, path: &Path, visit: &mut Visit) -> Result<(), Path> {
        self.enter(path)?;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            self.depth -= 1;
            return Ok(());
        }
        let mut index = 0;
        loop {
            self.value(&path.index(index), visit)?;
            index += 1;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                _ => return Err(path.clone()),
            }
        }
    }

    /// A string literal, unescaped (`None` when it is not one or never ends).
    fn string(&mut self) -> Option<String> {
        if self.peek() != Some(b'"') {
            return None;
        }
        self.i += 1;
        let mut raw: Vec<u8> = Vec::new();
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'"' => return Some(unescape(&raw)),
                b'\\' => {
                    raw.push(c);
                    raw.push(self.peek()?);
                    self.i += 1;
                }
                b'\n' => return None,
                _ => raw.push(c),
            }
        }
        None
    }
}

/// Unescapes a string literal's body. Only exactness for the keys paths are made of matters;
/// a malformed escape keeps its text (serde_json reports it).
fn unescape(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    if !text.contains('\\') {
        return text.into_owned();
    }
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    Some(ch) => out.push(ch),
                    None => out.push('\u{fffd}'),
                }
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "{\n  \"celine\": {\"mqtt\": {\"acl\": {\"rules\": [\n    {\"id\": \"a\", \"topics\": [\"x/#\"]},\n    {\"id\": \"b\", \"topics\": [\"y\", \"z/+\"]}\n  ]}}}\n}\n";

    #[test]
    fn locates_values_by_path() {
        let s = locate(DOC, "celine.mqtt.acl.rules[1]").unwrap();
        assert_eq!(&DOC[s.start..s.end], "{\"id\": \"b\", \"topics\": [\"y\", \"z/+\"]}");
        assert_eq!((s.line, s.column), (4, 5));
        let t = locate(DOC, "celine.mqtt.acl.rules[1].topics[1]").unwrap();
        assert_eq!(&DOC[t.start..t.end], "\"z/+\"");
        assert_eq!(locate(DOC, "celine.mqtt.acl.rules[2]"), None);
        assert_eq!(locate(DOC, "").map(|s| (s.start, s.end)), Some((0, DOC.len() - 1)));
    }

    #[test]
    fn odd_keys_are_found_under_their_quoted_path() {
        let doc = r#"{"a b": {"c\"d": 1}}"#;
        let s = locate(doc, r#"["a b"]["c\"d"]"#).unwrap();
        assert_eq!(&doc[s.start..s.end], "1");
    }

    #[test]
    fn a_syntax_error_is_placed_in_the_value_it_interrupts() {
        let broken = DOC.replace("\"y\", \"z/+\"", "\"y\" \"z/+\"");
        assert_eq!(path_at_error(&broken).unwrap().as_str(), "celine.mqtt.acl.rules[1].topics");
        let missing_value = r#"{"celine": {"mqtt": {"acl": {"rules": [{"id": }]}}}}"#;
        assert_eq!(path_at_error(missing_value).unwrap().as_str(), "celine.mqtt.acl.rules[0].id");
        assert_eq!(path_at_error(DOC), None);
        assert_eq!(path_at_error("{} x").unwrap().as_str(), "");
        assert!(path_at_error(&"[".repeat(10_000)).is_some());
    }

    #[test]
    fn lines_and_columns_count_characters() {
        let t = "ab\nçd\n";
        assert_eq!(line_column(t, 0), (1, 1));
        assert_eq!(line_column(t, 3), (2, 1));
        assert_eq!(line_column(t, 5), (2, 2));
        assert_eq!(offset_of(t, 2, 2), 5);
        assert_eq!(offset_of(t, 9, 1), t.len());
    }
}
