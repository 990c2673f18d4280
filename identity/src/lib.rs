//! Who is asking: everything between a bearer token and a policy subject, shared by the HTTP
//! service (`host/`) and the Mosquitto plugin (`mosquitto-plugin/`).
//!
//! - [`jwks`]: where trusted keys come from (a JWKS file or URL, OIDC discovery on the
//!   issuer, the dev key), when they are refreshed, and what verifying a token checks.
//!   [`Verifier::verify_now`] decides with the keys already held and never waits (an event
//!   loop's path: an unknown key id refuses and schedules a refresh); [`Verifier::verify`]
//!   may wait for that refresh (a server's path).
//! - [`tokens`]: verified tokens cached by hash until their `exp` (and only while their key is
//!   still trusted), and the subject each maps to, cached per policy generation because the
//!   policy module owns the claims → subject mapping.
//! - [`location`]: where a client's token is among the credentials it sent (one rule for
//!   every front end).
//! - [`names`]: which MQTT usernames name a token's subject (sessions keyed by username,
//!   `${username}` in rules).
//! - [`devkey`]: dev mode's local signing key and Keycloak-shaped tokens.
//!
//! Not here: what a subject may do (the policy module, through `policy-engine`), and how a
//! front end finds the token in its requests. Tokens are never logged or kept in clear.

#[cfg(feature = "engine")]
pub mod devkey;
#[cfg(feature = "verify")]
pub mod jwks;
pub mod location;
#[cfg(feature = "engine")]
pub mod names;
#[cfg(feature = "engine")]
pub mod tokens;

#[cfg(feature = "verify")]
pub use jwks::{
    InvalidSetting, KeySource, NotReady, PlainHttp, Refused, Verified, Verifier, VerifierConfig,
    check_transport, now,
};
pub use location::{TokenFrom, looks_like_jwt, token_in};
#[cfg(feature = "engine")]
pub use names::{DEFAULT_USERNAME_CLAIMS, names_subject, parse_names, parse_username_claims, subject_names};
#[cfg(feature = "engine")]
pub use tokens::{Identities, TokenError, TokenHash, UntilExp, token_hash};
