//! `mqtt-policy who-can`: a subject's effective permissions, per action, as a topic tree; or,
//! given an action and a topic instead of a subject, who could ever do it.

use std::process::ExitCode;

use anyhow::bail;
use policy_core::{Action, ActionGrants, Node, Values, WhoCould};

use super::{ModuleArg, PolicyArg, SubjectArg, decide};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub policy: PolicyArg,
    #[command(flatten)]
    pub module: ModuleArg,
    /// Who could ever do this: an action (subscribe, read, publish) and a topic (a filter
    /// for subscribe), instead of a subject
    #[arg(value_names = ["ACTION", "TOPIC"], num_args = 2, conflicts_with_all = ["subject", "claims", "username", "clientid"])]
    pub ask: Vec<String>,
    /// The subject as JSON: {"id": "u1", "type": "user", "groups": ["viewers"], "scopes": []}
    #[arg(long, value_name = "JSON", conflicts_with = "claims")]
    pub subject: Option<String>,
    /// A token's claims as JSON, mapped to a subject as for Keycloak tokens (no signature check)
    #[arg(long, value_name = "JSON")]
    pub claims: Option<String>,
    /// Fill ${username} with this MQTT username [default: show the placeholder]
    #[arg(long)]
    pub username: Option<String>,
    /// Fill ${clientid} with this MQTT client id [default: show the placeholder]
    #[arg(long)]
    pub clientid: Option<String>,
    /// Print the effective permissions as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    if let [action, topic] = a.ask.as_slice() {
        return who_could(&a, action, topic);
    }
    if a.subject.is_none() && a.claims.is_none() {
        bail!("give a subject (--subject or --claims), or an action and a topic (who-can subscribe '#')");
    }
    let subject = SubjectArg { subject: a.subject.clone(), claims: a.claims.clone() }.subject()?;
    let ev = a.module.evaluator(a.policy.policy.as_deref())?;
    let (source, policy) = (&ev.source, &ev.policy);
    let values = Values { username: a.username.as_deref(), clientid: a.clientid.as_deref() };
    let e = policy.effective(&subject, values);
    // The module answers the superuser question; the grants are the document's reading.
    let ask = policy_core::EvalRequest {
        subject: subject.clone(),
        ask: policy_core::Ask::Superuser,
        topic: String::new(),
        clientid: String::new(),
        username: String::new(),
        message: policy_core::Message::UNKNOWN,
    };
    let superuser = decide(&ev.generation, &ask);
    if !ev.built_in {
        eprintln!(
            "note: {} is not the built-in module: the grants below are how the document reads; \
             `mqtt-policy check --module` decides a request through it",
            ev.generation.module.version
        );
    }
    let limits = policy.limits(&subject);
    if a.json {
        let limits = limits_json(&limits);
        outln!(
            "{}",
            serde_json::json!({"subject": subject, "superuser": superuser, "effective": e, "limits": limits})
        );
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{} {} groups=[{}] scopes=[{}] in {source}",
        subject.kind.as_str(),
        policy_core::quote(&subject.id),
        subject.groups.join(", "),
        subject.scopes.join(", ")
    );
    match &e.capabilities {
        Some(c) => outln!("capabilities: [{}] (from roles)", c.join(", ")),
        None => outln!("capabilities: (no roles in the policy: rules alone decide)"),
    }
    match superuser.reason.strip_prefix("not a superuser: ") {
        Some(why) => outln!("superuser: no ({why})"),
        None => outln!("superuser: yes ({}; go-auth skips every ACL check for it)", superuser.reason),
    }
    match policy.describe_limits(&subject).split_last() {
        None => outln!("limits: none (no limits entry selects the subject)"),
        Some((from, lines)) => {
            outln!("limits: {} ({from}; the broker plugin enforces them)", lines.join("; "))
        }
    }
    for g in &e.actions {
        print_action(g);
    }
    Ok(ExitCode::SUCCESS)
}

/// A subject's limits as JSON: `null` where there is no limit.
fn limits_json(l: &policy_core::Limits) -> serde_json::Value {
    let rate = |r: Option<policy_core::Rate>| {
        r.map(|r| serde_json::json!({"per_second": r.per_second, "burst": r.burst}))
    };
    serde_json::json!({
        "max_subscriptions": l.max_subscriptions,
        "max_payload_bytes": l.max_payload_bytes,
        "publish_messages": rate(l.publish_messages),
        "publish_bytes": rate(l.publish_bytes),
        "retain": l.retain,
    })
}

