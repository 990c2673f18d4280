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
//!  "tests": {"cases": [...]} or null, "tests_sha256": "<hex>" or null,
//!  "issued_at": <seconds since the epoch>,
//!  "signature": {"algorithm": "ed25519", "key_id": "<hex>", "value": "<base64>"}}
//! ```
//! The hashes are checked on arrival; the ETag (`"<hex>"`) is the SHA-256 of the three and
//! of the signature, so a bundle signed anew is a new bundle to every puller.
//!
//! **Signatures.** The hashes describe only the bundle itself; what makes it authentic is an
//! Ed25519 signature over [`Contents::signed_statement`] (the format, the three hashes and
//! when it was issued) by
//! the operator's key ([`SigningKey`], PKCS#8 PEM as `openssl genpkey -algorithm ed25519`
//! writes it). A puller holds the public keys it trusts ([`TrustedKeys`], SPKI PEM as
//! `openssl pkey -pubout` writes it; several for a rotation) and refuses a bundle that no key
//! of its own signed, whatever the transport, or one issued before the newest it took (an old
//! signed bundle replayed to roll a broker back).

use std::path::Path;

use base64::Engine as _;
use ed25519_dalek::Signer as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey};
use serde::{Deserialize, Serialize};

use crate::hash_of;

/// Why a bundle could not be read, trusted or made, or a key for bundles read. `Display` is
/// the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleError {
    /// A file could not be read (a key file, a test-case file or directory): its contents
    /// were never looked at, and may be fine once it can be.
    Unreadable(String),
    /// Read, but not what it must be: not a bundle, an unknown format, a part that does not
    /// match its SHA-256, a key that is not an Ed25519 key in PEM, test cases that are not a
    /// `{"cases": [...]}` document. The same bytes are refused again.
    Malformed(String),
    /// A well-formed bundle a puller must not take, whatever the transport: unsigned, signed
    /// with another algorithm or by a key it does not trust, or issued before the newest one
    /// it took (an old bundle replayed).
    Untrusted(String),
}

impl std::fmt::Display for BundleError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            BundleError::Unreadable(why) | BundleError::Malformed(why) | BundleError::Untrusted(why) => {
                f.write_str(why)
            }
        }
    }
}

impl std::error::Error for BundleError {}

/// The only signature algorithm bundles use.
pub const SIGNATURE_ALGORITHM: &str = "ed25519";

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
    /// When it was signed (seconds since the epoch; a replica's `GET /bundle`: when its
    /// generation went live). Covered by the signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

/// A bundle's signature as written on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub algorithm: String,
    /// Which key signed ([`key_id`]): tells an operator which key to trust.
    pub key_id: String,
    /// The signature, base64.
    pub value: String,
}

/// A bundle read and checked: what a candidate is built from.
#[derive(Debug, Clone)]
pub struct Contents {
    pub policy: String,
    pub module: Vec<u8>,
    /// The test cases, as a `policies/tests` document (`{"cases": [...]}`).
    pub tests: Option<String>,
    pub etag: String,
    hashes: [String; 3],
    pub issued_at: Option<u64>,
    pub signature: Option<Signature>,
}

/// The message a signature covers: the format, the hashes of the three parts (which
/// [`Bundle::read`] checks against the parts themselves) and when it was issued.
fn statement(hashes: [&str; 3], issued_at: Option<u64>) -> String {
    let [policy, module, tests] = hashes;
    let or_dash = |s: &str| if s.is_empty() { "-".to_string() } else { s.to_string() };
    format!(
        "{FORMAT} signed\npolicy {policy}\nmodule {module}\ntests {}\nissued {}\n",
        or_dash(tests),
        issued_at.map(|t| t.to_string()).unwrap_or_else(|| "-".into())
    )
}

