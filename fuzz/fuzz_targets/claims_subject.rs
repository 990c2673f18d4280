//! Any bytes as token claims: a subject or an error, never a panic; a subject has an id.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(subject) = policy_core::subject_from_claims_json(text) {
        assert!(!subject.id.is_empty(), "a subject without an id from {text:?}");
    }
});
