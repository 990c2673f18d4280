//! The plugin's options: `plugin_opt_<name> <value>` lines in `mosquitto.conf`, named like the
//! server's flags. Anything unknown, repeated or malformed stops the broker at start-up with
//! a message naming the option: a typo must never leave a broker running with a policy it
//! was not meant to have.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Every option the plugin knows, as written after `plugin_opt_`.
pub const KNOWN: &[&str] = &[
    "policy",
    "module",
    "tests",
    "issuer",
    "audience",
    "jwks_url",
    "jwks_file",
    "leeway",
    "jwks_min_refresh",
    "jwks_refresh",
    "dev_state_dir",
    "cache_dir",
    "watch",
    "metrics_listen",
    "sys_interval",
    "decision_cache_size",
    "log_level",
    "username_claims",
    "authorized_parties",
    "disconnect_on_expiry",
    "will_on_expiry",
    "policy_url",
    "policy_poll",
    "bundle_token_file",
    "bundle_public_key",
    "insecure_unsigned_bundles",
    "private_network_http",
    "certificate_subject_type",
    "certificate_name",
];

/// The options that may be given more than once.
const REPEATABLE: &[&str] = &["bundle_public_key"];

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
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// The policy document (required).
    pub policy: PathBuf,
    /// A policy module; the built-in one when absent.
    pub module: Option<PathBuf>,
    /// Policy test cases every candidate must pass (a file or a directory of `*.json`).
    pub tests: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub jwks_url: Option<String>,
    pub jwks_file: Option<PathBuf>,
    pub leeway: Duration,
    pub jwks_min_refresh: Duration,
    /// The key set is re-read this often: a withdrawn key stops being trusted within it.
    pub jwks_refresh: Duration,
    /// Trust the dev signing key kept in this directory (as `mqtt-policy serve --dev`).
    pub dev_state_dir: Option<PathBuf>,
    /// Where compiled modules are cached; none by default (Mosquitto's user rarely has a
    /// writable home).
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
    /// Claims whose value, besides the subject id, may be a client's MQTT username as
    /// `${username}` (comma-separated; `none` for the subject id only).
    pub username_claims: Vec<String>,
    /// When not empty, tokens must have been issued to one of these clients (`azp`).
    pub authorized_parties: Vec<String>,
    /// Disconnect a client when its token expires (`exp` + leeway); otherwise it stays
    /// connected and every check is denied until it re-authenticates or leaves.
    pub disconnect_on_expiry: bool,
    /// Send the will of a client disconnected at expiry.
    pub will_on_expiry: bool,
    /// Pull the policy, module and test cases as a bundle from here (a service's `GET
    /// /bundle`, or a file written by `mqtt-policy bundle` on any web server); `policy`
    /// decides until the first pull succeeds.
    pub policy_url: Option<String>,
    /// How often to pull `policy_url`.
    pub policy_poll: Duration,
    /// Sent as a Bearer token when pulling.
    pub bundle_token_file: Option<PathBuf>,
    /// Ed25519 public keys (PEM) one of which must have signed a pulled bundle; several for a
    /// rotation.
    pub bundle_public_keys: Vec<PathBuf>,
    /// Take pulled bundles unsigned (an explicit choice, logged at start).
    pub insecure_unsigned_bundles: bool,
    /// Fetch key sets and OIDC discovery over plain `http://` from any host, not only
    /// loopback (a private network; logged at start).
    pub private_network_http: bool,
    /// Decide clients known by their TLS certificate (not admitted by this plugin, their
    /// username the certificate's name) as subjects of this type; without it they are denied
    /// every check. Only `device`: users and services come from tokens.
    pub certificate_subject_type: Option<policy_engine::SubjectType>,
    /// Which name of the certificate is the client's (as the listener makes the username).
    pub certificate_name: CertificateName,
}

