//! The configuration both front ends share, defined once per concern: how tokens are verified
//! ([`KeysConfig`]) and where the policy comes from and how it changes ([`PolicyConfig`]).
//!
//! Each is a `clap` argument group: `serve` flattens them into its flags (`--jwks-url`, each
//! also `MQTT_POLICY_<NAME>`), and the broker plugin reads its `plugin_opt_<name>` lines into
//! the same structs through [`from_options`] (`plugin_opt_jwks_url`): one spelling, one help
//! text, one default, one parser. [`DEPRECATED`] keeps old spellings working for a release,
//! with a warning. Every check that can be made before anything starts is made by
//! `validate`, so a bad value is reported before a key is fetched or a listener bound, and
//! options that contradict each other are refused with both named.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use identity::devkey::{DEV_ISSUER, DevKey};
use identity::{KeySource, PlainHttp, VerifierConfig};
use policy_engine::bundle::TrustedKeys;
use policy_engine::pull::Trust;

/// A configuration mistake: which setting, and what to do. (`serve` exits 2 on one; the
/// plugin stops the broker's start with it.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// How a setting is named where it is read: a `serve` flag or a `plugin_opt_` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spelling {
    Flag,
    PluginOption,
}

impl Spelling {
    /// `name` (as written in a struct, `jwks_url`) as the user wrote it.
    pub fn name(self, name: &str) -> String {
        match self {
            Spelling::Flag => format!("--{}", name.replace('_', "-")),
            Spelling::PluginOption => format!("plugin_opt_{name}"),
        }
    }
}

/// Old spellings still read for one release, with a warning: (old, new), as settings are
/// named in a `plugin_opt_` line (`serve`'s flags: the same with dashes).
pub const DEPRECATED: &[(&str, &str)] = &[("authorized_party", "authorized_parties")];

/// `serve`'s command line with the old spellings of its flags ([`DEPRECATED`], with dashes)
/// replaced by the new ones, and a warning for each one replaced. Only the flags of the
/// `serve` subcommand, before a `--`, are rewritten; every other argument is left as it is.
pub fn rewrite_deprecated_flags(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> (Vec<std::ffi::OsString>, Vec<String>) {
    let mut warnings = Vec::new();
    let mut subcommand: Option<bool> = None;
    let mut ended = false;
    let args = args
        .into_iter()
        .enumerate()
        .map(|(i, arg)| {
            let Some(text) = arg.to_str() else { return arg };
            if i == 0 {
                return arg;
            }
            // The first word that is no flag names the subcommand.
            let Some(serve) = subcommand else {
                if !text.starts_with('-') {
                    subcommand = Some(text == "serve");
                }
                return arg;
            };
            ended |= text == "--";
            if !serve || ended {
                return arg;
            }
            for (old, new) in DEPRECATED {
                let (old, new) = (Spelling::Flag.name(old), Spelling::Flag.name(new));
                let value =
                    text.strip_prefix(old.as_str()).filter(|rest| rest.is_empty() || rest.starts_with('='));
                if let Some(value) = value {
                    warnings.push(format!("{old} is now {new} (the old name goes in the next release)"));
                    return format!("{new}{value}").into();
                }
            }
            arg
        })
        .collect();
    (args, warnings)
}

/// How tokens are verified: the key source, what a token must say, which MQTT usernames stand
/// for its subject, and how clients known by their certificate are decided.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct KeysConfig {
    /// Token issuer: the expected `iss`, and (without a key set) where keys are discovered
    /// (<issuer>/.well-known/openid-configuration)
    #[arg(long, env = "MQTT_POLICY_ISSUER", value_name = "URL")]
    pub issuer: Option<String>,
    /// Expected `aud` (not checked when absent)
    #[arg(long, env = "MQTT_POLICY_AUDIENCE")]
    pub audience: Option<String>,
    /// Accept only tokens issued to these clients (their `azp`; comma-separated or repeated)
    #[arg(long, env = "MQTT_POLICY_AUTHORIZED_PARTIES", value_delimiter = ',', value_name = "CLIENT")]
    pub authorized_parties: Vec<String>,
    /// Key set URL (JWKS); plain http:// only to loopback
    #[arg(long, env = "MQTT_POLICY_JWKS_URL", value_name = "URL", conflicts_with = "jwks_file")]
    pub jwks_url: Option<String>,
    /// Key set file (JWKS), re-read every --jwks-refresh seconds
    #[arg(long, env = "MQTT_POLICY_JWKS_FILE", value_name = "FILE")]
    pub jwks_file: Option<PathBuf>,
    /// Clock skew allowed on exp and nbf, in seconds
    #[arg(long, env = "MQTT_POLICY_LEEWAY", default_value_t = 30, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub leeway: u64,
    /// An unknown key id refreshes the key set at most this often, in seconds
    #[arg(long, env = "MQTT_POLICY_JWKS_MIN_REFRESH", default_value_t = 10, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub jwks_min_refresh: u64,
    /// Re-read the key set this often, in seconds: a key the identity provider withdrew stops
    /// being trusted within this time plus one fetch (at most 10 s)
    #[arg(long, env = "MQTT_POLICY_JWKS_REFRESH", default_value_t = 300, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub jwks_refresh: u64,
    /// Private networks only: fetch key sets and OIDC discovery over plain http:// from hosts
    /// other than loopback (logged at start; dev mode allows it anyway)
    #[arg(long, env = "MQTT_POLICY_PRIVATE_NETWORK_HTTP")]
    pub private_network_http: bool,
    /// Trust the certificate authorities in this PEM file for https:// key sets and OIDC
    /// discovery, besides the public web PKI's roots (an identity provider behind a private CA)
    #[arg(long, env = "MQTT_POLICY_JWKS_CA_FILE", value_name = "FILE")]
    pub jwks_ca_file: Option<PathBuf>,
    /// Claims whose value (besides the subject id) may be a client's MQTT username, as
    /// `${username}` and for go-auth's http-backend sessions (comma-separated; `none`: the
    /// subject id only)
    #[arg(
        long,
        env = "MQTT_POLICY_USERNAME_CLAIMS",
        default_value = "preferred_username",
        value_name = "CLAIMS"
    )]
    pub username_claims: String,
    /// Decide clients known by their TLS certificate as subjects of this type (only device:
    /// users and services come from tokens), from the policy's certificates section
    #[arg(long, env = "MQTT_POLICY_CERTIFICATE_SUBJECT_TYPE", value_name = "TYPE", value_parser = ["device"])]
    pub certificate_subject_type: Option<String>,
}

