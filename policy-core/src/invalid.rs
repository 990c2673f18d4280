//! The one error type of this crate's parsers and mappers.

use alloc::string::String;
use core::fmt;

/// Input that is not what it must be: JSON text that does not parse, a topic pattern,
/// request or subject that is malformed, claims that name no subject, a certificate name
/// that is no client of the policy. A caller sees it when the input came from outside (a
/// policy author, a test case, a token); there is nothing to retry. `Display` is the reason,
/// written for whoever supplied the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl core::error::Error for Invalid {}

impl From<Invalid> for String {
    fn from(e: Invalid) -> String {
        e.0
    }
}
