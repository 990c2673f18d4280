//! Any bytes as a go-auth request (`goauth-wire`): parameters from a JSON or form body and a
//! query string, and the token from the `Authorization` header or the fields. Never a panic;
//! and what was read is what was sent: the parameters, written again as a form body or as a
//! JSON body, read back the same.
//!
//! Input: a first byte choosing the content type, then the `Authorization` value, the query
//! string and the body, separated by 0xFF (a byte no UTF-8 text holds).
#![no_main]

use goauth_wire::{Params, TokenFrom, find_token, parse_params};
use http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: [Option<&str>; 6] = [
    None,
    Some("application/json"),
    Some("application/x-www-form-urlencoded"),
    Some("application/json; charset=utf-8"),
    Some(""),
    Some("text/plain"),
];

fn headers(content_type: Option<&str>, authorization: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(ct) = content_type {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
    }
    if !authorization.is_empty()
        && let Ok(v) = HeaderValue::from_bytes(authorization)
    {
        h.insert(header::AUTHORIZATION, v);
    }
    h
}

fn fields<'a>(p: &'a Params) -> [(&'static str, Option<&'a str>); 5] {
    [
        ("username", p.username.as_deref()),
        ("password", p.password.as_deref()),
        ("clientid", p.clientid.as_deref()),
        ("topic", p.topic.as_deref()),
        ("acc", p.acc.as_deref()),
    ]
}

fn percent_encoded(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

fn same(a: &Params, b: &Params) -> bool {
    fields(a) == fields(b) && a.username_is_token == b.username_is_token
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let content_type = CONTENT_TYPES[usize::from(selector) % CONTENT_TYPES.len()];
    let mut parts = rest.splitn(3, |&b| b == 0xFF);
    let authorization = parts.next().unwrap_or_default();
    let query = parts.next().and_then(|q| std::str::from_utf8(q).ok());
    let body = parts.next().unwrap_or_default();
    let h = headers(content_type, authorization);

    let Ok(p) = parse_params(&h, query, body) else { return };
    if let Ok(Some((token, from))) = find_token(&h, &p) {
        match from {
            TokenFrom::Bearer => {
                let value = h[header::AUTHORIZATION].to_str().unwrap();
                assert!(value.contains(token), "a bearer token {token:?} not in {value:?}");
            }
            TokenFrom::Password => assert_eq!(Some(token), p.password.as_deref()),
            TokenFrom::Username => assert_eq!(Some(token), p.username.as_deref()),
        }
    }

    // Written again as a form body: read back the same.
    let form: Vec<String> =
        fields(&p).iter().filter_map(|(k, v)| Some(format!("{k}={}", percent_encoded((*v)?)))).collect();
    let form = form.join("&");
    let again = parse_params(&headers(Some("application/x-www-form-urlencoded"), b""), None, form.as_bytes())
        .unwrap_or_else(|e| panic!("{form:?} does not read back: {e}"));
    assert!(same(&p, &again), "{p:?} became {again:?} through {form:?}");

    // And as a JSON body.
    let object: serde_json::Map<String, serde_json::Value> = fields(&p)
        .iter()
        .filter_map(|(k, v)| Some((k.to_string(), serde_json::Value::String((*v)?.to_string()))))
        .collect();
    let json = serde_json::Value::Object(object).to_string();
    let again = parse_params(&headers(Some("application/json"), b""), None, json.as_bytes())
        .unwrap_or_else(|e| panic!("{json:?} does not read back: {e}"));
    assert!(same(&p, &again), "{p:?} became {again:?} through {json:?}");
});