impl KeysConfig {
    /// Checks what can be checked before anything starts. `dev`: the dev key is trusted too;
    /// `hmac_secret`: so is a shared secret (the service's development option).
    pub fn validate(&self, dev: bool, hmac_secret: bool, s: Spelling) -> Result<(), ConfigError> {
        let n = |name: &str| s.name(name);
        if self.issuer.is_none()
            && self.jwks_url.is_none()
            && self.jwks_file.is_none()
            && !dev
            && !hmac_secret
        {
            return Err(ConfigError(format!(
                "no way to verify tokens: give {} (OIDC discovery), {}, {}, or {} (development only)",
                n("issuer"),
                n("jwks_url"),
                n("jwks_file"),
                n("dev")
            )));
        }
        if dev && self.issuer.is_some() {
            return Err(ConfigError(format!(
                "{} and {}: the dev key trusts tokens it signs itself and its own issuer; do not mix it \
                 with a real identity provider",
                n("issuer"),
                n("dev")
            )));
        }
        if self.jwks_file.is_some() && self.jwks_url.is_some() {
            return Err(ConfigError(format!(
                "{} and {}: give one key source, not two (which would win is not obvious)",
                n("jwks_file"),
                n("jwks_url")
            )));
        }
        if !self.authorized_parties.is_empty() {
            identity::parse_names(&self.authorized_parties.join(","))
                .map_err(|e| ConfigError(format!("{}: {e}", n("authorized_parties"))))?;
        }
        identity::parse_username_claims(&self.username_claims)
            .map_err(|e| ConfigError(format!("{}: {e}", n("username_claims"))))?;
        http_url(self.issuer.as_deref(), &n("issuer"))?;
        http_url(self.jwks_url.as_deref(), &n("jwks_url"))?;
        let plain = self.plain_http(dev);
        if let Some(u) = &self.jwks_url {
            identity::check_transport(u, plain, &n("jwks_url")).map_err(|e| ConfigError(e.0))?;
        }
        if let (Some(iss), None, None) = (&self.issuer, &self.jwks_url, &self.jwks_file) {
            identity::check_transport(iss, plain, &n("issuer")).map_err(|e| ConfigError(e.0))?;
        }
        Ok(())
    }

