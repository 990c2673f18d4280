//! Where a client's token is among the credentials it sent: the one rule every front end
//! follows (the broker plugin's CONNECT, go-auth's user, ACL and superuser calls).
//!
//! The password, when it is a JWT; else the username, when it is a JWT (go-auth's `jwt`
//! backend and clients that send the token as their username). Anything else is no token:
//! a password that is not a JWT is some other backend's, never tried as one.

/// Where the token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFrom {
    /// An `Authorization: Bearer` header (go-auth's `jwt` backend).
    Bearer,
    Password,
    Username,
}

/// Does this string look like a JWT: three dot-separated parts, the first a base64url JSON
/// object with an `alg` member (whatever its value)? Only its shape: whether it verifies is
/// the verifier's question. Deliberately broad, so that whatever could be a token is treated
/// as one (never shown as a name, never logged).
pub fn looks_like_jwt(s: &str) -> bool {
    use base64::Engine;
    let mut parts = s.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|h| h.get("alg").is_some())
}

/// The token among a client's password and username, by the rule above.
pub fn token_in<'a>(password: Option<&'a str>, username: Option<&'a str>) -> Option<(&'a str, TokenFrom)> {
    if let Some(p) = password.filter(|p| looks_like_jwt(p)) {
        return Some((p, TokenFrom::Password));
    }
    username.filter(|u| looks_like_jwt(u)).map(|u| (u, TokenFrom::Username))
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln";

    #[test]
    fn the_password_first_then_the_username_and_only_jwts() {
        assert!(looks_like_jwt(JWT));
        // Any algorithm, any header member: what could be a token counts as one.
        for header in
            [r#"{"alg":"ES512"}"#, r#"{"alg":"none"}"#, r#"{"alg":"ES256K","kid":7}"#, r#"{"alg":1}"#]
        {
            use base64::Engine;
            let h = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(header);
            assert!(looks_like_jwt(&format!("{h}.e30.c2ln")), "{header}");
            let padded = base64::engine::general_purpose::URL_SAFE.encode(header);
            assert!(looks_like_jwt(&format!("{padded}.e30.c2ln")), "{header}, padded");
        }
        for not in ["", "a.b.c", "secret", "eyJhbGciOiJFUzI1NiJ9.e30", "e30.e30.e30"] {
            assert!(!looks_like_jwt(not), "{not}");
        }
        assert_eq!(token_in(Some(JWT), Some("alice")), Some((JWT, TokenFrom::Password)));
        assert_eq!(token_in(Some("secret"), Some(JWT)), Some((JWT, TokenFrom::Username)));
        assert_eq!(token_in(Some("secret"), Some("alice")), None, "a password that is no JWT is not a token");
        assert_eq!(token_in(None, None), None);
    }
}
