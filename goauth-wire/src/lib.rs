//! The parameters mosquitto-go-auth sends to its HTTP backends (`/mqtt/user`,
//! `/mqtt/superuser`, `/mqtt/acl`), read from bytes a client or a broker controls: a JSON
//! body (json mode; `null` from the jwt backend), a form body (form mode), the query string,
//! and the `Authorization` header. Kept apart from the service so that it can be fuzzed
//! without the policy runtime (`fuzz/fuzz_targets/goauth_request.rs`). Every malformed input
//! is an `Err` with a reason, never a panic.

use std::borrow::Cow;

use http::{HeaderMap, header};

/// A request that is not a well-formed go-auth call: an unsupported content type, a body or
/// query string that does not parse, a field given twice, an `Authorization` header that is
/// not `Bearer <token>`. It is the caller's fault, not the token's: answer 400 with the
/// reason (`Display`), and decide nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

impl std::fmt::Display for BadRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadRequest {}

/// The parameters go-auth may send, from wherever they came. Values borrow from the request
/// where they need no decoding (go-auth's JSON bodies): a request allocates no copy of them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Params<'a> {
    pub username: Option<Cow<'a, str>>,
    pub password: Option<Cow<'a, str>>,
    pub clientid: Option<Cow<'a, str>>,
    pub topic: Option<Cow<'a, str>>,
    pub acc: Option<Cow<'a, str>>,
    /// The username is a JWT (go-auth's jwt backend): decided once per request.
    pub username_is_token: bool,
}

impl<'a> Params<'a> {
    fn slot(&mut self, key: &str) -> Option<&mut Option<Cow<'a, str>>> {
        match key {
            "username" => Some(&mut self.username),
            "password" => Some(&mut self.password),
            "clientid" => Some(&mut self.clientid),
            "topic" => Some(&mut self.topic),
            "acc" => Some(&mut self.acc),
            _ => None,
        }
    }

    /// Sets a field; the same field twice with different values is malformed.
    fn set(&mut self, key: &str, value: Cow<'a, str>) -> Result<(), BadRequest> {
        let Some(slot) = self.slot(key) else { return Ok(()) };
        match slot {
            Some(old) if *old != value => {
                Err(BadRequest(format!("'{key}' is given twice with different values")))
            }
            _ => {
                *slot = Some(value);
                Ok(())
            }
        }
    }

    /// Sets the fields of a form body or a query string.
    fn set_form(&mut self, text: &'a [u8], what: &'a str) -> Result<(), BadRequest> {
        for pair in form_pairs(text, what) {
            let (k, v) = pair?;
            self.set(&k, v)?;
        }
        Ok(())
    }
}

/// A JSON string or number, as text (borrowed from the body when it holds no escapes).
struct Text<'a>(Option<Cow<'a, str>>);

impl<'de> serde::Deserialize<'de> for Text<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Text<'de>, E> {
                // go-auth's `acc` (1 to 4, as a number): no allocation for it.
                const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
                Ok(Text(Some(match usize::try_from(v).ok().and_then(|i| DIGITS.get(i)) {
                    Some(d) => Cow::Borrowed(*d),
                    None => Cow::Owned(v.to_string()),
                })))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Text<'de>, E> {
                Ok(Text(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Text<'de>, E> {
                Ok(Text(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_unit<E>(self) -> Result<Text<'de>, E> {
                Ok(Text(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// A JSON body: an object of go-auth's fields (others are ignored), or `null`.
struct JsonBody<'a>(Params<'a>);

impl<'de> serde::Deserialize<'de> for JsonBody<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, IgnoredAny, MapAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonBody<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object (or null)")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<JsonBody<'de>, A::Error> {
                Err(A::Error::custom("the JSON body must be an object, found a list"))
            }
            fn visit_str<E: Error>(self, _: &str) -> Result<JsonBody<'de>, E> {
                Err(E::custom("the JSON body must be an object, found a string"))
            }
            fn visit_bool<E: Error>(self, _: bool) -> Result<JsonBody<'de>, E> {
                Err(E::custom("the JSON body must be an object, found a boolean"))
            }
            fn visit_f64<E: Error>(self, _: f64) -> Result<JsonBody<'de>, E> {
                Err(E::custom("the JSON body must be an object, found a number"))
            }
            fn visit_i64<E: Error>(self, _: i64) -> Result<JsonBody<'de>, E> {
                Err(E::custom("the JSON body must be an object, found a number"))
            }
            fn visit_u64<E: Error>(self, _: u64) -> Result<JsonBody<'de>, E> {
                Err(E::custom("the JSON body must be an object, found a number"))
            }
            // go-auth's jwt backend sends `null` for user and superuser calls.
            fn visit_unit<E>(self) -> Result<JsonBody<'de>, E> {
                Ok(JsonBody(Params::default()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonBody<'de>, A::Error> {
                let mut p = Params::default();
                while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
                    let key = key.unwrap_or_default();
                    if p.slot(&key).is_none() {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                    let Text(value) = map.next_value::<Text<'de>>().map_err(|e| {
                        A::Error::custom(format!("'{key}' must be a string or a number ({e})"))
                    })?;
                    if let Some(value) = value {
                        p.set(&key, value).map_err(A::Error::custom)?;
                    }
                }
                Ok(JsonBody(p))
            }
        }
        d.deserialize_any(V)
    }
}