/// A public key's id: the first 16 hex digits of the SHA-256 of its SPKI (DER) encoding.
pub fn key_id(key: &ed25519_dalek::VerifyingKey) -> String {
    let der = key.to_public_key_der().map(|d| d.as_bytes().to_vec()).unwrap_or_default();
    hash_of(&der)[..16].to_string()
}

/// The operator's private key, which signs bundles (`mqtt-policy bundle --sign`,
/// `serve --bundle-signing-key`).
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    /// Reads a PKCS#8 PEM Ed25519 private key (`openssl genpkey -algorithm ed25519`).
    pub fn from_pem(pem: &str) -> Result<SigningKey, BundleError> {
        ed25519_dalek::SigningKey::from_pkcs8_pem(pem.trim()).map(SigningKey).map_err(|e| {
            BundleError::Malformed(format!(
                "not an Ed25519 private key in PKCS#8 PEM (as `openssl genpkey -algorithm ed25519` writes): {e}"
            ))
        })
    }

    pub fn read(path: &Path) -> Result<SigningKey, BundleError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BundleError::Unreadable(format!("cannot read {}: {e}", path.display())))?;
        SigningKey::from_pem(&text).map_err(|e| BundleError::Malformed(format!("{}: {e}", path.display())))
    }

    pub fn key_id(&self) -> String {
        key_id(&self.0.verifying_key())
    }
}

/// The public keys a puller trusts to sign bundles. Empty: none (every bundle is refused).
#[derive(Clone, Default)]
pub struct TrustedKeys(Vec<(String, ed25519_dalek::VerifyingKey)>);

impl std::fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(id, _)| id)).finish()
    }
}

impl TrustedKeys {
    /// Reads SPKI PEM Ed25519 public keys (`openssl pkey -pubout`), one per file.
    pub fn read(paths: &[std::path::PathBuf]) -> Result<TrustedKeys, BundleError> {
        let mut keys = Vec::with_capacity(paths.len());
        for p in paths {
            let text = std::fs::read_to_string(p)
                .map_err(|e| BundleError::Unreadable(format!("cannot read {}: {e}", p.display())))?;
            let key = TrustedKeys::parse(&text)
                .map_err(|e| BundleError::Malformed(format!("{}: {e}", p.display())))?;
            keys.push((key_id(&key), key));
        }
        Ok(TrustedKeys(keys))
    }

    fn parse(pem: &str) -> Result<ed25519_dalek::VerifyingKey, BundleError> {
        ed25519_dalek::VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| {
            BundleError::Malformed(format!(
                "not an Ed25519 public key in PEM (as `openssl pkey -pubout` writes): {e}"
            ))
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The ids of the keys, for logs and status.
    pub fn ids(&self) -> Vec<String> {
        self.0.iter().map(|(id, _)| id.clone()).collect()
    }

    /// Checks that one of these keys signed the bundle; returns its id, or why not (always
    /// [`BundleError::Untrusted`]: a signature that cannot be read vouches for nothing).
    pub fn verify(&self, contents: &Contents) -> Result<String, BundleError> {
        let untrusted = |why: String| BundleError::Untrusted(why);
        let Some(sig) = &contents.signature else {
            return Err(untrusted(
                "the bundle is not signed (sign it with `mqtt-policy bundle --sign`, or serve it with \
                        `serve --bundle-signing-key`)"
                    .into(),
            ));
        };
        if sig.algorithm != SIGNATURE_ALGORITHM {
            return Err(untrusted(format!(
                "the bundle's signature uses {:?}, not {SIGNATURE_ALGORITHM}",
                sig.algorithm
            )));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sig.value.as_bytes())
            .map_err(|_| untrusted("the bundle's signature is not base64".to_string()))?;
        let signature = ed25519_dalek::Signature::from_slice(&bytes)
            .map_err(|_| untrusted("the bundle's signature is not an Ed25519 signature".to_string()))?;
        let message = contents.signed_statement();
        for (id, key) in &self.0 {
            if key.verify_strict(message.as_bytes(), &signature).is_ok() {
                return Ok(id.clone());
            }
        }
        Err(untrusted(format!(
            "the bundle's signature (key {}) is not by a trusted key (trusted: {})",
            policy_core::quote(&sig.key_id),
            self.ids().join(", ")
        )))
    }
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
            issued_at: None,
            signature: None,
        }
    }

