//! From verified JWT claims to a [`Subject`], for Keycloak tokens (semantics.md §4).
//!
//! The host verifies signature, `exp`, `nbf`, `iss` and `aud` first; this module only reads
//! the claims. Claims of the wrong JSON type are ignored, never fatal; claims that yield no
//! id do not make a subject.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::invalid::Invalid;
use crate::json::Json;
use crate::model::{Subject, SubjectType};

const SERVICE_ACCOUNT_PREFIX: &str = "service-account-";

/// A non-empty string claim; anything else counts as absent.
fn string_claim<'a>(claims: &'a Json, name: &str) -> Option<&'a str> {
    claims.get(name).and_then(Json::as_str).filter(|s| !s.is_empty())
}

fn push_unique(out: &mut Vec<String>, s: &str) {
    if !s.is_empty() && !out.iter().any(|x| x == s) {
        out.push(s.to_string());
    }
}

/// Maps a token's claims (a JSON object) to the subject the policy sees.
pub fn subject_from_claims(claims: &Json) -> Result<Subject, Invalid> {
    if !matches!(claims, Json::Object(_)) {
        return Err(Invalid(alloc::format!("the claims must be a JSON object, found {}", claims.kind())));
    }
    let client_id = string_claim(claims, "client_id").or_else(|| string_claim(claims, "clientId"));
    let preferred = string_claim(claims, "preferred_username");
    let service_account =
        preferred.and_then(|p| p.strip_prefix(SERVICE_ACCOUNT_PREFIX)).filter(|s| !s.is_empty());
    let sub = string_claim(claims, "sub");

    let (kind, id) =
        if client_id.is_some() || preferred.is_some_and(|p| p.starts_with(SERVICE_ACCOUNT_PREFIX)) {
            let id = client_id.or_else(|| string_claim(claims, "azp")).or(service_account).or(sub);
            (SubjectType::Service, id)
        } else {
            (SubjectType::User, sub.or(preferred))
        };
    let Some(id) = id else {
        return Err(Invalid(String::from(match kind {
            SubjectType::Service => {
                "the token names no service: it has none of client_id, clientId, azp, preferred_username or sub"
            }
            _ => "the token names no user: it has neither sub nor preferred_username",
        })));
    };

    let mut groups = Vec::new();
    if kind == SubjectType::User {
        if let Some(Json::Array(gs)) = claims.get("groups") {
            for g in gs.iter().filter_map(Json::as_str) {
                push_unique(&mut groups, g.strip_prefix('/').unwrap_or(g));
            }
        }
        if let Some(Json::Array(roles)) = claims.get("realm_access").and_then(|r| r.get("roles")) {
            for r in roles.iter().filter_map(Json::as_str) {
                push_unique(&mut groups, r);
            }
        }
    }

    let mut scopes = Vec::new();
    match claims.get("scope") {
        Some(Json::String(s)) => s.split_whitespace().for_each(|s| push_unique(&mut scopes, s)),
        Some(Json::Array(items)) => {
            items.iter().filter_map(Json::as_str).for_each(|s| push_unique(&mut scopes, s))
        }
        _ => {}
    }

    Ok(Subject { id: id.to_string(), kind, groups, scopes })
}

/// [`subject_from_claims`] over JSON text.
pub fn subject_from_claims_json(text: &str) -> Result<Subject, Invalid> {
    subject_from_claims(&Json::parse(text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(text: &str) -> Result<Subject, String> {
        subject_from_claims_json(text).map_err(String::from)
    }

    #[test]
    fn keycloak_user_token() {
        let s =
            map(r#"{"sub":"f1","preferred_username":"alice","groups":["/viewers","/org/editors","/viewers"],
                        "realm_access":{"roles":["offline_access"]},"scope":"openid  profile"}"#)
            .unwrap();
        assert_eq!(s.kind, SubjectType::User);
        assert_eq!(s.id, "f1");
        assert_eq!(s.groups, ["viewers", "org/editors", "offline_access"]);
        assert_eq!(s.scopes, ["openid", "profile"]);
    }

    #[test]
    fn keycloak_service_tokens() {
        let s = map(r#"{"sub":"s9","azp":"svc-x","client_id":"svc-new","preferred_username":"service-account-svc-new","groups":["/admins"]}"#).unwrap();
        assert_eq!((s.kind, s.id.as_str()), (SubjectType::Service, "svc-new"));
        assert!(s.groups.is_empty(), "services have no groups");
        let s = map(r#"{"sub":"s9","azp":"svc-x","preferred_username":"service-account-svc-z"}"#).unwrap();
        assert_eq!(s.id, "svc-x");
        let s = map(r#"{"sub":"s9","preferred_username":"service-account-svc-z","scope":["mqtt.read"]}"#)
            .unwrap();
        assert_eq!((s.id.as_str(), s.scopes.as_slice()), ("svc-z", &["mqtt.read".to_string()][..]));
    }

    #[test]
    fn wrong_types_are_ignored_and_no_id_is_refused() {
        let s = map(r#"{"sub":"u","client_id":5,"groups":"admins","scope":7}"#).unwrap();
        assert_eq!((s.kind, s.groups.len(), s.scopes.len()), (SubjectType::User, 0, 0));
        assert!(map(r#"{"groups":["/admins"]}"#).unwrap_err().contains("names no user"));
        assert!(map(r#"{"sub":""}"#).is_err());
        assert!(map("[]").unwrap_err().contains("JSON object"));
    }
}
