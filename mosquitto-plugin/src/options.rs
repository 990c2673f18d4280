//! The plugin's options: `plugin_opt_<name> <value>` lines in `mosquitto.conf`. What the
//! plugin shares with the HTTP service (how tokens are verified, where the policy comes from)
//! is the service's own configuration ([`KeysConfig`], [`PolicyConfig`] in `authorizer`),
//! read under the same names as its flags (`--jwks-url` is `plugin_opt_jwks_url`); the rest
//! is the plugin's alone. Anything unknown, repeated or malformed stops the broker at
//! start-up with a message naming the option: a typo must never leave a broker running with
//! a policy it was not meant to have.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use authorizer::config::{DEPRECATED, from_options, option_names, parse_switch};
use authorizer::{ConfigError, KeysConfig, PolicyConfig, Spelling};

use crate::revocation::OnRevoke;

/// The options only the plugin has, as written after `plugin_opt_`.
pub const PLUGIN_ONLY: &[&str] = &[
    "dev",
    "state_dir",
    "cache_dir",
    "watch",
    "metrics_listen",
    "sys_interval",
    "decision_cache_size",
    "log_level",
    "disconnect_on_expiry",
    "will_on_expiry",
    "bundle_token_file",
    "certificate_name",
    "on_revoke",
];

/// Old plugin spellings still read for one release, with a warning: (old, what it means now).
const RENAMED: &[(&str, &str)] = &[("dev_state_dir", "plugin_opt_dev true and plugin_opt_state_dir")];

/// Which name of a client's certificate the broker made its username: as the listener's
/// `use_identity_as_username` (the first common name) or `use_subject_as_username` (the
/// subject, RFC 2253).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CertificateName {
    #[default]
    CommonName,
    Subject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

/// What the plugin was configured to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// How tokens are verified (shared with the service).
    pub keys: KeysConfig,
    /// Where the policy comes from (shared with the service); `policy.policy` is required.
    pub policy: PolicyConfig,
    /// Trust the dev signing key kept in `state_dir` (as `mqtt-policy serve --dev`).
    pub dev: bool,
    /// Where the dev key is kept, and (in `cache/`) compiled modules.
    pub state_dir: Option<PathBuf>,
    /// Where compiled modules are cached, when not `state_dir/cache`; none by default
    /// (Mosquitto's user rarely has a writable home).
    pub cache_dir: Option<PathBuf>,
    /// Reload when the policy, module or test files change.
    pub watch: bool,
    /// Serve Prometheus metrics at `http://<addr>/metrics`.
    pub metrics_listen: Option<SocketAddr>,
    /// Publish the plugin's counters as retained `$SYS/broker/mqtt-policy/...` messages this
    /// often; zero turns it off.
    pub sys_interval: Duration,
    /// Decisions remembered per connection.
    pub decision_cache_size: usize,
    pub log_level: LogLevel,
    /// Disconnect a client when its token expires (`exp` + leeway); otherwise it stays
    /// connected and every check is denied until it re-authenticates or leaves.
    pub disconnect_on_expiry: bool,
    /// Send the will of a client disconnected at expiry.
    pub will_on_expiry: bool,
    /// Sent as a Bearer token when pulling `policy_url`.
    pub bundle_token_file: Option<PathBuf>,
    /// Which name of the certificate is the client's (as the listener makes the username).
    pub certificate_name: CertificateName,
    /// What happens to a connected client holding a subscription a new generation no
    /// longer grants.
    pub on_revoke: OnRevoke,
    /// Old spellings read, to warn about at start.
    pub deprecations: Vec<String>,
}

impl Options {
    /// Where compiled modules are cached, if anywhere.
    pub fn module_cache(&self) -> Option<PathBuf> {
        self.cache_dir.clone().or_else(|| self.state_dir.as_ref().map(|d| d.join("cache")))
    }

