//! The playground's engine API, natively: the page calls exactly these functions.

use serde_json::{Value, json};
use web_playground::{Playground, decode_token, evaluate, subject_from_claims};

const POLICY: &str = include_str!("../../policies/celine.json");
const CASES: &str = include_str!("../../policies/tests/celine.json");

fn parse(s: String) -> Value {
    serde_json::from_str(&s).expect("the API returns JSON")
}

fn loaded() -> Playground {
    let mut pg = Playground::new();
    let r = parse(pg.load(POLICY));
    assert_eq!(r["ok"], true, "{r}");
    pg
}

/// The rules of `policies/celine.json`.
fn default_rule_count() -> usize {
    let p: Value = serde_json::from_str(POLICY).unwrap();
    p["celine"]["mqtt"]["acl"]["rules"].as_array().unwrap().len()
}

#[test]
fn the_default_policy_loads_with_its_rules_placed_in_the_text() {
    let mut pg = Playground::new();
    let r = parse(pg.load(POLICY));
    let rules = r["rules"].as_array().unwrap();
    assert_eq!(rules.len(), default_rule_count());
    for rule in rules {
        let place = &rule["place"];
        let from = place["from"].as_u64().unwrap() as usize;
        // policies/celine.json is ASCII, so UTF-16 offsets are byte offsets.
        assert_eq!(&POLICY[from..from + 1], "{", "{rule}");
        assert!(
            POLICY[from..place["to"].as_u64().unwrap() as usize].contains(rule["name"].as_str().unwrap())
        );
    }
}

#[test]
fn a_decision_names_its_rule_and_where_it_is() {
    let pg = loaded();
    let req = json!({"subject": {"id": "u1", "type": "user", "groups": ["viewers"]},
                     "action": "subscribe", "topic": "celine/telemetry/meter/m-1/readings"});
    let r = parse(pg.check(&req.to_string()));
    assert_eq!(r["decision"]["allow"], true, "{r}");
    let rule = r["decision"]["rule"].as_str().unwrap();
    let from = r["place"]["from"].as_u64().unwrap() as usize;
    assert!(POLICY[from..].starts_with('{') && POLICY[from..from + 200].contains(rule), "{r}");
    // Every rule's part, and the patterns that cover the topic.
    assert_eq!(r["rules"].as_array().unwrap().len(), default_rule_count(), "one trace per rule");
    let patterns = r["patterns"].as_array().unwrap();
    assert!(patterns.iter().any(|p| p["rule"] == rule && p["applies"] == true), "{r}");
    let p = &patterns[0]["place"];
    let (from, to) = (p["from"].as_u64().unwrap() as usize, p["to"].as_u64().unwrap() as usize);
    assert_eq!(format!("\"{}\"", patterns[0]["pattern"].as_str().unwrap()), &POLICY[from..to]);
}

