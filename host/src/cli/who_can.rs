//! `mqtt-policy who-can`: a subject's effective permissions, per action, as a topic tree.

use std::process::ExitCode;

use policy_core::{ActionGrants, Node, Values};

use super::{ModuleArg, PolicyArg, SubjectArg, decide};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub policy: PolicyArg,
    #[command(flatten)]
    pub module: ModuleArg,
    #[command(flatten)]
    pub who: SubjectArg,
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
    let subject = a.who.subject()?;
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
    if a.json {
        println!("{}", serde_json::json!({"subject": subject, "superuser": superuser, "effective": e}));
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} {} groups=[{}] scopes=[{}] in {source}",
        subject.kind.as_str(),
        policy_core::quote(&subject.id),
        subject.groups.join(", "),
        subject.scopes.join(", ")
    );
    match &e.capabilities {
        Some(c) => println!("capabilities: [{}] (from roles)", c.join(", ")),
        None => println!("capabilities: (no roles in the policy: rules alone decide)"),
    }
    match superuser.reason.strip_prefix("not a superuser: ") {
        Some(why) => println!("superuser: no ({why})"),
        None => println!("superuser: yes ({}; go-auth skips every ACL check for it)", superuser.reason),
    }
    for g in &e.actions {
        print_action(g);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_action(g: &ActionGrants) {
    println!();
    if let Some(why) = &g.refused {
        println!("{}: nothing ({why})", g.action);
        return;
    }
    if g.allow.is_empty() {
        println!("{}: nothing (no rule allows it to this subject)", g.action);
    } else {
        println!("{}:", g.action);
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
        println!("{line}");
        for c in &grant.except {
            match &c.only {
                Some(only) => println!("    except {}  (rule {}; only: {only})", c.pattern, c.rule),
                None => println!("    except {}  (rule {})", c.pattern, c.rule),
            }
        }
    }
    if !g.tree.is_empty() {
        println!("  tree:");
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
        println!("{indent}{path}/");
    } else {
        println!("{indent}{path}  {}", marks.join("  "));
    }
    for c in &n.children {
        print_node(c, String::new(), depth + 1);
    }
}
