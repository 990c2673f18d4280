//! Which MQTT usernames name a token's subject.
//!
//! Some front ends only see the MQTT username after the CONNECT (go-auth's http backend sends
//! no token with its ACL calls), and policies may use `${username}`: in both cases a username
//! stands for an identity only when it was proven, at a CONNECT that showed the token, to name
//! that token's subject. It does when it equals the subject id (semantics.md §4) or the value
//! of one of the configured claims (by default `preferred_username`: people log in by name,
//! services as `service-account-<client>`; both are unique in a Keycloak realm).

use policy_engine::Subject;

use crate::jwks::InvalidSetting;
use serde_json::Value;

/// The claims whose values may be used as a subject's username (besides its id).
pub const DEFAULT_USERNAME_CLAIMS: &[&str] = &["preferred_username"];

/// A configured comma-separated list of names (claims, client ids), blanks dropped. A list
/// that names nothing (`""`, `","`) is refused: an option that restricts or widens must not
/// silently do neither.
pub fn parse_names(list: &str) -> Result<Vec<String>, InvalidSetting> {
    let names: Vec<String> =
        list.split(',').map(str::trim).filter(|c| !c.is_empty()).map(str::to_string).collect();
    if names.is_empty() {
        return Err(InvalidSetting(format!(
            "{:?} names nothing: give at least one name (comma-separated)",
            list
        )));
    }
    Ok(names)
}

/// A configured list of claim names: comma-separated, or `none` (the subject id only).
pub fn parse_username_claims(list: &str) -> Result<Vec<String>, InvalidSetting> {
    if list.trim() == "none" {
        return Ok(vec![]);
    }
    parse_names(list).map_err(|e| InvalidSetting(format!("{e}, or `none` for the subject id only")))
}

/// Does `username` name this subject (its id, or one of `claims_named` in the token)?
pub fn names_subject(username: &str, subject: &Subject, claims: &Value, claims_named: &[String]) -> bool {
    !username.is_empty()
        && (username == subject.id
            || claims_named.iter().any(|c| claims.get(c).and_then(Value::as_str) == Some(username)))
}

/// The usernames that name this subject, for telling a user how to configure a client.
pub fn subject_names(subject: &Subject, claims: &Value, claims_named: &[String]) -> Vec<String> {
    let mut names: Vec<String> = claims_named
        .iter()
        .filter_map(|c| claims.get(c).and_then(Value::as_str))
        .map(str::to_string)
        .collect();
    names.push(subject.id.clone());
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_engine::SubjectType;

    #[test]
    fn only_the_id_or_a_named_claim_names_the_subject() {
        let s = Subject { id: "u-1".into(), type_: SubjectType::User, groups: vec![], scopes: vec![] };
        let claims = serde_json::json!({"sub": "u-1", "preferred_username": "alice", "email": "a@x"});
        let default: Vec<String> = DEFAULT_USERNAME_CLAIMS.iter().map(|c| c.to_string()).collect();
        assert!(names_subject("u-1", &s, &claims, &default));
        assert!(names_subject("alice", &s, &claims, &default));
        assert!(!names_subject("a@x", &s, &claims, &default), "email is not named by default");
        assert!(names_subject("a@x", &s, &claims, &["email".to_string()]));
        assert!(!names_subject("", &s, &claims, &default));
        assert!(!names_subject("bob", &s, &claims, &default));
        assert!(!names_subject("alice", &s, &claims, &[]), "only the id when no claim is named");
        assert_eq!(subject_names(&s, &claims, &default), ["alice", "u-1"]);
    }
}