/// `who-can ACTION TOPIC`: per allow rule that grants it to someone, whom it names and a
/// request that proves it (decided through the module).
fn who_could(a: &Args, action: &str, topic: &str) -> anyhow::Result<ExitCode> {
    let Some(action) = Action::parse(action) else {
        bail!("unknown action '{action}' (expected subscribe, read or publish)");
    };
    let valid = match action {
        Action::Subscribe => policy_core::topic::subscription_filter(topic).map(|_| ()),
        Action::Read | Action::Publish => policy_core::topic::validate_name(topic),
    };
    if let Err(e) = valid {
        bail!("invalid topic for {action}: {e}");
    }
    let ev = a.module.evaluator(a.policy.policy.as_deref())?;
    let mut who: WhoCould = policy_core::who_could(&ev.policy, action, topic);
    // The examples are the document's reading: each is decided again through the module.
    for g in &mut who.grants {
        if let Some(example) = &g.example
            && !decide(&ev.generation, example).allow
        {
            g.refused_by.push(format!("the module {}", ev.generation.module.version));
            g.example = None;
        }
    }
    if a.json {
        outln!("{}", serde_json::to_string(&who)?);
        return Ok(ExitCode::SUCCESS);
    }
    let asked = format!("{action} {}", policy_core::quote(topic));
    let granting: Vec<_> = who.grants.iter().filter(|g| g.example.is_some()).collect();
    if granting.is_empty() {
        outln!("nobody may {asked} in {} by its rules", ev.source);
    } else {
        outln!("who may {asked} in {}:", ev.source);
    }
    if !who.superusers.is_empty() {
        outln!("  superusers, whose checks a broker skips: {}", who.superusers.join(", "));
    }
    for g in &who.grants {
        let verdict = if g.example.is_some() { "allows" } else { "would allow, but refused" };
        outln!("  rule {} {verdict}: {}", policy_core::quote(&g.rule), g.subjects);
        if let Some(sources) = &g.capability {
            outln!(
                "    with the {action} capability from: {}",
                if sources.is_empty() { "nothing".into() } else { sources.join(", ") }
            );
        }
        if let Some(example) = &g.example {
            outln!("    e.g. {}", serde_json::to_string(example)?);
        }
        if !g.refused_by.is_empty() {
            outln!("    some such subjects refused by: {}", g.refused_by.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_action(g: &ActionGrants) {
    outln!();
    if let Some(why) = &g.refused {
        outln!("{}: nothing ({why})", g.action);
        return;
    }
    if g.allow.is_empty() {
        outln!("{}: nothing (no rule allows it to this subject)", g.action);
    } else {
        outln!("{}:", g.action);
    }
    for grant in &g.allow {
        let mut line = format!("  allow {}  (rule {})", grant.pattern, grant.rule);
        if grant.void {
            line.push_str("  VOID: a deny rule covers all of it");
        }
        if !grant.needs.is_empty() {
            line.push_str(&format!("  when {} is usable", grant.needs.join(" and ")));
        }
        if let Some(only) = &grant.only {
            line.push_str(&format!("  only: {only}"));
        }
        outln!("{line}");
        for c in &grant.except {
            match &c.only {
                Some(only) => outln!("    except {}  (rule {}; only: {only})", c.pattern, c.rule),
                None => outln!("    except {}  (rule {})", c.pattern, c.rule),
            }
        }
    }
    if !g.tree.is_empty() {
        outln!("  tree:");
        for n in &g.tree {
            print_node(n, String::new(), 2);
        }
    }
}

/// One line per level that a rule names, chains of unnamed single levels joined: `celine/dt/#`.
fn print_node(n: &Node, prefix: String, depth: usize) {
    let path = format!("{prefix}{}", n.level);
    if n.allow.is_empty() && n.deny.is_empty() && n.children.len() == 1 {
        return print_node(&n.children[0], format!("{path}/"), depth);
    }
    let mut marks = Vec::new();
    if !n.allow.is_empty() {
        marks.push(format!("allow ({})", n.allow.join(", ")));
    }
    if !n.deny.is_empty() {
        marks.push(format!("DENY ({})", n.deny.join(", ")));
    }
    let indent = "  ".repeat(depth);
    if marks.is_empty() {
        outln!("{indent}{path}/");
    } else {
        outln!("{indent}{path}  {}", marks.join("  "));
    }
    for c in &n.children {
        print_node(c, String::new(), depth + 1);
    }
}
