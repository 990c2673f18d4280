//! `mqtt-policy token --dev`: mint a Keycloak-shaped token signed by the dev key.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;

use identity::devkey::{self, DEV_ISSUER, DevKey, TokenSpec};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Required: these tokens are for development only
    #[arg(long)]
    pub dev: bool,
    /// A user token for this subject (`sub`)
    #[arg(long, value_name = "USER")]
    pub sub: Option<String>,
    /// A service token (client credentials) for this client
    #[arg(long, value_name = "CLIENT")]
    pub client_id: Option<String>,
    /// Groups (comma-separated; users only), e.g. viewers,editors
    #[arg(long, value_delimiter = ',')]
    pub groups: Vec<String>,
    /// Scopes (comma-separated), e.g. mqtt.read,mqtt.write
    #[arg(long, value_delimiter = ',')]
    pub scopes: Vec<String>,
    /// Lifetime: 90s, 15m, 1h, 2d, or seconds
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: u64,
    /// The `iss` claim (must match the server's --issuer)
    #[arg(long, env = "MQTT_POLICY_ISSUER", default_value = DEV_ISSUER)]
    pub issuer: String,
    /// The `aud` claim
    #[arg(long, env = "MQTT_POLICY_AUDIENCE")]
    pub audience: Option<String>,
    /// Where the dev key lives (the same as `serve --state-dir`)
    #[arg(long, env = "MQTT_POLICY_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

fn parse_ttl(s: &str) -> Result<u64, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("'{s}' is not a duration (e.g. 90s, 15m, 1h, 2d)"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit in '{s}': use s, m, h or d")),
    };
    match n.checked_mul(mult) {
        Some(0) | None => Err(format!("'{s}' is not a usable lifetime")),
        Some(v) => Ok(v),
    }
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    if !a.dev {
        bail!("only development tokens can be minted here: pass --dev (real tokens come from Keycloak)");
    }
    let dir = a.state_dir.unwrap_or_else(devkey::default_state_dir);
    let key = DevKey::load_or_create(&dir)?;
    let spec = TokenSpec {
        sub: a.sub,
        client_id: a.client_id,
        groups: a.groups,
        scopes: a.scopes,
        issuer: a.issuer,
        audience: a.audience,
        ttl_secs: a.ttl,
    };
    let claims = devkey::claims(&spec, identity::now())?;
    outln!("{}", key.sign(&claims)?);
    Ok(ExitCode::SUCCESS)
}
