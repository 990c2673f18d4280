//! `mqtt-policy verify`: decides the document's invariants for every request, printing a
//! counterexample request for each one that fails (policy-core's `verify` owns the procedure).
//! The witnesses are decided through the policy module (`--module`), as the swap gate decides
//! them; only the built-in module's answers make the verdict a proof.

use std::process::ExitCode;
use std::time::Instant;

use super::{ModuleArg, PolicyArg};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub policy: PolicyArg,
    #[command(flatten)]
    pub module: ModuleArg,
    /// Print the verdicts as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let ev = a.module.evaluator(a.policy.policy.as_deref())?;
    let started = Instant::now();
    let mut fault: Option<String> = None;
    let v = policy_core::verify_with(&ev.policy, &mut |r| {
        if let Some(why) = &fault {
            return policy_core::Decision { allow: false, rule: None, reason: why.clone() };
        }
        policy_engine::cases::try_decide(&ev.generation, r).unwrap_or_else(|why| {
            fault = Some(why.0.clone());
            policy_core::Decision { allow: false, rule: None, reason: why.0 }
        })
    });
    let took = started.elapsed();
    if let Some(why) = fault {
        anyhow::bail!("the module faulted while deciding the invariants, so they are not decided: {why}");
    }
    if a.json {
        let out = serde_json::json!({
            "holds": v.holds(),
            "proven": ev.built_in,
            "probed": v.probed,
            "invariants": v.verdicts,
        });
        outln!("{out}");
        return Ok(ExitCode::from(u8::from(!v.holds())));
    }
    let source = &ev.source;
    if v.verdicts.is_empty() {
        outln!("{source}: states no invariants (celine.mqtt.invariants)");
        return Ok(ExitCode::SUCCESS);
    }
    for verdict in &v.verdicts {
        let mark = match (verdict.holds, &verdict.undecided) {
            (true, _) => "holds    ",
            (false, Some(_)) => "UNDECIDED",
            (false, None) => "VIOLATED ",
        };
        outln!("{mark}  {}: {}", verdict.invariant, verdict.statement);
        if let Some(why) = &verdict.undecided {
            outln!("  could not be decided: {why}");
        }
        if let Some(c) = &verdict.counterexample {
            outln!("  counterexample: {}", serde_json::to_string(&c.request)?);
            match (&c.decision.rule, c.superuser) {
                (_, true) => outln!(
                    "  allowed: the subject is a superuser, so the broker asks no ACL question \
                     (replay it with \"action\": \"superuser\")"
                ),
                (Some(rule), false) => outln!("  allowed by rule '{rule}': {}", c.decision.reason),
                (None, false) => outln!("  allowed: {}", c.decision.reason),
            }
        }
    }
    let violated = v.violated().count();
    outln!(
        "{} of {} invariants hold ({} requests decided in {:.0?})",
        v.verdicts.len() - violated,
        v.verdicts.len(),
        v.probed,
        took
    );
    if !ev.built_in {
        outln!(
            "note: the module is not the built-in one, so this is no proof: its answers on the witness \
             requests were checked, and it may decide other requests otherwise than the document reads"
        );
    }
    Ok(ExitCode::from(u8::from(violated > 0)))
}
