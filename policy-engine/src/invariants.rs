//! Invariants as a swap gate: a candidate whose policy states invariants goes live only when
//! they hold, decided through the candidate's own module (policy-core's `verify_with` owns the
//! procedure). A violation refuses the candidate like a failing test case, with the
//! counterexample request.

use crate::runtime::Generation;

/// What the gate found, for the log.
pub(crate) struct Held {
    pub invariants: usize,
    pub probed: usize,
    /// Decided by the built-in module (whose logic is `policy-core`'s): a proof.
    pub proven: bool,
}

/// Decides the invariants of `policy` (the candidate's document) through `generation`.
/// `Err`: the first violated invariants, each with its counterexample.
pub(crate) fn check(generation: &Generation, policy: &str) -> Result<Held, String> {
    // The module loaded the document already, so a native load error here means only that
    // the built-in reading of it differs: the module is the authority on what loads.
    let Ok(native) = policy_core::Policy::load(policy) else {
        return Ok(Held { invariants: 0, probed: 0, proven: false });
    };
    if native.invariants().is_empty() {
        return Ok(Held { invariants: 0, probed: 0, proven: true });
    }
    let v = policy_core::verify_with(&native, &mut |r| crate::cases::decide(generation, r));
    let violated: Vec<String> = v
        .violated()
        .map(|verdict| {
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
        })
        .collect();
    if !violated.is_empty() {
        return Err(violated.join("; "));
    }
    let proven =
        crate::runtime::embedded_module().is_some_and(|m| crate::hash_of(m) == generation.module.hash);
    Ok(Held { invariants: v.verdicts.len(), probed: v.probed, proven })
}
