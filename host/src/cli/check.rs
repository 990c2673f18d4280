//! `mqtt-policy check`: one decision, made by the policy module (`--module`), explained rule by
//! rule as the document reads.

use std::process::ExitCode;

use anyhow::{Context, bail};
use policy_core::{Ask, EvalRequest, Policy};

use super::{ModuleArg, PolicyArg, SubjectArg, decide, decision_json};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub policy: PolicyArg,
    #[command(flatten)]
    pub module: ModuleArg,
    #[command(flatten)]
    pub who: SubjectArg,
    /// Topic name (publish, read) or filter (subscribe); not used for superuser
    #[arg(long, value_name = "TOPIC")]
    pub topic: Option<String>,
    /// subscribe, read, publish, or superuser
    #[arg(long, value_parser = ["subscribe", "read", "publish", "superuser"])]
    pub action: String,
    /// The MQTT client id (for ${clientid} placeholders)
    #[arg(long, default_value = "")]
    pub clientid: String,
    /// The MQTT username (for ${username} placeholders)
    #[arg(long, default_value = "")]
    pub username: String,
    /// The message's QoS (publish, read) or the requested QoS (subscribe), for rules with a
    /// `qos` condition; unknown when not given
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: Option<u8>,
    /// Whether the message is retained (publish, read), for rules with a `retain` condition;
    /// unknown when not given
    #[arg(long)]
    pub retain: Option<bool>,
    /// Print the decision and explanation as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let ask = Ask::parse(&a.action).context("unknown action")?;
    let subject = a.who.subject()?;
    let topic = match (a.topic, ask) {
        (Some(t), _) => t,
        (None, Ask::Superuser) => String::new(),
        (None, _) => bail!("--topic is required for --action {}", ask.as_str()),
    };
    let ev = a.module.evaluator(a.policy.policy.as_deref())?;
    let policy = &ev.policy;
    if ask == Ask::Superuser && (a.qos.is_some() || a.retain.is_some()) {
        bail!("--qos and --retain describe a message: the superuser question has none");
    }
    if ask == Ask::Subscribe && a.retain.is_some() {
        bail!(
            "--retain: a subscription has no retain flag (its messages' flags are decided when they are read)"
        );
    }
    let message = policy_core::Message { qos: a.qos, retain: a.retain };
    let req = EvalRequest { subject, ask, topic, clientid: a.clientid, username: a.username, message };
    let decision = decide(&ev.generation, &req);
    let explanation = req.query().map(|q| policy.explain(&q));
    // A module that changes the logic may answer otherwise than the document reads.
    let reading = policy.evaluate(&req);
    let differs = reading.allow != decision.allow || reading.rule != decision.rule;

    if a.json {
        let mut out = decision_json(&decision, &req.subject);
        if let Some(e) = &explanation {
            out["explanation"] = serde_json::to_value(e)?;
        }
        if differs {
            out["document_reads"] = serde_json::to_value(&reading)?;
        }
        outln!("{out}");
    } else {
        print_human(policy, &req, &decision, explanation.as_ref());
        if differs {
            outln!(
                "  note: the module ({}) decides otherwise than the document reads ({}: {}); the rules \
                 above are the document's reading",
                ev.generation.module.version,
                if reading.allow { "allow" } else { "deny" },
                reading.reason
            );
        }
    }
    Ok(ExitCode::from(if decision.allow { 0 } else { 1 }))
}

fn print_human(
    policy: &Policy,
    req: &EvalRequest,
    d: &policy_core::Decision,
    e: Option<&policy_core::Explanation>,
) {
    let verdict = if d.allow { "ALLOW" } else { "DENY" };
    match req.ask {
        Ask::Superuser => outln!("{verdict}  superuser"),
        _ => outln!("{verdict}  {} {}", req.ask.as_str(), policy_core::quote(&req.topic)),
    }
    outln!("  reason:   {}", d.reason);
    outln!("  rule:     {}", d.rule.as_deref().unwrap_or("-"));
    let s = &req.subject;
    outln!(
        "  subject:  {} {} groups=[{}] scopes=[{}]",
        s.kind.as_str(),
        policy_core::quote(&s.id),
        s.groups.join(", "),
        s.scopes.join(", ")
    );
    match policy.capabilities(s) {
        Some(c) => {
            let caps: Vec<&str> = c.iter().map(|p| p.as_str()).collect();
            outln!("  capabilities: [{}] (from roles)", caps.join(", "));
        }
        None => outln!("  capabilities: (no roles in the policy: rules alone decide)"),
    }
    let Some(e) = e else { return };
    if e.rules.is_empty() {
        return;
    }
    outln!("  rules:");
    let width = e.rules.iter().map(|r| r.rule.len()).max().unwrap_or(0);
    for r in &e.rules {
        let status = if r.applies {
            format!(
                "applies (topic pattern {})",
                policy_core::quote(r.matched_topic.as_deref().unwrap_or("*"))
            )
        } else {
            r.why_not.clone().unwrap_or_default()
        };
        outln!("    {:width$}  {:5}  {status}", r.rule, r.effect);
    }
}