    fn plain_http(&self, dev: bool) -> PlainHttp {
        if dev || self.private_network_http { PlainHttp::Allowed } else { PlainHttp::LoopbackOnly }
    }

    /// The claims named by `username_claims` (validated).
    pub fn username_claims(&self) -> Vec<String> {
        identity::parse_username_claims(&self.username_claims).unwrap_or_default()
    }

    /// The verifier's configuration: the key source (a file, else a URL, else discovery on
    /// the issuer), the dev key's when given, and the checks a token must pass.
    pub fn verifier_config(&self, dev_key: Option<&DevKey>) -> anyhow::Result<VerifierConfig> {
        let source = match (&self.jwks_file, &self.jwks_url, &self.issuer) {
            (Some(f), _, _) => KeySource::File(f.clone()),
            (None, Some(u), _) => KeySource::Url(u.clone()),
            (None, None, Some(iss)) => KeySource::Discovery(iss.clone()),
            (None, None, None) => KeySource::None,
        };
        let trusted_ca_pem = match &self.jwks_ca_file {
            Some(file) => {
                let pem = std::fs::read(file).with_context(|| format!("jwks_ca_file {}", file.display()))?;
                identity::jwks::trusted_certificates(&pem)
                    .with_context(|| format!("jwks_ca_file {}", file.display()))?;
                Some(pem)
            }
            None => None,
        };
        Ok(VerifierConfig {
            source,
            issuer: self.issuer.clone().or_else(|| dev_key.map(|_| DEV_ISSUER.to_string())),
            audience: self.audience.clone(),
            leeway: Duration::from_secs(self.leeway),
            extra_keys: dev_key.map(|k| k.jwk()).transpose()?.into_iter().collect(),
            hmac_secret: None,
            min_refresh: Duration::from_secs(self.jwks_min_refresh),
            authorized_parties: identity::parse_names(&self.authorized_parties.join(",")).unwrap_or_default(),
            refresh_every: Duration::from_secs(self.jwks_refresh),
            plain_http: self.plain_http(dev_key.is_some()),
            trusted_ca_pem,
        })
    }

    /// The start-up warnings this configuration deserves (each logged once).
    pub fn warnings(&self, config: &VerifierConfig, dev: bool, s: Spelling) -> Vec<String> {
        let mut out = Vec::new();
        if let (false, Some(why)) = (dev, config.unrestricted()) {
            out.push(format!("{why}: {} or {}", s.name("audience"), s.name("authorized_parties")));
        }
        if let (Some(_), Some(_)) = (&self.jwks_ca_file, &self.jwks_file) {
            out.push(format!(
                "{} is not used: the keys come from a file ({})",
                s.name("jwks_ca_file"),
                s.name("jwks_file")
            ));
        }
        if self.private_network_http {
            out.push(format!(
                "{}: key sets and OIDC discovery are fetched over plain http:// from any host; anyone on that \
                 network path can replace the signing keys",
                s.name("private_network_http")
            ));
        }
        out
    }

    /// The subject type of clients known by their certificate, when they are decided.
    pub fn certificate_subject_type(&self) -> Option<policy_engine::SubjectType> {
        self.certificate_subject_type.as_deref().and_then(policy_engine::SubjectType::parse)
    }
}

