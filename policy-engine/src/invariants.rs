//! Invariants as a swap gate: a candidate whose policy states invariants goes live only when
//! they hold, decided through the candidate's own module (policy-core's `verify_with` owns the
//! procedure). A violation refuses the candidate like a failing test case, with the
//! counterexample request; so does an invariant that cannot be read or decided, and a module
//! fault while deciding one.

use crate::runtime::Generation;

/// What the gate found, for the log.
pub struct Held {
    pub invariants: usize,
    pub probed: usize,
    /// Decided by the built-in module (whose logic is `policy-core`'s): a proof. Any other
    /// module was asked the witness requests only.
    pub proven: bool,
}

/// Decides the invariants of `policy` (the candidate's document) through `generation`.
/// `Err`: why the candidate must not go live (also what `mqtt-policy bundle` refuses to pack).
pub fn check(generation: &Generation, policy: &str) -> Result<Held, String> {
    let native = match policy_core::Policy::load(policy) {
        Ok(p) => p,
        // The module loaded a document the built-in reading refuses (a module with a format
        // of its own): fine, unless it states invariants, which then cannot be decided.
        Err(errors) if states_invariants(policy) => {
            let first = errors.first().map(|d| d.to_string()).unwrap_or_default();
            return Err(format!("the policy states invariants, but they cannot be read: {first}"));
        }
        Err(_) => return Ok(Held { invariants: 0, probed: 0, proven: false }),
    };
    if native.invariants().is_empty() {
        return Ok(Held { invariants: 0, probed: 0, proven: true });
    }
    let mut fault: Option<String> = None;
    let v = policy_core::verify_with(&native, &mut |r| {
        // After a fault the candidate is refused anyway: ask the module nothing more.
        if let Some(why) = &fault {
            return policy_core::Decision { allow: false, rule: None, reason: why.clone() };
        }
        crate::cases::try_decide(generation, r).unwrap_or_else(|why| {
            fault = Some(why.0.clone());
            policy_core::Decision { allow: false, rule: None, reason: why.0 }
        })
    });
    if let Some(why) = fault {
        return Err(format!("the module faulted while deciding the policy's invariants: {why}"));
    }
    let refused: Vec<String> = v.violated().map(describe).collect();
    if !refused.is_empty() {
        return Err(refused.join("; "));
    }
    Ok(Held { invariants: v.verdicts.len(), probed: v.probed, proven: generation.decides_natively() })
}

/// Whether the document has a `celine.mqtt.invariants` entry at all.
fn states_invariants(policy: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(policy)
        .is_ok_and(|doc| doc.pointer("/celine/mqtt/invariants").is_some())
}

/// `invariant 'x' does not hold: <statement>; counterexample {...} (rule 'r' allows it)`.
fn describe(verdict: &policy_core::Verdict) -> String {
    if let Some(why) = &verdict.undecided {
        return format!("invariant '{}' could not be decided: {why}", verdict.invariant);
    }
    let example = verdict.counterexample.as_ref().map(|c| {
        let by = match (&c.decision.rule, c.superuser) {
            (_, true) => "the subject is a superuser".to_string(),
            (Some(rule), false) => format!("rule '{rule}' allows it"),
            (None, false) => c.decision.reason.clone(),
        };
        format!("; counterexample {} ({by})", serde_json::to_string(&c.request).unwrap_or_default())
    });
    format!(
        "invariant '{}' does not hold: {}{}",
        verdict.invariant,
        verdict.statement,
        example.unwrap_or_default()
    )
}
