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

/// Does this string look like a JWT: three base64url parts, the first a JSON header with
/// `alg`? (Only its shape: whether it verifies is [`crate::Verifier`]'s question.)
pub fn looks_like_jwt(s: &str) -> bool {
    s.split('.').count() == 3 && jsonwebtoken::decode_header(s).is_ok()
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
        for not in ["", "a.b.c", "secret", "eyJhbGciOiJFUzI1NiJ9.e30", "e30.e30.e30"] {
            assert!(!looks_like_jwt(not), "{not}");
        }
        assert_eq!(token_in(Some(JWT), Some("alice")), Some((JWT, TokenFrom::Password)));
        assert_eq!(token_in(Some("secret"), Some(JWT)), Some((JWT, TokenFrom::Username)));
        assert_eq!(token_in(Some("secret"), Some("alice")), None, "a password that is no JWT is not a token");
        assert_eq!(token_in(None, None), None);
    }
}