/// Where the policy comes from and how a new one is taken: the document, the module, the test
/// cases every candidate must pass, and pulled bundles.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PolicyConfig {
    /// Policy document [serve: policies/celine.json, else the built-in copy; the plugin needs one]
    #[arg(long, env = "MQTT_POLICY_POLICY", value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Policy module (a WebAssembly component) [default: the built-in one]
    #[arg(long, env = "MQTT_POLICY_MODULE", value_name = "FILE")]
    pub module: Option<PathBuf>,
    /// Policy test cases every new policy or module must pass before it goes live (a file or
    /// a directory of *.json) [serve: policies/tests with the default policy]
    #[arg(long, env = "MQTT_POLICY_TESTS", value_name = "PATH")]
    pub tests: Option<PathBuf>,
    /// Pull the policy, the module and their test cases as a bundle from this URL (another
    /// service's GET /bundle, or a file written by `mqtt-policy bundle` on any web server)
    #[arg(long, env = "MQTT_POLICY_POLICY_URL", value_name = "URL")]
    pub policy_url: Option<String>,
    /// How often to pull --policy-url, in seconds (a conditional request: cheap when unchanged)
    #[arg(long, env = "MQTT_POLICY_POLICY_POLL", default_value_t = 10, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub policy_poll: u64,
    /// Take a pulled bundle only when this Ed25519 public key (PEM, as `openssl pkey -pubout`
    /// writes it) signed it; repeat for a rotation (any of them will do)
    #[arg(
        long = "bundle-public-key",
        env = "MQTT_POLICY_BUNDLE_PUBLIC_KEYS",
        value_delimiter = ',',
        value_name = "FILE",
        conflicts_with = "insecure_unsigned_bundles"
    )]
    pub bundle_public_keys: Vec<PathBuf>,
    /// Take pulled bundles unsigned: whoever can answer for --policy-url then decides the
    /// policy (logged at start)
    #[arg(long, env = "MQTT_POLICY_INSECURE_UNSIGNED_BUNDLES")]
    pub insecure_unsigned_bundles: bool,
}

impl PolicyConfig {
    /// Checks what can be checked before anything starts.
    pub fn validate(&self, s: Spelling) -> Result<(), ConfigError> {
        let n = |name: &str| s.name(name);
        let keys = !self.bundle_public_keys.is_empty();
        match (&self.policy_url, keys, self.insecure_unsigned_bundles) {
            (None, true, _) => Err(ConfigError(format!(
                "{} without {}: there is nothing to verify",
                n("bundle_public_key"),
                n("policy_url")
            ))),
            (None, false, true) => Err(ConfigError(format!(
                "{} without {}: nothing is pulled",
                n("insecure_unsigned_bundles"),
                n("policy_url")
            ))),
            (Some(_), false, false) => Err(ConfigError(format!(
                "{} needs {} (the operator's Ed25519 public key, PEM): without it, anyone who can answer for \
                 the URL would decide the policy. To take unsigned bundles anyway, give {}",
                n("policy_url"),
                n("bundle_public_key"),
                n("insecure_unsigned_bundles")
            ))),
            (Some(_), true, true) => Err(ConfigError(format!(
                "{} and {}: a public key requires signed bundles; the other takes unsigned ones",
                n("bundle_public_key"),
                n("insecure_unsigned_bundles")
            ))),
            _ => Ok(()),
        }?;
        http_url(self.policy_url.as_deref(), &n("policy_url"))
    }

    /// Which pulled bundles are taken, when a URL is pulled (the public keys read now).
    pub fn trust(&self, s: Spelling) -> Result<Option<Trust>, ConfigError> {
        match (&self.policy_url, self.insecure_unsigned_bundles) {
            (None, _) => Ok(None),
            (Some(_), true) => Ok(Some(Trust::InsecureUnsigned)),
            (Some(_), false) => TrustedKeys::read(&self.bundle_public_keys)
                .map(|k| Some(Trust::Signed(k)))
                .map_err(|e| ConfigError(format!("{}: {e}", s.name("bundle_public_key")))),
        }
    }

    /// The warnings this configuration deserves at start.
    pub fn warnings(&self, s: Spelling) -> Vec<String> {
        match (&self.policy_url, self.insecure_unsigned_bundles) {
            (Some(_), true) => vec![format!(
                "{}: pulled bundles are taken unsigned; whoever can answer for {} decides the policy",
                s.name("insecure_unsigned_bundles"),
                s.name("policy_url")
            )],
            _ => vec![],
        }
    }
}