/// `application/x-www-form-urlencoded` pairs (a form body or a query string), decoded strictly:
/// `+` is a space, `%XX` a byte, and the result must be UTF-8. Pieces without either borrow.
fn form_pairs<'a>(
    text: &'a [u8],
    what: &'a str,
) -> impl Iterator<Item = Result<(Cow<'a, str>, Cow<'a, str>), BadRequest>> {
    fn decode<'a>(piece: &'a [u8], what: &str) -> Result<Cow<'a, str>, BadRequest> {
        let bad_utf8 = || BadRequest(format!("malformed {what}: a name or value is not UTF-8"));
        if !piece.iter().any(|b| matches!(b, b'+' | b'%')) {
            return std::str::from_utf8(piece).map(Cow::Borrowed).map_err(|_| bad_utf8());
        }
        let mut out = Vec::with_capacity(piece.len());
        let mut i = 0;
        while i < piece.len() {
            match piece[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    let hex = piece.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                    match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        Some(b) => out.push(b),
                        None => {
                            return Err(BadRequest(format!(
                                "malformed {what}: '%' must be followed by two hex digits"
                            )));
                        }
                    }
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).map(Cow::Owned).map_err(|_| bad_utf8())
    }
    text.split(|&b| b == b'&').filter(|piece| !piece.is_empty()).map(|piece| {
        let (k, v) = match piece.iter().position(|&b| b == b'=') {
            Some(eq) => (&piece[..eq], &piece[eq + 1..]),
            None => (piece, &[][..]),
        };
        Ok((decode(k, what)?, decode(v, what)?))
    })
}

/// Reads the parameters from the query string and the body (by its content type).
pub fn parse_params<'a>(
    headers: &HeaderMap,
    query: Option<&'a str>,
    body: &'a [u8],
) -> Result<Params<'a>, BadRequest> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim());
    let trimmed = body.trim_ascii();
    let is_json = match content_type {
        _ if trimmed.is_empty() => None,
        Some(t) if t.eq_ignore_ascii_case("application/json") => Some(true),
        Some(t) if t.eq_ignore_ascii_case("application/x-www-form-urlencoded") => Some(false),
        None | Some("") => Some(trimmed.first() == Some(&b'{') || trimmed == b"null"),
        Some(other) => {
            return Err(BadRequest(format!(
                "unsupported content type {}: send application/json or application/x-www-form-urlencoded",
                policy_core::quote(other)
            )));
        }
    };
    let mut p = match is_json {
        None => Params::default(),
        Some(true) => {
            let mut de = serde_json::Deserializer::from_slice(trimmed);
            let parsed =
                serde::Deserialize::deserialize(&mut de).and_then(|JsonBody(p)| de.end().map(|()| p));
            parsed.map_err(|e| BadRequest(format!("malformed JSON body: {e}")))?
        }
        Some(false) => {
            let mut p = Params::default();
            p.set_form(trimmed, "form body")?;
            p
        }
    };
    if let Some(q) = query {
        p.set_form(q.as_bytes(), "query string")?;
    }
    p.username_is_token = p.username.as_deref().is_some_and(looks_like_jwt);
    Ok(p)
}

pub use identity::{TokenFrom, looks_like_jwt};