    /// Signs the bundle with `key` as issued at `issued_at` (seconds since the epoch),
    /// replacing any signature it had.
    pub fn sign(&mut self, key: &SigningKey, issued_at: u64) {
        self.issued_at = Some(issued_at);
        let tests = self.tests_sha256.as_deref().unwrap_or("");
        let message = statement([&self.policy_sha256, &self.module_sha256, tests], self.issued_at);
        let value =
            base64::engine::general_purpose::STANDARD.encode(key.0.sign(message.as_bytes()).to_bytes());
        self.signature =
            Some(Signature { algorithm: SIGNATURE_ALGORITHM.into(), key_id: key.key_id(), value });
    }

    /// The entity tag: the same for the same policy, module, cases and signature, wherever
    /// served.
    pub fn etag(&self) -> String {
        etag(
            &[
                self.policy_sha256.clone(),
                self.module_sha256.clone(),
                self.tests_sha256.clone().unwrap_or_default(),
            ],
            self.signature.as_ref(),
        )
    }

    /// Reads a bundle and checks its format and hashes.
    pub fn read(bytes: &[u8]) -> Result<Contents, BundleError> {
        let malformed = |why: String| BundleError::Malformed(why);
        let b: Bundle = serde_json::from_slice(bytes).map_err(|e| malformed(format!("not a bundle: {e}")))?;
        if b.format != FORMAT {
            return Err(malformed(format!(
                "unknown bundle format {:?} (this service reads {FORMAT})",
                b.format
            )));
        }
        let module = base64::engine::general_purpose::STANDARD
            .decode(b.module.as_bytes())
            .map_err(|e| malformed(format!("the bundle's module is not base64: {e}")))?;
        let check = |what: &str, got: String, want: &str| {
            if got == want {
                Ok(())
            } else {
                Err(malformed(format!("the bundle's {what} does not match its SHA-256")))
            }
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
            _ => return Err(malformed("the bundle's tests and tests_sha256 must be given together".into())),
        };
        let etag = b.etag();
        let hashes = [b.policy_sha256, b.module_sha256, b.tests_sha256.unwrap_or_default()];
        Ok(Contents {
            policy: b.policy,
            module,
            tests,
            etag,
            hashes,
            issued_at: b.issued_at,
            signature: b.signature,
        })
    }
}

fn etag(hashes: &[String; 3], signature: Option<&Signature>) -> String {
    let mut all = hashes.concat();
    if let Some(s) = signature {
        all.push_str(&s.value);
    }
    format!("\"{}\"", hash_of(all.as_bytes()))
}

impl Contents {
    /// What a signature of this bundle covers.
    pub fn signed_statement(&self) -> String {
        let [policy, module, tests] = &self.hashes;
        statement([policy, module, tests], self.issued_at)
    }
}