/// Reads `plugin_opt_<name> <value>` pairs into a shared configuration `T`, with `T`'s own
/// parser (its clap definitions, environment variables left out): `pairs` holds only names
/// that are `T`'s. A switch takes `true`/`false` (also yes/no, on/off); a repeatable setting
/// may be given more than once. Messages name the plugin option.
pub fn from_options<T: clap::Args + clap::FromArgMatches>(
    pairs: &[(String, String)],
) -> Result<T, ConfigError> {
    let cmd = T::augment_args(clap::Command::new("plugin").no_binary_name(true))
        .mut_args(|a| {
            // A key file per line, as the option is repeated: a path is never split on commas.
            let a = a.env(None::<&str>);
            if a.get_long() == Some("bundle-public-key") { a.value_delimiter(None) } else { a }
        })
        .disable_help_flag(true);
    let mut argv: Vec<String> = Vec::new();
    for (name, value) in pairs {
        let flag = Spelling::Flag.name(name);
        let arg = cmd.get_arguments().find(|a| a.get_long() == Some(&flag[2..]));
        let Some(arg) = arg else {
            return Err(ConfigError(format!("{} is not a setting here", Spelling::PluginOption.name(name))));
        };
        if arg.get_action().takes_values() {
            if value.trim().is_empty() {
                return Err(ConfigError(format!(
                    "{}: the value is empty",
                    Spelling::PluginOption.name(name)
                )));
            }
            // One argument: a value may start with '-'.
            argv.push(format!("{flag}={}", value.trim()));
        } else if parse_switch(value)
            .map_err(|e| ConfigError(format!("{}: {e}", Spelling::PluginOption.name(name))))?
        {
            argv.push(flag);
        }
    }
    let matches = cmd.try_get_matches_from(argv).map_err(|e| ConfigError(plugin_words(&e.to_string())))?;
    T::from_arg_matches(&matches).map_err(|e| ConfigError(plugin_words(&e.to_string())))
}

/// A setting that must be an http:// or https:// URL with a host, when given.
fn http_url(value: Option<&str>, name: &str) -> Result<(), ConfigError> {
    let Some(u) = value else { return Ok(()) };
    let host = u.strip_prefix("https://").or_else(|| u.strip_prefix("http://"));
    match host {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') => Ok(()),
        _ => Err(ConfigError(format!(
            "{name}: expected an http:// or https:// URL, got {}",
            policy_core::quote(u)
        ))),
    }
}

/// `true`/`false`, `yes`/`no`, `on`/`off`. The error does not name the setting: the caller
/// knows which it read.
pub fn parse_switch(v: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" => Ok(true),
        "false" | "no" | "off" => Ok(false),
        _ => Err(ConfigError(format!("expected true or false, got {}", policy_core::quote(v)))),
    }
}

