//! Clients known by their TLS certificate (semantics.md §4b): the document's
//! `celine.mqtt.certificates` section says which certificate names are clients of the policy
//! and which groups each one has.
//!
//! ```json
//! "certificates": [ { "names": ["meter-*", "gateway-main"], "groups": ["meters"] } ]
//! ```
//! A name pattern is exact, or ends in `*` and matches every name that starts with the part
//! before it (`"*"` matches every name). A certificate name the section does not match is no
//! client of the policy: it gets no subject, so every check for it is denied. The names the
//! section matches are the *certificate namespace*: a front end never takes such a name as a
//! token holder's username, so a certificate and a token can never stand for each other.
//!
//! Not here: proving that a client holds the certificate (the broker's TLS handshake) and
//! which name the broker took from it (its CN or its subject), which the front ends check.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::invalid::Invalid;
use crate::json::quote;
use crate::model::{Subject, SubjectType};

/// One certificate name pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamePattern {
    Exact(String),
    /// `meter-*`, stored as `meter-`; `*` alone is the empty prefix.
    Prefix(String),
}

impl NamePattern {
    pub fn matches(&self, name: &str) -> bool {
        match self {
            NamePattern::Exact(e) => e == name,
            NamePattern::Prefix(p) => name.starts_with(p.as_str()),
        }
    }

    pub fn text(&self) -> String {
        match self {
            NamePattern::Exact(e) => e.clone(),
            NamePattern::Prefix(p) => format!("{p}*"),
        }
    }
}

/// One entry of the section: these names have these groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateEntry {
    pub names: Vec<NamePattern>,
    pub groups: Vec<String>,
}

/// The `certificates` section as loaded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Certificates {
    pub entries: Vec<CertificateEntry>,
}

impl Certificates {
    /// The subject of the client whose certificate name is `name`, as a subject of type
    /// `kind` (the front end's configuration): its id is the name, its groups the union of
    /// the groups of every entry that matches the name, in document order; it has no scopes.
    /// `Err` says why there is none.
    pub fn subject(&self, name: &str, kind: SubjectType) -> Result<Subject, Invalid> {
        if name.is_empty() {
            return Err(Invalid("the certificate names no one (its name is empty)".to_string()));
        }
        let mut groups: Vec<String> = Vec::new();
        let mut matched = false;
        for e in self.entries.iter().filter(|e| e.names.iter().any(|p| p.matches(name))) {
            matched = true;
            for g in &e.groups {
                if !groups.contains(g) {
                    groups.push(g.clone());
                }
            }
        }
        if !matched {
            return Err(Invalid(format!(
                "the certificate name {} is not in the policy's certificates section",
                quote(name)
            )));
        }
        Ok(Subject { id: name.to_string(), kind, groups, scopes: Vec::new() })
    }
}

#[cfg(test)]
mod tests {
    use crate::{Policy, SubjectType};

    fn load(section: &str) -> Result<Policy, alloc::vec::Vec<alloc::string::String>> {
        let doc =
            alloc::format!(r#"{{"celine":{{"mqtt":{{"acl":{{"rules":[]}},"certificates":{section}}}}}}}"#);
        Policy::load(&doc)
            .map_err(|ds| ds.iter().map(|d| alloc::format!("{}: {}", d.path, d.message)).collect())
    }

    #[test]
    fn names_map_to_the_union_of_their_groups() {
        let p = load(
            r#"[{"names":["meter-*"],"groups":["meters","devices"]},
                        {"names":["meter-007","gw"],"groups":["devices","special"]}]"#,
        )
        .unwrap();
        let s = p.certificate_subject("meter-007", SubjectType::Device).unwrap();
        assert_eq!((s.id.as_str(), s.kind), ("meter-007", SubjectType::Device));
        assert_eq!(s.groups, ["meters", "devices", "special"]);
        assert!(s.scopes.is_empty());
        assert_eq!(p.certificate_subject("gw", SubjectType::Service).unwrap().groups, ["devices", "special"]);
        let e = p.certificate_subject("gateway", SubjectType::Device).unwrap_err().0;
        assert!(e.contains("'gateway' is not in the policy's certificates section"), "{e}");
        assert!(p.certificate_subject("", SubjectType::Device).is_err());
        assert!(p.certificate_subject("meter", SubjectType::Device).is_err(), "the prefix is 'meter-'");
    }

    #[test]
    fn without_the_section_no_certificate_is_a_client() {
        let p = Policy::load(r#"{"celine":{"mqtt":{"acl":{"rules":[]}}}}"#).unwrap();
        assert!(p.certificate_subject("meter-1", SubjectType::Device).is_err());
        let all = load(r#"[{"names":["*"],"groups":[]}]"#).unwrap();
        assert!(all.certificate_subject("anything", SubjectType::Device).unwrap().groups.is_empty());
    }

    #[test]
    fn mistakes_name_their_path() {
        assert_eq!(
            load(r#"[{"names":["me*ter"],"groups":[]}]"#).unwrap_err(),
            ["celine.mqtt.certificates[0].names[0]: 'me*ter': '*' may only end a certificate name pattern"]
        );
        assert_eq!(
            load(r#"[{"names":[""],"groups":["a"]}]"#).unwrap_err(),
            ["celine.mqtt.certificates[0].names[0]: a certificate name pattern must not be empty"]
        );
        let e = load(r#"[{"name":["a"],"groups":[1]}]"#).unwrap_err();
        assert!(
            e.iter().any(|m| m.starts_with("celine.mqtt.certificates[0].name: unknown field 'name'")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|m| m.starts_with("celine.mqtt.certificates[0]: missing required field 'names'")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|m| m == "celine.mqtt.certificates[0].groups[0]: expected a string, found a number"),
            "{e:?}"
        );
        assert_eq!(
            load(r#"{}"#).unwrap_err(),
            ["celine.mqtt.certificates: expected a list, found an object"]
        );
    }
}