/// The test cases under `path` (a file or a directory of `*.json`) as one `policies/tests`
/// document, for a bundle.
pub fn gather_cases(path: &Path) -> Result<serde_json::Value, BundleError> {
    let mut cases = Vec::new();
    for file in crate::cases::case_files(path).map_err(BundleError::Unreadable)? {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| BundleError::Unreadable(format!("cannot read {}: {e}", file.display())))?;
        let doc: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| BundleError::Malformed(format!("{} is not JSON: {e}", file.display())))?;
        match doc.get("cases").and_then(|c| c.as_array()) {
            Some(list) => cases.extend(list.iter().cloned()),
            None => return Err(BundleError::Malformed(format!("{} has no \"cases\" list", file.display()))),
        }
    }
    Ok(serde_json::json!({ "cases": cases }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout`.
    const OPENSSL_PRIVATE: &str = include_str!("../../testing/support/keys/bundle-signing.pem");
    const OPENSSL_PUBLIC: &str = include_str!("../../testing/support/keys/bundle-signing.pub.pem");
    const OTHER_PUBLIC: &str = include_str!("../../testing/support/keys/other.pub.pem");

    fn trusted(pems: &[&str]) -> TrustedKeys {
        TrustedKeys(pems.iter().map(|p| TrustedKeys::parse(p).unwrap()).map(|k| (key_id(&k), k)).collect())
    }

    #[test]
    fn a_bundle_signed_with_an_openssl_key_verifies_with_its_public_key_only() {
        let key = SigningKey::from_pem(OPENSSL_PRIVATE).unwrap();
        let mut b = Bundle::new("{}", b"\0asm", Some(serde_json::json!({"cases": []})));
        let unsigned_etag = b.etag();
        b.sign(&key, 1_700_000_000);
        assert_ne!(b.etag(), unsigned_etag, "a signed bundle is a new bundle to pullers");
        let text = serde_json::to_string(&b).unwrap();
        let contents = Bundle::read(text.as_bytes()).unwrap();
        let ours = trusted(&[OPENSSL_PUBLIC]);
        assert_eq!(ours.verify(&contents).unwrap(), key.key_id());
        // Rotation: either of two trusted keys will do.
        assert!(trusted(&[OTHER_PUBLIC, OPENSSL_PUBLIC]).verify(&contents).is_ok());
        let e = trusted(&[OTHER_PUBLIC]).verify(&contents).unwrap_err();
        assert!(matches!(&e, BundleError::Untrusted(why) if why.contains("not by a trusted key")), "{e}");
        let unsigned =
            Bundle::read(serde_json::to_string(&Bundle::new("{}", b"\0asm", None)).unwrap().as_bytes());
        assert!(ours.verify(&unsigned.unwrap()).unwrap_err().to_string().contains("not signed"));
        // The signature covers the hashes, which cover the parts: a changed policy with its
        // hash recomputed keeps a signature that no longer matches.
        let mut forged: Bundle = serde_json::from_str(&text).unwrap();
        forged.policy = "{ }".into();
        forged.policy_sha256 = crate::hash_of(b"{ }");
        let forged = Bundle::read(serde_json::to_string(&forged).unwrap().as_bytes()).unwrap();
        assert!(ours.verify(&forged).unwrap_err().to_string().contains("not by a trusted key"));
        // So does a signature moved to another issue time.
        let mut backdated: Bundle = serde_json::from_str(&text).unwrap();
        backdated.issued_at = Some(1_800_000_000);
        let backdated = Bundle::read(serde_json::to_string(&backdated).unwrap().as_bytes()).unwrap();
        assert!(ours.verify(&backdated).is_err());
        assert_eq!(contents.issued_at, Some(1_700_000_000));
        assert!(SigningKey::from_pem(OPENSSL_PUBLIC).is_err());
        assert!(TrustedKeys::parse(OPENSSL_PRIVATE).is_err());
    }

    #[test]
    fn a_bundle_reads_back_and_a_changed_byte_is_refused() {
        let b = Bundle::new("{}", b"\0asm", Some(serde_json::json!({"cases": []})));
        let text = serde_json::to_string(&b).unwrap();
        let c = Bundle::read(text.as_bytes()).unwrap();
        assert_eq!((c.policy.as_str(), c.module.as_slice(), c.etag), ("{}", &b"\0asm"[..], b.etag()));
        let tampered = text.replace("\"policy\":\"{}\"", "\"policy\":\"{ }\"");
        let e = Bundle::read(tampered.as_bytes()).unwrap_err();
        assert!(matches!(&e, BundleError::Malformed(why) if why.contains("policy does not match")), "{e}");
        assert!(Bundle::read(b"{\"format\":\"x\"}").unwrap_err().to_string().starts_with("not a bundle"));
    }
}