/// A clap message about flags, as a message about plugin options: `--jwks-url` is
/// `plugin_opt_jwks_url`; clap's own advice (`--help`, usage lines) is dropped.
fn plugin_words(message: &str) -> String {
    let kept: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .collect();
    let joined = kept.join(" ");
    let first = joined.trim_start_matches("error: ");
    let mut out = String::with_capacity(first.len());
    let mut rest = first;
    while let Some(at) = rest.find("--") {
        out.push_str(&rest[..at]);
        let name: String =
            rest[at + 2..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
        out.push_str(&Spelling::PluginOption.name(&name.replace('-', "_")));
        rest = &rest[at + 2 + name.len()..];
        // clap writes "--name <VALUE>": the placeholder means nothing in a plugin option.
        if let Some(after) = rest.strip_prefix(' ').filter(|r| r.starts_with('<'))
            && let Some(end) = after.find('>')
        {
            rest = &after[end + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// The names of the settings of `T`, as plugin options name them (without `plugin_opt_`).
pub fn option_names<T: clap::Args>() -> Vec<String> {
    T::augment_args(clap::Command::new("names"))
        .get_arguments()
        .filter_map(|a| a.get_long())
        .map(|l| l.replace('-', "_"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn plugin_options_read_into_the_same_settings_as_flags() {
        let k: KeysConfig = from_options(&pairs(&[
            ("jwks_url", "https://idp/jwks"),
            ("authorized_parties", "svc-a, dash"),
            ("private_network_http", "yes"),
        ]))
        .unwrap();
        assert_eq!(k.jwks_url.as_deref(), Some("https://idp/jwks"));
        assert_eq!(k.authorized_parties, ["svc-a", " dash"]);
        assert!(k.private_network_http);
        assert_eq!((k.leeway, k.jwks_refresh, k.username_claims.as_str()), (30, 300, "preferred_username"));
        let p: PolicyConfig = from_options(&pairs(&[
            ("policy_url", "https://s/b"),
            ("bundle_public_key", "/a.pem"),
            ("bundle_public_key", "/b.pem"),
        ]))
        .unwrap();
        assert_eq!(p.bundle_public_keys.len(), 2, "repeatable");
        assert_eq!(p.policy_poll, 10);
    }

    #[test]
    fn plugin_option_mistakes_name_the_plugin_option() {
        let e = from_options::<KeysConfig>(&pairs(&[("leeway", "ten")])).unwrap_err().0;
        assert!(e.contains("plugin_opt_leeway") && !e.contains("--"), "{e}");
        let e = from_options::<KeysConfig>(&pairs(&[("leeway", "4000")])).unwrap_err().0;
        assert!(e.contains("plugin_opt_leeway"), "{e}");
        let e = from_options::<KeysConfig>(&pairs(&[("jwks_url", "https://a"), ("jwks_file", "/k")]))
            .unwrap_err()
            .0;
        assert!(e.contains("plugin_opt_jwks_url") && e.contains("plugin_opt_jwks_file"), "{e}");
        let e = from_options::<KeysConfig>(&pairs(&[("private_network_http", "maybe")])).unwrap_err().0;
        assert!(e.starts_with("plugin_opt_private_network_http: expected true or false"), "{e}");
        let e = from_options::<KeysConfig>(&pairs(&[("certificate_subject_type", "user")])).unwrap_err().0;
        assert!(e.contains("plugin_opt_certificate_subject_type") && e.contains("device"), "{e}");
    }

    #[test]
    fn old_flag_spellings_are_rewritten_with_a_warning() {
        let rewrite = |args: &[&str]| {
            let (args, warnings) = rewrite_deprecated_flags(args.iter().map(std::ffi::OsString::from));
            (args.into_iter().map(|a| a.into_string().unwrap()).collect::<Vec<_>>(), warnings)
        };
        let (args, warnings) = rewrite(&[
            "mqtt-policy",
            "serve",
            "--authorized-party",
            "a",
            "--authorized-party=b",
            "--authorized-partyx",
            "--",
            "--authorized-party",
        ]);
        assert_eq!(
            args,
            [
                "mqtt-policy",
                "serve",
                "--authorized-parties",
                "a",
                "--authorized-parties=b",
                "--authorized-partyx",
                "--",
                "--authorized-party"
            ]
        );
        assert_eq!(warnings.len(), 2);
        assert!(warnings[0].contains("--authorized-party is now --authorized-parties"), "{warnings:?}");
        let other = ["mqtt-policy", "check", "--authorized-party", "x"];
        assert_eq!(rewrite(&other), (other.map(String::from).to_vec(), vec![]), "only serve's flags");
    }

    #[test]
    fn validation_names_the_setting_in_the_front_ends_spelling() {
        let base = || KeysConfig { username_claims: "preferred_username".into(), ..KeysConfig::default() };
        let k = KeysConfig { jwks_url: Some("http://keys.example.net/jwks".into()), ..base() };
        let e = k.validate(false, false, Spelling::PluginOption).unwrap_err().0;
        assert!(e.starts_with("plugin_opt_jwks_url http://keys.example.net/jwks is plain http://"), "{e}");
        let k = KeysConfig { issuer: Some("https://idp".into()), ..base() };
        let e = k.validate(true, false, Spelling::Flag).unwrap_err().0;
        assert!(e.starts_with("--issuer and --dev:"), "{e}");
        let k =
            KeysConfig { jwks_file: Some("/k".into()), username_claims: "".into(), ..KeysConfig::default() };
        assert!(k.validate(false, false, Spelling::Flag).unwrap_err().0.starts_with("--username-claims:"));
        let p = PolicyConfig { policy_url: Some("https://s/b".into()), ..PolicyConfig::default() };
        let e = p.validate(Spelling::Flag).unwrap_err().0;
        assert!(e.starts_with("--policy-url needs --bundle-public-key"), "{e}");
    }
}
