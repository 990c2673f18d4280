//! Bundles: a policy document, the policy module and the policy test cases in one JSON
//! document, so that replicas and brokers run what another service runs (the way OPA
//! distributes bundles). A running service publishes its live generation as one
//! (`GET /bundle`); `mqtt-policy bundle` writes one to a file that any static HTTP server or
//! object store can serve. A pulled bundle is a candidate like any other: compiled, loaded,
//! tested (its own cases and the local ones) before it goes live.
//!
//! ```json
//! {"format": "mqtt-policy-bundle/1",
//!  "policy": "<the document's text>", "policy_sha256": "<hex>",
//!  "module": "<the component, base64>", "module_sha256": "<hex>",
//!  "tests": {"cases": [...]} or null, "tests_sha256": "<hex>" or null}
//! ```
//! The hashes are checked on arrival; the ETag (`"<hex>"`) is the SHA-256 of the three.

use std::path::Path;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::hash_of;

pub const FORMAT: &str = "mqtt-policy-bundle/1";

/// A bundle as written on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    pub format: String,
    pub policy: String,
    pub policy_sha256: String,
    pub module: String,
    pub module_sha256: String,
    pub tests: Option<serde_json::Value>,
    pub tests_sha256: Option<String>,
}

/// A bundle read and checked: what a candidate is built from.
#[derive(Debug, Clone)]
pub struct Contents {
    pub policy: String,
    pub module: Vec<u8>,
    /// The test cases, as a `policies/tests` document (`{"cases": [...]}`).
    pub tests: Option<String>,
    pub etag: String,
}

impl Bundle {
    pub fn new(policy: &str, module: &[u8], tests: Option<serde_json::Value>) -> Bundle {
        let tests_sha256 = tests.as_ref().map(|t| hash_of(t.to_string().as_bytes()));
        Bundle {
            format: FORMAT.to_string(),
            policy: policy.to_string(),
            policy_sha256: hash_of(policy.as_bytes()),
            module: base64::engine::general_purpose::STANDARD.encode(module),
            module_sha256: hash_of(module),
            tests,
            tests_sha256,
        }
    }

    /// The entity tag: the same for the same policy, module and cases, wherever served.
    pub fn etag(&self) -> String {
        let all = format!(
            "{}{}{}",
            self.policy_sha256,
            self.module_sha256,
            self.tests_sha256.as_deref().unwrap_or("")
        );
        format!("\"{}\"", hash_of(all.as_bytes()))
    }

    /// Reads a bundle and checks its format and hashes.
    pub fn read(bytes: &[u8]) -> Result<Contents, String> {
        let b: Bundle = serde_json::from_slice(bytes).map_err(|e| format!("not a bundle: {e}"))?;
        if b.format != FORMAT {
            return Err(format!("unknown bundle format {:?} (this service reads {FORMAT})", b.format));
        }
        let module = base64::engine::general_purpose::STANDARD
            .decode(b.module.as_bytes())
            .map_err(|e| format!("the bundle's module is not base64: {e}"))?;
        let check = |what: &str, got: String, want: &str| {
            if got == want { Ok(()) } else { Err(format!("the bundle's {what} does not match its SHA-256")) }
        };
        check("policy", hash_of(b.policy.as_bytes()), &b.policy_sha256)?;
        check("module", hash_of(&module), &b.module_sha256)?;
        let tests = match (&b.tests, &b.tests_sha256) {
            (None, None) => None,
            (Some(t), Some(h)) => {
                let text = t.to_string();
                check("test cases", hash_of(text.as_bytes()), h)?;
                Some(text)
            }
            _ => return Err("the bundle's tests and tests_sha256 must be given together".into()),
        };
        let etag = b.etag();
        Ok(Contents { policy: b.policy, module, tests, etag })
    }
}

/// The test cases under `path` (a file or a directory of `*.json`) as one `policies/tests`
/// document, for a bundle.
pub fn gather_cases(path: &Path) -> Result<serde_json::Value, String> {
    let mut cases = Vec::new();
    for file in crate::cases::case_files(path)? {
        let text =
            std::fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let doc: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", file.display()))?;
        match doc.get("cases").and_then(|c| c.as_array()) {
            Some(list) => cases.extend(list.iter().cloned()),
            None => return Err(format!("{} has no \"cases\" list", file.display())),
        }
    }
    Ok(serde_json::json!({ "cases": cases }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_reads_back_and_a_changed_byte_is_refused() {
        let b = Bundle::new("{}", b"\0asm", Some(serde_json::json!({"cases": []})));
        let text = serde_json::to_string(&b).unwrap();
        let c = Bundle::read(text.as_bytes()).unwrap();
        assert_eq!((c.policy.as_str(), c.module.as_slice(), c.etag), ("{}", &b"\0asm"[..], b.etag()));
        let tampered = text.replace("\"policy\":\"{}\"", "\"policy\":\"{ }\"");
        assert!(Bundle::read(tampered.as_bytes()).unwrap_err().contains("policy does not match"));
        assert!(Bundle::read(b"{\"format\":\"x\"}").unwrap_err().starts_with("not a bundle"));
    }
}