    /// Reads the options as Mosquitto passes them (name without `plugin_opt_`, value).
    pub fn parse(pairs: &[(String, String)]) -> Result<Options, ConfigError> {
        let keys_names = option_names::<KeysConfig>();
        let policy_names = option_names::<PolicyConfig>();
        let repeatable = ["bundle_public_key"];
        let mut deprecations = Vec::new();
        let mut pairs: Vec<(String, String)> = pairs.to_vec();
        // An old spelling beside its new one would be two values for one setting: refused
        // naming both, as the user wrote them.
        let given = |name: &str| pairs.iter().any(|(k, _)| k == name);
        let replaced_by =
            DEPRECATED.iter().map(|(old, new)| (*old, vec![*new])).chain(RENAMED.iter().map(|(old, new)| {
                (*old, new.split(' ').filter_map(|w| w.strip_prefix("plugin_opt_")).collect::<Vec<_>>())
            }));
        for (old, replacements) in replaced_by {
            for replacement in replacements {
                if given(old) && given(replacement) {
                    return Err(ConfigError(format!(
                        "plugin_opt_{old} (the old spelling) and plugin_opt_{replacement}: give only plugin_opt_{replacement}"
                    )));
                }
            }
            if pairs.iter().filter(|(k, _)| k == old).count() > 1 {
                return Err(ConfigError(format!("plugin_opt_{old} is given twice")));
            }
        }
        for (old, new) in DEPRECATED {
            for (k, _) in pairs.iter_mut().filter(|(k, _)| k == old) {
                deprecations.push(format!(
                    "plugin_opt_{old} is now plugin_opt_{new} (the old name goes in the next release)"
                ));
                *k = new.to_string();
            }
        }
        if let Some(i) = pairs.iter().position(|(k, _)| k == "dev_state_dir") {
            let (_, dir) = pairs.remove(i);
            deprecations.push(format!(
                "plugin_opt_dev_state_dir is now {} (the old name goes in the next release)",
                RENAMED[0].1
            ));
            pairs.push(("dev".into(), "true".into()));
            pairs.push(("state_dir".into(), dir));
        }
        let known: Vec<&str> = PLUGIN_ONLY
            .iter()
            .copied()
            .chain(keys_names.iter().map(String::as_str))
            .chain(policy_names.iter().map(String::as_str))
            .collect();
        let mut seen: Vec<&str> = Vec::new();
        for (k, _) in &pairs {
            if !known.contains(&k.as_str()) {
                let hint = policy_core::closest(k, &known)
                    .map(|c| format!("; did you mean plugin_opt_{c}?"))
                    .unwrap_or_default();
                return Err(ConfigError(format!(
                    "unknown option plugin_opt_{}{hint} (known: {})",
                    k.escape_debug(),
                    known.join(", ")
                )));
            }
            if seen.contains(&k.as_str()) && !repeatable.contains(&k.as_str()) {
                return Err(ConfigError(format!("plugin_opt_{k} is given twice")));
            }
            seen.push(k);
        }
        let of = |names: &[String]| -> Vec<(String, String)> {
            pairs.iter().filter(|(k, _)| names.contains(k)).cloned().collect()
        };
        let keys: KeysConfig = from_options(&of(&keys_names))?;
        let policy: PolicyConfig = from_options(&of(&policy_names))?;
        let get = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let flag = |name: &str, default: bool| -> Result<bool, ConfigError> {
            get(name)
                .map(|v| parse_switch(v).map_err(|e| ConfigError(format!("plugin_opt_{name}: {e}"))))
                .unwrap_or(Ok(default))
        };
        let path = |name: &str| -> Result<Option<PathBuf>, ConfigError> {
            match get(name).map(str::trim) {
                Some("") => Err(ConfigError(format!("plugin_opt_{name}: the value is empty"))),
                v => Ok(v.map(PathBuf::from)),
            }
        };
        let secs = |name: &str, default: u64, max: u64| -> Result<Duration, ConfigError> {
            match get(name).map(|v| (v, v.trim().parse::<u64>())) {
                None => Ok(Duration::from_secs(default)),
                Some((_, Ok(n))) if n <= max => Ok(Duration::from_secs(n)),
                Some((v, _)) => Err(ConfigError(format!(
                    "plugin_opt_{name}: expected a number of seconds from 0 to {max}, got {}",
                    policy_core::quote(v)
                ))),
            }
        };
        if policy.policy.is_none() {
            return Err(ConfigError(
                "plugin_opt_policy is required: the policy document the broker decides with, e.g. \
                 plugin_opt_policy /etc/mosquitto/celine.json"
                    .into(),
            ));
        }
        let options = Options {
            dev: flag("dev", false)?,
            state_dir: path("state_dir")?,
            cache_dir: path("cache_dir")?,
            watch: flag("watch", true)?,
            metrics_listen: get("metrics_listen")
                .map(|v| {
                    v.trim().parse::<SocketAddr>().map_err(|_| {
                        ConfigError(format!(
                            "plugin_opt_metrics_listen: expected an address like 127.0.0.1:9883, got {}",
                            policy_core::quote(v)
                        ))
                    })
                })
                .transpose()?,
            sys_interval: secs("sys_interval", 10, 86_400)?,
            decision_cache_size: match get("decision_cache_size") {
                None => 256,
                Some(v) => v.trim().parse::<usize>().ok().filter(|n| *n <= 1 << 20).ok_or_else(|| {
                    ConfigError(format!(
                        "plugin_opt_decision_cache_size: expected a number of decisions from 0 to 1048576, got {}",
                        policy_core::quote(v)
                    ))
                })?,
            },
            log_level: match get("log_level").map(|v| v.trim().to_ascii_lowercase()) {
                None => LogLevel::Info,
                Some(v) => match v.as_str() {
                    "error" => LogLevel::Error,
                    "warn" | "warning" => LogLevel::Warn,
                    "info" => LogLevel::Info,
                    "debug" => LogLevel::Debug,
                    _ => {
                        return Err(ConfigError(format!(
                            "plugin_opt_log_level: expected error, warn, info or debug, got {}",
                            policy_core::quote(&v)
                        )));
                    }
                },
            },
            disconnect_on_expiry: flag("disconnect_on_expiry", true)?,
            will_on_expiry: flag("will_on_expiry", false)?,
            bundle_token_file: path("bundle_token_file")?,
            certificate_name: match get("certificate_name").map(str::trim) {
                None | Some("common_name") => CertificateName::CommonName,
                Some("subject") => CertificateName::Subject,
                Some(other) => {
                    return Err(ConfigError(format!(
                        "plugin_opt_certificate_name: expected common_name (use_identity_as_username) or \
                         subject (use_subject_as_username), got {}",
                        policy_core::quote(other)
                    )));
                }
            },
            on_revoke: match get("on_revoke").map(str::trim) {
                None | Some("keep") => OnRevoke::Keep,
                Some("disconnect") => OnRevoke::Disconnect,
                Some("unsubscribe") => OnRevoke::Unsubscribe,
                Some(other) => {
                    return Err(ConfigError(format!(
                        "plugin_opt_on_revoke: expected keep (the client stays, each delivery on a revoked \
                         subscription is denied), disconnect, or unsubscribe (Mosquitto 2.1: just that \
                         subscription is removed), got {}",
                        policy_core::quote(other)
                    )));
                }
            },
            keys,
            policy,
            deprecations,
        };
        if options.dev && options.state_dir.is_none() {
            return Err(ConfigError(
                "plugin_opt_dev needs plugin_opt_state_dir: where the dev signing key is kept".into(),
            ));
        }
        options.keys.validate(options.dev, false, Spelling::PluginOption)?;
        options.policy.validate(Spelling::PluginOption)?;
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options, or the message of their error.
    fn opts(pairs: &[(&str, &str)]) -> Result<Options, String> {
        let pairs: Vec<(String, String)> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Options::parse(&pairs).map_err(|e| e.0)
    }

    const BASE: [(&str, &str); 2] = [("policy", "/etc/p.json"), ("jwks_file", "/etc/keys.json")];

    fn with(extra: (&str, &str)) -> Result<Options, String> {
        let mut all = BASE.to_vec();
        all.push(extra);
        opts(&all)
    }

    #[test]
    fn defaults_are_safe() {
        let o = opts(&BASE).unwrap();
        assert_eq!(o.policy.policy, Some(PathBuf::from("/etc/p.json")));
        assert_eq!(o.keys.leeway, 30);
        assert!(o.watch);
        assert_eq!(o.policy.module, None);
        assert_eq!(o.module_cache(), None);
        assert_eq!(o.metrics_listen, None);
        assert_eq!(o.log_level, LogLevel::Info);
        assert!(o.disconnect_on_expiry, "an expired token's connection is ended");
        assert!(!o.will_on_expiry, "without its will");
        assert_eq!((o.policy.policy_url, o.policy.policy_poll), (None, 10));
        assert_eq!(o.keys.username_claims(), ["preferred_username"]);
        assert!(o.keys.authorized_parties.is_empty());
    }

    #[test]
    fn every_mistake_names_its_option() {
        let e = with(("polcy", "x")).unwrap_err();
        assert!(e.contains("unknown option plugin_opt_polcy; did you mean plugin_opt_policy?"), "{e}");
        assert!(with(("policy", "/other")).unwrap_err().contains("plugin_opt_policy is given twice"));
        for (name, bad) in [
            ("leeway", "ten"),
            ("leeway", "-1"),
            ("watch", "maybe"),
            ("metrics_listen", "9100"),
            ("decision_cache_size", "lots"),
            ("log_level", "loud"),
            ("disconnect_on_expiry", "2"),
            ("will_on_expiry", ""),
            ("policy_poll", "0"),
            ("certificate_name", "cn"),
            ("certificate_subject_type", "user"),
        ] {
            let e = with((name, bad)).unwrap_err();
            assert!(e.contains(&format!("plugin_opt_{name}")), "{name} {bad}: {e}");
        }
        assert!(with(("issuer", "keycloak/realms/x")).unwrap_err().contains("plugin_opt_issuer"));
        assert!(with(("policy_url", "ftp://x/b.json")).unwrap_err().contains("plugin_opt_policy_url"));
        assert!(with(("module", " ")).unwrap_err().contains("plugin_opt_module"));
        assert!(opts(&[("jwks_file", "/k")]).unwrap_err().contains("plugin_opt_policy is required"));
        assert!(opts(&[("policy", "/p")]).unwrap_err().contains("no way to verify tokens"));
    }

    #[test]
    fn options_that_contradict_or_weaken_a_check_are_refused_naming_both() {
        let both = |pairs: &[(&str, &str)], a: &str, b: &str| {
            let e = opts(pairs).unwrap_err();
            assert!(e.contains(&format!("plugin_opt_{a}")) && e.contains(&format!("plugin_opt_{b}")), "{e}");
        };
        both(
            &[("policy", "/p"), ("jwks_file", "/k"), ("jwks_url", "https://idp/jwks")],
            "jwks_file",
            "jwks_url",
        );
        both(
            &[("policy", "/p"), ("dev", "true"), ("state_dir", "/d"), ("issuer", "https://idp/realms/x")],
            "issuer",
            "dev",
        );
        let public = ("bundle_public_key", "/etc/op.pub.pem");
        both(
            &[BASE[0], BASE[1], public, ("insecure_unsigned_bundles", "true"), ("policy_url", "https://s/b")],
            "bundle_public_key",
            "insecure_unsigned_bundles",
        );
        both(&[BASE[0], BASE[1], public], "bundle_public_key", "policy_url");
        let e = with(("policy_url", "https://s/bundle")).unwrap_err();
        assert!(e.contains("needs plugin_opt_bundle_public_key"), "{e}");
        let o = opts(&[
            BASE[0],
            BASE[1],
            ("policy_url", "https://s/b"),
            public,
            ("bundle_public_key", "/etc/new.pub.pem"),
        ])
        .unwrap();
        assert_eq!(o.policy.bundle_public_keys.len(), 2, "a rotation names two keys");
        let comma = ("bundle_public_key", "/etc/keys,2026/op.pub.pem");
        let o = opts(&[BASE[0], BASE[1], ("policy_url", "https://s/b"), comma]).unwrap();
        assert_eq!(o.policy.bundle_public_keys, [PathBuf::from(comma.1)], "one line, one path");
        assert!(
            opts(&[BASE[0], BASE[1], ("policy_url", "https://s/b"), ("insecure_unsigned_bundles", "yes")])
                .is_ok()
        );
        for (name, empty) in [("username_claims", ","), ("authorized_parties", " , ")] {
            let e = with((name, empty)).unwrap_err();
            assert!(e.starts_with(&format!("plugin_opt_{name}:")) && e.contains("names nothing"), "{e}");
        }
        let e = with(("username_claims", "")).unwrap_err();
        assert!(e.starts_with("plugin_opt_username_claims: the value is empty"), "{e}");
        let e = opts(&[("policy", "/p"), ("issuer", "http://keycloak.internal/realms/celine")]).unwrap_err();
        assert!(e.contains("plain http://"), "{e}");
        assert!(
            opts(&[("policy", "/p"), ("issuer", "http://127.0.0.1:8080/realms/celine")]).is_ok(),
            "loopback"
        );
        let private = [
            ("policy", "/p"),
            ("issuer", "http://keycloak:8080/realms/celine"),
            ("private_network_http", "true"),
        ];
        assert!(opts(&private).is_ok());
        let ca = with(("jwks_ca_file", "/etc/mosquitto/private-ca.pem")).unwrap();
        assert_eq!(ca.keys.jwks_ca_file, Some(PathBuf::from("/etc/mosquitto/private-ca.pem")));
        assert_eq!(
            with(("certificate_subject_type", "device")).unwrap().keys.certificate_subject_type(),
            Some(policy_engine::SubjectType::Device)
        );
        assert_eq!(with(("certificate_name", "subject")).unwrap().certificate_name, CertificateName::Subject);
    }

    #[test]
    fn old_spellings_still_read_with_a_warning() {
        let o =
            opts(&[("policy", "/p"), ("dev_state_dir", "/var/lib/mqtt-policy"), ("authorized_party", "svc")])
                .unwrap();
        assert!(o.dev);
        assert_eq!(o.state_dir, Some(PathBuf::from("/var/lib/mqtt-policy")));
        assert_eq!(o.module_cache(), Some(PathBuf::from("/var/lib/mqtt-policy/cache")));
        assert_eq!(o.keys.authorized_parties, ["svc"]);
        assert_eq!(o.deprecations.len(), 2, "{:?}", o.deprecations);
        // An old spelling beside its new one: refused, naming both.
        for (pairs, old, new) in [
            (
                &[("authorized_party", "a"), ("authorized_parties", "b")][..],
                "authorized_party",
                "authorized_parties",
            ),
            (&[("dev_state_dir", "/d"), ("state_dir", "/e")][..], "dev_state_dir", "state_dir"),
            (&[("dev_state_dir", "/d"), ("dev", "false")][..], "dev_state_dir", "dev"),
        ] {
            let mut all = vec![("policy", "/p")];
            all.extend_from_slice(pairs);
            let e = opts(&all).unwrap_err();
            assert!(
                e.contains(&format!("plugin_opt_{old} (the old spelling)"))
                    && e.contains(&format!("plugin_opt_{new}")),
                "{e}"
            );
        }
        let e = opts(&[("policy", "/p"), ("dev_state_dir", "/d"), ("dev_state_dir", "/e")]).unwrap_err();
        assert!(e.contains("plugin_opt_dev_state_dir is given twice"), "{e}");
    }

    #[test]
    fn values_parse() {
        let o = opts(&[
            ("policy", "/p.json"),
            ("issuer", "https://kc/realms/celine"),
            ("audience", "mqtt"),
            ("leeway", "5"),
            ("watch", "off"),
            ("metrics_listen", "127.0.0.1:9883"),
            ("sys_interval", "0"),
            ("decision_cache_size", "0"),
            ("log_level", "DEBUG"),
        ])
        .unwrap();
        assert_eq!(o.keys.issuer.as_deref(), Some("https://kc/realms/celine"));
        assert_eq!(o.keys.audience.as_deref(), Some("mqtt"));
        assert_eq!(o.keys.leeway, 5);
        assert!(!o.watch);
        assert_eq!(o.metrics_listen, Some("127.0.0.1:9883".parse().unwrap()));
        assert_eq!(o.sys_interval, Duration::ZERO);
        assert_eq!(o.decision_cache_size, 0);
        assert_eq!(o.log_level, LogLevel::Debug);
        assert_eq!(
            with(("username_claims", "preferred_username, email")).unwrap().keys.username_claims(),
            ["preferred_username", "email"]
        );
        assert!(with(("username_claims", "none")).unwrap().keys.username_claims().is_empty());
    }
}
