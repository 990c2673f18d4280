//! Topic names and filters: validation never panics, and `matches` agrees with MQTT-4.7
//! written as directly as possible (the reference the property tests use), for every valid
//! filter and name the fuzzer builds (the input's first NUL byte separates the two).
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy_core::topic::{
    contains, matches, overlaps, split, subscription_filter, validate_filter, validate_name,
};

#[path = "../../policy-core/tests/reference/mod.rs"]
mod reference;
use reference::reference_match;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (filter, name) = text.split_once('\0').unwrap_or((text, text));
    let _ = subscription_filter(filter);
    let (Ok(()), Ok(())) = (validate_filter(filter), validate_name(name)) else { return };
    let (f, n) = (split(filter), split(name));
    assert_eq!(matches(&f[..], &n[..]), reference_match(filter, name), "matches({filter:?}, {name:?})");
    // A filter contains itself and overlaps itself; a name's filter contains what it matches.
    assert!(contains(&f[..], &f[..]), "contains({filter:?}, itself)");
    assert!(overlaps(&f[..], &f[..]), "overlaps({filter:?}, itself)");
    if matches(&f[..], &n[..]) {
        assert!(overlaps(&f[..], &n[..]), "{filter:?} matches {name:?} but does not overlap it");
    }
});