fn parse_bool(name: &str, v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" => Ok(true),
        "false" | "no" | "off" => Ok(false),
        _ => Err(format!("plugin_opt_{name}: expected true or false, got {}", policy_core::quote(v))),
    }
}

fn parse_secs(name: &str, v: &str, max: u64) -> Result<Duration, String> {
    match v.parse::<u64>() {
        Ok(n) if n <= max => Ok(Duration::from_secs(n)),
        _ => Err(format!(
            "plugin_opt_{name}: expected a number of seconds from 0 to {max}, got {}",
            policy_core::quote(v)
        )),
    }
}

/// How often something recurring happens: 1 to 86,400 seconds (never 0).
fn period(name: &str, v: &str) -> Result<Duration, String> {
    match parse_secs(name, v, 86_400)? {
        d if d.is_zero() => Err(format!("plugin_opt_{name}: at least 1 second")),
        d => Ok(d),
    }
}

fn non_empty(name: &str, v: &str) -> Result<String, String> {
    if v.trim().is_empty() {
        return Err(format!("plugin_opt_{name}: the value is empty"));
    }
    Ok(v.trim().to_string())
}

impl Options {
    /// Reads the options as Mosquitto passes them (name without `plugin_opt_`, value).
    pub fn parse(pairs: &[(String, String)]) -> Result<Options, String> {
        let mut seen: Vec<&str> = Vec::new();
        for (k, _) in pairs {
            if !KNOWN.contains(&k.as_str()) {
                let hint = policy_core::closest(k, KNOWN)
                    .map(|c| format!("; did you mean plugin_opt_{c}?"))
                    .unwrap_or_default();
                return Err(format!(
                    "unknown option plugin_opt_{}{hint} (known: {})",
                    k.escape_debug(),
                    KNOWN.join(", ")
                ));
            }
            if seen.contains(&k.as_str()) && !REPEATABLE.contains(&k.as_str()) {
                return Err(format!("plugin_opt_{k} is given twice"));
            }
            seen.push(k);
        }
        let get = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let text = |name: &str| get(name).map(|v| non_empty(name, v)).transpose();
        let path = |name: &str| text(name).map(|t| t.map(PathBuf::from));
        let policy = path("policy")?.ok_or_else(|| {
            "plugin_opt_policy is required: the policy document the broker decides with, e.g. \
             plugin_opt_policy /etc/mosquitto/celine.json"
                .to_string()
        })?;
        let flag =
            |name: &str| get(name).map(|v| parse_bool(name, v)).transpose().map(Option::unwrap_or_default);
        let url = |name: &str| -> Result<Option<String>, String> {
            let v = text(name)?;
            if let Some(u) = &v
                && !(u.starts_with("http://") || u.starts_with("https://"))
            {
                return Err(format!(
                    "plugin_opt_{name}: expected an http:// or https:// URL, got {}",
                    policy_core::quote(u)
                ));
            }
            Ok(v)
        };
        let options = Options {
            policy,
            module: path("module")?,
            tests: path("tests")?,
            issuer: url("issuer")?,
            audience: text("audience")?,
            jwks_url: url("jwks_url")?,
            jwks_file: path("jwks_file")?,
            leeway: get("leeway").map(|v| parse_secs("leeway", v, 3600)).transpose()?.unwrap_or(Duration::from_secs(30)),
            jwks_min_refresh: get("jwks_min_refresh")
                .map(|v| parse_secs("jwks_min_refresh", v, 86_400))
                .transpose()?
                .unwrap_or(Duration::from_secs(10)),
            jwks_refresh: get("jwks_refresh")
                .map(|v| period("jwks_refresh", v))
                .transpose()?
                .unwrap_or(identity::jwks::PERIODIC_REFRESH),
            dev_state_dir: path("dev_state_dir")?,
            cache_dir: path("cache_dir")?,
            watch: get("watch").map(|v| parse_bool("watch", v)).transpose()?.unwrap_or(true),
            metrics_listen: get("metrics_listen")
                .map(|v| {
                    v.trim().parse::<SocketAddr>().map_err(|_| {
                        format!(
                            "plugin_opt_metrics_listen: expected an address like 127.0.0.1:9883, got {}",
                            policy_core::quote(v)
                        )
                    })
                })
                .transpose()?,
            sys_interval: get("sys_interval")
                .map(|v| parse_secs("sys_interval", v, 86_400))
                .transpose()?
                .unwrap_or(Duration::from_secs(10)),
            decision_cache_size: match get("decision_cache_size") {
                None => 256,
                Some(v) => v.trim().parse::<usize>().ok().filter(|n| *n <= 1 << 20).ok_or_else(|| {
                    format!(
                        "plugin_opt_decision_cache_size: expected a number of decisions from 0 to 1048576, got {}",
                        policy_core::quote(v)
                    )
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
                        return Err(format!(
                            "plugin_opt_log_level: expected error, warn, info or debug, got {}",
                            policy_core::quote(&v)
                        ));
                    }
                },
            },
            username_claims: match get("username_claims") {
                Some(v) => identity::parse_username_claims(v)
                    .map_err(|e| format!("plugin_opt_username_claims: {e}"))?,
                None => identity::DEFAULT_USERNAME_CLAIMS.iter().map(|c| c.to_string()).collect(),
            },
            authorized_parties: match get("authorized_parties") {
                Some(v) => identity::parse_names(v).map_err(|e| format!("plugin_opt_authorized_parties: {e}"))?,
                None => Vec::new(),
            },
            disconnect_on_expiry: get("disconnect_on_expiry")
                .map(|v| parse_bool("disconnect_on_expiry", v))
                .transpose()?
                .unwrap_or(true),
            will_on_expiry: get("will_on_expiry").map(|v| parse_bool("will_on_expiry", v)).transpose()?.unwrap_or(false),
            policy_url: url("policy_url")?,
            policy_poll: get("policy_poll")
                .map(|v| period("policy_poll", v))
                .transpose()?
                .unwrap_or(Duration::from_secs(10)),
            bundle_token_file: path("bundle_token_file")?,
            bundle_public_keys: pairs
                .iter()
                .filter(|(k, _)| k == "bundle_public_key")
                .map(|(_, v)| non_empty("bundle_public_key", v).map(PathBuf::from))
                .collect::<Result<_, _>>()?,
            insecure_unsigned_bundles: flag("insecure_unsigned_bundles")?,
            private_network_http: flag("private_network_http")?,
            certificate_subject_type: text("certificate_subject_type")?
                .map(|t| match policy_engine::SubjectType::parse(&t) {
                    Some(policy_engine::SubjectType::Device) => Ok(policy_engine::SubjectType::Device),
                    _ => Err(format!(
                        "plugin_opt_certificate_subject_type: expected device (users and services come only \
                         from tokens, so a certificate can never be decided as one), got {}",
                        policy_core::quote(&t)
                    )),
                })
                .transpose()?,
            certificate_name: match text("certificate_name")?.as_deref() {
                None | Some("common_name") => CertificateName::CommonName,
                Some("subject") => CertificateName::Subject,
                Some(other) => {
                    return Err(format!(
                        "plugin_opt_certificate_name: expected common_name (use_identity_as_username) or \
                         subject (use_subject_as_username), got {}",
                        policy_core::quote(other)
                    ));
                }
            },
        };
        options.refuse_conflicts()?;
        if options.issuer.is_none()
            && options.jwks_url.is_none()
            && options.jwks_file.is_none()
            && options.dev_state_dir.is_none()
        {
            return Err(
                "no way to verify tokens: give plugin_opt_issuer (OIDC discovery), plugin_opt_jwks_url, \
                        plugin_opt_jwks_file, or plugin_opt_dev_state_dir (development)"
                    .into(),
            );
        }
        Ok(options)
    }

