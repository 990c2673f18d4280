//! MQTT-4.7 topic matching written as directly as possible: the reference the property tests
//! (`tests/properties.rs`) and the `topic_relations` fuzz target check `policy_core::topic`
//! against.

use policy_core::topic::split;

/// Does `filter` match the topic name `topic`?
pub fn reference_match(filter: &str, topic: &str) -> bool {
    fn go(f: &[&str], t: &[&str]) -> bool {
        match (f.first(), t.first()) {
            (Some(&"#"), _) => true,
            (None, None) => true,
            (None, Some(_)) | (Some(_), None) => false,
            (Some(&"+"), Some(_)) => go(&f[1..], &t[1..]),
            (Some(a), Some(b)) => a == b && go(&f[1..], &t[1..]),
        }
    }
    if (filter.starts_with('+') || filter.starts_with('#')) && topic.starts_with('$') {
        return false;
    }
    go(&split(filter), &split(topic))
}