/// The token a call carries: the Bearer header, else the password or the username by the
/// rule every front end follows ([`identity::token_in`]).
pub fn find_token<'a>(
    headers: &'a HeaderMap,
    p: &'a Params,
) -> Result<Option<(&'a str, TokenFrom)>, BadRequest> {
    if let Some(h) = headers.get(header::AUTHORIZATION) {
        let h = h.to_str().map_err(|_| BadRequest("the Authorization header is not ASCII".to_string()))?;
        let Some((scheme, token)) = h.split_once(' ') else {
            return Err(BadRequest("the Authorization header must be 'Bearer <token>'".into()));
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(BadRequest(format!(
                "unsupported Authorization scheme {}: use Bearer",
                policy_core::quote(scheme)
            )));
        }
        return Ok(Some((token.trim(), TokenFrom::Bearer)));
    }
    Ok(identity::token_in(p.password.as_deref(), p.username.as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(ct: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(ct) = ct {
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
        }
        h
    }

    #[test]
    fn go_auth_bodies_parse() {
        let json = parse_params(
            &headers(Some("application/json")),
            None,
            br#"{"acc":4,"clientid":"c1","topic":"a/#","username":""}"#,
        )
        .unwrap();
        assert_eq!(json.acc.as_deref(), Some("4"));
        assert_eq!(json.username.as_deref(), Some(""));
        let form = parse_params(
            &headers(Some("application/x-www-form-urlencoded")),
            None,
            b"acc=1&clientid=c1&topic=a%2Fb&username=",
        )
        .unwrap();
        assert_eq!(form.topic.as_deref(), Some("a/b"));
        let null = parse_params(&headers(Some("application/json")), None, b"null").unwrap();
        assert_eq!(null, Params::default());
        let query = parse_params(&headers(None), Some("topic=x&acc=2"), b"").unwrap();
        assert_eq!((query.topic.as_deref(), query.acc.as_deref()), (Some("x"), Some("2")));
    }

    #[test]
    fn malformed_bodies_say_why() {
        assert!(
            parse_params(&headers(Some("application/json")), None, b"{")
                .unwrap_err()
                .0
                .starts_with("malformed JSON")
        );
        assert!(
            parse_params(&headers(Some("application/json")), None, b"[1]")
                .unwrap_err()
                .0
                .contains("an object")
        );
        assert!(
            parse_params(&headers(Some("text/xml")), None, b"<a/>")
                .unwrap_err()
                .0
                .contains("unsupported content type")
        );
        assert!(
            parse_params(&headers(Some("application/json")), Some("topic=b"), br#"{"topic":"a"}"#)
                .unwrap_err()
                .0
                .contains("twice")
        );
        assert!(parse_params(&headers(Some("application/json")), None, br#"{"topic":["a"]}"#).is_err());
    }

    #[test]
    fn values_borrow_from_the_request_unless_they_needed_decoding() {
        let json = parse_params(
            &headers(Some("application/json")),
            None,
            br#"{"topic":"a/b","clientid":"c\u0031","\u0075sername":"u","other":[{"x":1}]}"#,
        )
        .unwrap();
        assert!(matches!(json.topic, Some(Cow::Borrowed("a/b"))));
        assert_eq!(json.clientid.as_deref(), Some("c1"));
        assert_eq!(json.username.as_deref(), Some("u"), "an escaped key is still the key");
        let form = parse_params(&headers(None), Some("topic=a%2Fb+c&clientid=plain&flag"), b"").unwrap();
        assert_eq!(form.topic.as_deref(), Some("a/b c"));
        assert!(matches!(form.clientid, Some(Cow::Borrowed("plain"))));
    }

    #[test]
    fn form_values_are_decoded_strictly() {
        fn form(q: &str) -> Result<Params<'_>, BadRequest> {
            parse_params(&headers(None), Some(q), b"")
        }
        assert!(form("topic=%FF").unwrap_err().0.contains("not UTF-8"));
        assert!(form("topic=%4").unwrap_err().0.contains("two hex digits"));
        assert!(form("topic=%zz").unwrap_err().0.contains("two hex digits"));
        assert_eq!(form("topic=%E2%82%AC").unwrap().topic.as_deref(), Some("\u{20ac}"));
        assert_eq!(form("topic=&&acc=1").unwrap().acc.as_deref(), Some("1"));
    }
}