    /// Options that contradict each other, or would silently weaken a check, stop the start
    /// with both named.
    fn refuse_conflicts(&self) -> Result<(), String> {
        let both = |a: &str, b: &str, why: &str| Err(format!("plugin_opt_{a} and plugin_opt_{b}: {why}"));
        if self.jwks_file.is_some() && self.jwks_url.is_some() {
            return both(
                "jwks_file",
                "jwks_url",
                "give one key source, not two (which would win is not obvious)",
            );
        }
        if self.dev_state_dir.is_some() && self.issuer.is_some() {
            return both(
                "dev_state_dir",
                "issuer",
                "the dev key trusts tokens it signs itself and its own issuer; do not mix it with a real \
                 identity provider",
            );
        }
        match (&self.policy_url, self.bundle_public_keys.is_empty(), self.insecure_unsigned_bundles) {
            (Some(_), true, false) => {
                return Err("plugin_opt_policy_url needs plugin_opt_bundle_public_key (the operator's Ed25519 \
                            public key, PEM): without it, anyone who can answer for the URL would decide this \
                            broker's policy. To take unsigned bundles anyway, set \
                            plugin_opt_insecure_unsigned_bundles true"
                    .into());
            }
            (_, false, true) => {
                return both(
                    "bundle_public_key",
                    "insecure_unsigned_bundles",
                    "a public key requires signed bundles; the other takes unsigned ones",
                );
            }
            (None, false, _) => {
                return both(
                    "bundle_public_key",
                    "policy_url",
                    "a public key without a URL verifies nothing",
                );
            }
            (None, true, true) => {
                return both("insecure_unsigned_bundles", "policy_url", "nothing is pulled without a URL");
            }
            _ => {}
        }
        for (name, url) in [("jwks_url", &self.jwks_url), ("issuer", &self.issuer)] {
            if let Some(u) = url
                && (name == "jwks_url" || (self.jwks_url.is_none() && self.jwks_file.is_none()))
            {
                let plain = if self.private_network_http || self.dev_state_dir.is_some() {
                    identity::PlainHttp::Allowed
                } else {
                    identity::PlainHttp::LoopbackOnly
                };
                identity::check_transport(u, plain, &format!("plugin_opt_{name}"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> Result<Options, String> {
        let pairs: Vec<(String, String)> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Options::parse(&pairs)
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
        assert_eq!(o.policy, PathBuf::from("/etc/p.json"));
        assert_eq!(o.leeway, Duration::from_secs(30));
        assert!(o.watch);
        assert_eq!(o.module, None);
        assert_eq!(o.cache_dir, None);
        assert_eq!(o.metrics_listen, None);
        assert_eq!(o.log_level, LogLevel::Info);
        assert!(o.disconnect_on_expiry, "an expired token's connection is ended");
        assert!(!o.will_on_expiry, "without its will");
        assert_eq!((o.policy_url, o.policy_poll), (None, Duration::from_secs(10)));
    }

    #[test]
    fn every_mistake_names_its_option() {
        let e = with(("polcy", "x")).unwrap_err();
        assert!(e.contains("unknown option plugin_opt_polcy; did you mean plugin_opt_policy?"), "{e}");
        assert!(with(("policy", "/other")).unwrap_err().contains("plugin_opt_policy is given twice"));
        assert!(with(("leeway", "ten")).unwrap_err().starts_with("plugin_opt_leeway:"));
        assert!(with(("leeway", "-1")).unwrap_err().starts_with("plugin_opt_leeway:"));
        assert!(with(("watch", "maybe")).unwrap_err().starts_with("plugin_opt_watch:"));
        assert!(with(("metrics_listen", "9100")).unwrap_err().starts_with("plugin_opt_metrics_listen:"));
        assert!(with(("issuer", "keycloak/realms/x")).unwrap_err().starts_with("plugin_opt_issuer:"));
        assert!(
            with(("decision_cache_size", "lots")).unwrap_err().starts_with("plugin_opt_decision_cache_size:")
        );
        assert!(with(("log_level", "loud")).unwrap_err().starts_with("plugin_opt_log_level:"));
        assert!(
            with(("disconnect_on_expiry", "2")).unwrap_err().starts_with("plugin_opt_disconnect_on_expiry:")
        );
        assert!(with(("will_on_expiry", "")).unwrap_err().starts_with("plugin_opt_will_on_expiry:"));
        assert!(with(("policy_url", "ftp://x/b.json")).unwrap_err().starts_with("plugin_opt_policy_url:"));
        assert!(
            with(("policy_poll", "0")).unwrap_err().contains("plugin_opt_policy_poll: at least 1 second")
        );
        assert_eq!(with(("policy_poll", "3")).unwrap().policy_poll, Duration::from_secs(3));
        assert!(with(("module", " ")).unwrap_err().contains("plugin_opt_module: the value is empty"));
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
            &[("policy", "/p"), ("dev_state_dir", "/d"), ("issuer", "https://idp/realms/x")],
            "dev_state_dir",
            "issuer",
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
        assert_eq!(o.bundle_public_keys.len(), 2, "a rotation names two keys");
        assert!(
            opts(&[BASE[0], BASE[1], ("policy_url", "https://s/b"), ("insecure_unsigned_bundles", "yes")])
                .is_ok()
        );
        for (name, empty) in
            [("username_claims", ""), ("username_claims", ","), ("authorized_parties", " , ")]
        {
            let e = with((name, empty)).unwrap_err();
            assert!(e.starts_with(&format!("plugin_opt_{name}:")) && e.contains("names nothing"), "{e}");
        }
        let e = opts(&[("policy", "/p"), ("issuer", "http://keycloak.internal/realms/celine")]).unwrap_err();
        assert!(e.contains("plain http://"), "{e}");
        assert!(
            opts(&[("policy", "/p"), ("issuer", "http://127.0.0.1:8080/realms/celine")]).is_ok(),
            "loopback"
        );
        assert!(
            opts(&[
                ("policy", "/p"),
                ("issuer", "http://keycloak:8080/realms/celine"),
                ("private_network_http", "true")
            ])
            .is_ok()
        );
        assert!(with(("certificate_subject_type", "devices")).unwrap_err().contains("expected device"));
        assert!(with(("certificate_subject_type", "user")).unwrap_err().contains("only from tokens"));
        assert!(with(("certificate_name", "cn")).unwrap_err().starts_with("plugin_opt_certificate_name:"));
        assert_eq!(with(("certificate_name", "subject")).unwrap().certificate_name, CertificateName::Subject);
        assert_eq!(
            with(("certificate_subject_type", "device")).unwrap().certificate_subject_type,
            Some(policy_engine::SubjectType::Device)
        );
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
        assert_eq!(o.issuer.as_deref(), Some("https://kc/realms/celine"));
        assert_eq!(o.audience.as_deref(), Some("mqtt"));
        assert_eq!(o.leeway, Duration::from_secs(5));
        assert!(!o.watch);
        assert_eq!(o.metrics_listen, Some("127.0.0.1:9883".parse().unwrap()));
        assert_eq!(o.sys_interval, Duration::ZERO);
        assert_eq!(o.decision_cache_size, 0);
        assert_eq!(o.log_level, LogLevel::Debug);
        assert_eq!(opts(&BASE).unwrap().username_claims, ["preferred_username"]);
        assert_eq!(
            with(("username_claims", "preferred_username, email")).unwrap().username_claims,
            ["preferred_username", "email"]
        );
        assert!(with(("username_claims", "none")).unwrap().username_claims.is_empty());
        assert_eq!(
            with(("authorized_parties", "svc-a, dashboard")).unwrap().authorized_parties,
            ["svc-a", "dashboard"]
        );
        assert!(opts(&BASE).unwrap().authorized_parties.is_empty());
    }
}