#[test]
fn a_bad_request_is_an_error_not_a_decision() {
    let pg = loaded();
    let r =
        parse(pg.check(r#"{"subject": {"id": "u1", "type": "robot"}, "action": "publish", "topic": "a"}"#));
    assert_eq!(r["ok"], false);
    assert!(r["error"].as_str().unwrap().contains("subject.type"), "{r}");
    let r = parse(Playground::new().check(r#"{"action": "publish"}"#));
    assert!(r["error"].as_str().unwrap().contains("does not load"), "{r}");
}

#[test]
fn invalid_json_is_reported_with_the_path_and_place_it_broke_in() {
    let broken = POLICY.replacen("\"effect\": \"deny\"", "\"effect\" \"deny\"", 1);
    assert_ne!(broken, POLICY);
    let mut pg = Playground::new();
    let r = parse(pg.load(&broken));
    assert_eq!(r["ok"], false);
    let d = &r["diagnostics"][0];
    assert!(d["message"].as_str().unwrap().starts_with("invalid JSON"), "{d}");
    assert!(d["path"].as_str().unwrap().starts_with("celine.mqtt.acl.rules["), "{d}");
    let at = d["place"]["from"].as_u64().unwrap() as usize;
    assert_eq!(&broken[at..at + 1], "\"", "{d}");
    // Nothing stays loaded from before.
    assert_eq!(
        parse(pg.check(r#"{"subject": {"id": "a", "type": "user"}, "action": "read", "topic": "a"}"#))["ok"],
        false
    );
}

#[test]
fn semantic_errors_and_warnings_are_placed_by_path() {
    let doc = r#"{"celine": {"mqtt": {"acl": {"rules": [
        {"subjects": {"groups": ["a"]}, "topics": ["x/#"], "actions": ["publish"], "effect": "allow"},
        {"subjects": {"groups": ["a"]}, "topics": ["x/#/y"], "actions": ["publish"], "effect": "allow"}]}}}}"#;
    let r = parse(Playground::new().load(doc));
    let d = &r["diagnostics"][0];
    assert_eq!(d["path"], "celine.mqtt.acl.rules[1].topics[0]", "{r}");
    let at = d["place"]["from"].as_u64().unwrap() as usize;
    assert_eq!(&doc[at..at + 7], "\"x/#/y\"");
    let shadowed = doc.replace("x/#/y", "x/a").replace("\"effect\": \"allow\"}]", "\"effect\": \"deny\"}]");
    let r = parse(Playground::new().load(&shadowed));
    assert_eq!(r["ok"], true, "{r}");
    assert!(r["diagnostics"].as_array().unwrap().iter().all(|d| d["severity"] == "warning"));
}

#[test]
fn places_count_utf16_units_as_the_browser_does() {
    let doc = "{\"celine\": {\"mqtt\": {\"acl\": {\"rules\": [\n  {\"id\": \"Ünïcødé 🚀\", \"subjects\": {\"groups\": [\"é🚀\"]}, \"topics\": [\"a/+/b/#/c\"], \"actions\": [\"read\"]}]}}}}";
    let r = parse(Playground::new().load(doc));
    let p = &r["diagnostics"][0]["place"];
    assert_eq!(r["diagnostics"][0]["path"], "celine.mqtt.acl.rules[0].topics[0]", "{r}");
    let utf16: Vec<u16> = doc.encode_utf16().collect();
    let shown =
        String::from_utf16(&utf16[p["from"].as_u64().unwrap() as usize..p["to"].as_u64().unwrap() as usize]);
    assert_eq!(shown.unwrap(), "\"a/+/b/#/c\"", "{r}");
}

#[test]
fn the_default_test_cases_pass_and_a_wrong_expectation_fails() {
    let pg = loaded();
    let r = parse(pg.run_tests(CASES));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    assert_eq!(r["passed"].as_u64().unwrap() as usize, r["results"].as_array().unwrap().len());
    let mut cases: Value = serde_json::from_str(CASES).unwrap();
    let first = &mut cases["cases"][0]["expect"];
    *first = json!(if first == "allow" { "deny" } else { "allow" });
    let r = parse(pg.run_tests(&cases.to_string()));
    assert_eq!(r["failed"], 1, "{r}");
    assert!(r["results"][0]["failure"].as_str().unwrap().starts_with("expected"), "{r}");
    let r = parse(pg.run_tests(r#"{"cases": [{"action": "read"}]}"#));
    assert_eq!(r["ok"], false);
    assert!(r["errors"][0]["path"].as_str().unwrap().starts_with("cases[0]"), "{r}");
}

fn jwt(claims: &Value) -> String {
    use base64::Engine;
    let e = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.c2lnbmF0dXJl", e(&json!({"alg": "RS256", "kid": "k1", "typ": "JWT"})), e(claims))
}

#[test]
fn a_pasted_token_is_decoded_locally_and_mapped_to_its_subject() {
    let claims = json!({"sub": "f7c1", "preferred_username": "service-account-svc-pipelines",
                        "azp": "svc-pipelines", "scope": "profile mqtt.write", "exp": 1000});
    let r = parse(decode_token(&format!("Bearer {}", jwt(&claims)), 2000.0));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["verified"], false);
    assert_eq!(r["expired"], true);
    assert_eq!(r["header"]["kid"], "k1");
    assert_eq!(r["subject"]["type"], "service", "{r}");
    assert_eq!(r["subject"]["id"], "svc-pipelines", "{r}");
    assert!(!r.to_string().contains("c2lnbmF0dXJl"), "the token is not echoed");
    assert_eq!(parse(subject_from_claims(&claims.to_string()))["subject"], r["subject"]);
}

#[test]
fn a_malformed_token_says_what_is_wrong() {
    let r = parse(decode_token("abc.def", 0.0));
    assert!(r["error"].as_str().unwrap().contains("three"), "{r}");
    let r = parse(decode_token("!!!.e30.x", 0.0));
    assert!(r["error"].as_str().unwrap().contains("header is not base64url"), "{r}");
    let r = parse(subject_from_claims("[1]"));
    assert_eq!(r["ok"], false);
}

#[test]
fn the_conformance_corpus_gives_its_answers_through_this_api() {
    let corpus = include_str!("../../corpus/conformance.jsonl");
    let mut n = 0;
    for line in corpus.lines().filter(|l| !l.trim().is_empty()) {
        let case: Value = serde_json::from_str(line).unwrap();
        let r = parse(evaluate(&case["policy"].to_string(), &case["request"].to_string()));
        match case["expect"].as_str().unwrap() {
            "load_error" => assert!(r["error"].as_str().unwrap().contains("does not load"), "{line}\n{r}"),
            verdict => {
                assert_eq!(r["decision"]["allow"], (verdict == "allow"), "{line}\n{r}");
                if let Some(rule) = case.get("expect_rule") {
                    assert_eq!(&r["decision"]["rule"], rule, "{line}\n{r}");
                }
            }
        }
        n += 1;
    }
    assert!(n >= 100, "{n} cases");
}

#[test]
fn diff_compares_the_loaded_document_with_another_and_groups_the_changes() {
    let mut doc: Value = serde_json::from_str(POLICY).unwrap();
    doc["celine"]["roles"]["group_permissions"]["viewers"] = json!(["subscribe"]);
    let mut pg = Playground::new();
    assert_eq!(parse(pg.load(&doc.to_string()))["ok"], true);
    let r = parse(pg.diff(POLICY, ""));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["counts"]["read"]["lost"], r["changes"], "only reads change: {r}");
    let g = &r["groups"][0];
    assert_eq!(g["old"]["rule"], "telemetry-viewers");
    assert_eq!(g["new_text"], "denied: missing capability");
    let change = &g["changes"][0];
    // A witness is an eval line: the page can load it as the request, and the engine agrees.
    let again = parse(pg.check(&change["request"].to_string()));
    assert_eq!(again["decision"], change["new"]);
    assert_eq!(parse(loaded().check(&change["request"].to_string()))["decision"], change["old"]);

    assert_eq!(parse(loaded().diff(POLICY, ""))["changes"], 0);
    // The test table's requests are decided too: its viewer (id u1) shows up.
    let with_cases = parse(pg.diff(POLICY, CASES));
    let ids: Vec<&Value> = with_cases["groups"][0]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["request"]["subject"]["id"])
        .collect();
    assert!(ids.contains(&&json!("u1")), "{with_cases}");
    assert!(with_cases["probed"].as_u64() > r["probed"].as_u64());
    let bad = parse(loaded().diff(r#"{"celine": {}}"#, ""));
    assert_eq!(bad["ok"], false);
    assert!(bad["errors"][0]["message"].as_str().unwrap().contains("mqtt"), "{bad}");
}

#[test]
fn effective_lists_grants_with_carve_outs_per_action() {
    let pg = loaded();
    let r = parse(pg.effective(r#"{"subject": {"id": "u1", "type": "user", "groups": ["viewers"]}}"#));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["superuser"]["allow"], false);
    let sub = &r["actions"][0];
    assert_eq!(sub["action"], "subscribe");
    assert_eq!(sub["allow"][0]["rule"], "telemetry-viewers");
    assert_eq!(sub["tree"][0]["level"], "celine");
    assert!(r["actions"][2]["refused"].as_str().unwrap().contains("missing capability 'publish'"));
    let bad = parse(pg.effective(r#"{"subject": {"id": "u1"}}"#));
    assert_eq!(bad["ok"], false);
    assert!(bad["error"].as_str().unwrap().contains("type"), "{bad}");
}
