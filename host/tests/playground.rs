//! `/playground/`: the browser playground's files, embedded in the binary by `cargo xtask
//! build` and served with the headers the page relies on. The page itself is tested in
//! Chromium (`web-playground/browser-tests`).

use reqwest::StatusCode;
use reqwest::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION};

mod common;
use common::*;

/// A path on the operations listener, where the playground is served (outside dev mode).
fn get(s: &Server, path: &str) -> reqwest::blocking::Response {
    let client =
        reqwest::blocking::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    client.get(s.ops(path)).send().unwrap()
}

#[test]
fn the_playground_is_served_from_the_binary() {
    assert!(
        mqtt_policy::playground::embedded(),
        "this build carries no playground: run `cargo xtask build` first"
    );
    let s = Server::rsa(&[]);
    let r = get(&s, "/playground");
    assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(r.headers()[LOCATION], "/playground/");

    let r = get(&s, "/playground/");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
    assert_eq!(r.headers()[CACHE_CONTROL], "no-cache");
    let csp = r.headers()[CONTENT_SECURITY_POLICY].to_str().unwrap().to_string();
    assert!(csp.contains("'wasm-unsafe-eval'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(r.text().unwrap().contains("CELINE MQTT policy playground"));

    for (path, kind) in [
        ("/playground/app.js", "text/javascript; charset=utf-8"),
        ("/playground/sw.js", "text/javascript; charset=utf-8"),
        ("/playground/pkg/web_playground_bg.wasm", "application/wasm"),
        ("/playground/default-policy.json", "application/json"),
    ] {
        let r = get(&s, path);
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.headers()[CONTENT_TYPE], kind, "{path}");
    }
    let policy = get(&s, "/playground/default-policy.json").text().unwrap();
    assert_eq!(
        policy,
        std::fs::read_to_string(test_support::repository().join("policies/celine.json")).unwrap()
    );
    let sw = get(&s, "/playground/sw.js").text().unwrap();
    assert!(!sw.contains("celine-playground-BUILD"), "the cache is named after the build");

    for path in ["/playground/nope.js", "/playground/../Cargo.toml", "/playground/pkg/"] {
        assert_eq!(get(&s, path).status(), StatusCode::NOT_FOUND, "{path}");
    }
    // Not on the address brokers call (dev mode keeps it there too, for the quick start).
    assert_eq!(send(client().get(s.url("/playground/"))).status, 404);
    let dev = Server::start(&["--dev"]);
    assert_eq!(send(client().get(dev.url("/playground/"))).status, 200);
}

#[test]
fn no_playground_turns_it_off() {
    let s = Server::rsa(&["--no-playground"]);
    assert_eq!(get(&s, "/playground/").status(), StatusCode::NOT_FOUND);
    assert_eq!(get(&s, "/healthz").status(), StatusCode::OK);
}
