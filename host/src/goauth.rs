//! The three endpoints mosquitto-go-auth calls: `/mqtt/user`, `/mqtt/superuser`, `/mqtt/acl`
//! (docs/go-auth-protocol.md), for its `http` and `jwt` (remote) backends.
//!
//! - Parameters come from a JSON body (go-auth's json mode; `null` from the jwt backend),
//!   a form body (form mode), and the query string, whatever the method (POST, GET, PUT).
//! - The token is the Bearer header, else `password` or `username` when it is a JWT, else (ACL
//!   and superuser) the session a successful user call bound to the username, which it proved
//!   to name the token's subject (see `auth.rs`).
//! - A client Mosquitto admitted by its TLS certificate (`use_identity_as_username`) reaches
//!   go-auth without a user call; its ACL and superuser calls carry the certificate's name as
//!   the username (http backend) or as the Bearer value (jwt backend). With
//!   `--certificate-subject-type`, a name the policy's `certificates` section accepts is
//!   decided as that certificate's subject; such names are never bound to a token (a user
//!   call with one is refused), so a certificate and a token never stand for each other.
//! - Answers: 200 `{"ok":true,"error":""}` allows, 403 `{"ok":false,"error":"<reason>"}`
//!   denies; both satisfy go-auth's status and json response modes. `--response-mode text`
//!   answers `ok` or the reason. A malformed request gets 400 with the reason: never 5xx.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::http::{HeaderMap, Response, StatusCode};
use hyper::body::Incoming;

use authorizer::{DecisionRecord, NoCache, UsernameRefused, action_name};
use goauth_wire::{Params, TokenFrom, find_token, looks_like_jwt, parse_params};
use identity::{TokenHash, Verified};
use policy_engine::{Action, Decision, Generation, Request, Subject};

use crate::auth::{DecisionKey, DecisionsFor, PreparedIdentity, SharedDecisions};
use crate::respond::{Out, ResponseMode, answer};
use crate::state::{AppState, BODY_LIMIT, REQUEST_TIMEOUT};

/// What a request came to.
pub enum Outcome {
    Allow(String),
    Deny(String),
    /// The request itself is malformed (400).
    Bad(String),
    /// The request body is larger than [`BODY_LIMIT`] (413).
    TooLarge(String),
}

impl Outcome {
    fn into_response(self, mode: ResponseMode) -> Response<Out> {
        let (status, ok, error) = match self {
            Outcome::Allow(_) => (StatusCode::OK, true, String::new()),
            Outcome::Deny(r) => (StatusCode::FORBIDDEN, false, r),
            Outcome::Bad(r) => (StatusCode::BAD_REQUEST, false, r),
            Outcome::TooLarge(r) => (StatusCode::PAYLOAD_TOO_LARGE, false, r),
        };
        match mode {
            // The common answer, written once.
            ResponseMode::Json if ok => {
                answer(status, "application/json", Bytes::from_static(br#"{"error":"","ok":true}"#))
            }
            ResponseMode::Json => {
                // `{"error":"<reason>","ok":false}`, written directly (no JSON value built).
                let mut body = Vec::with_capacity(error.len() + 32);
                body.extend_from_slice(br#"{"error":"#);
                let _ = serde_json::to_writer(&mut body, &error);
                body.extend_from_slice(br#","ok":false}"#);
                answer(status, "application/json", body.into())
            }
            ResponseMode::Text => {
                let body = if ok { Bytes::from_static(b"ok") } else { error.into() };
                answer(status, "text/plain; charset=utf-8", body)
            }
        }
    }
}

/// MOSQ_ACL_READ, MOSQ_ACL_WRITE, MOSQ_ACL_SUBSCRIBE.
const ACC_BITS: [(u32, Action); 3] = [(4, Action::Subscribe), (2, Action::Publish), (1, Action::Read)];

/// The actions an `acc` bit mask asks for, all of which must be allowed.
pub fn parse_acc(acc: &str) -> Result<impl Iterator<Item = Action>, String> {
    let bad = || {
        format!(
            "'acc' must be a bit mask of 1 (read), 2 (publish) and 4 (subscribe), got {}",
            crate::short(acc)
        )
    };
    let n: u32 = acc.trim().parse().map_err(|_| bad())?;
    if n == 0 || n & !7 != 0 {
        return Err(bad());
    }
    Ok(ACC_BITS.iter().filter(move |(bit, _)| n & bit != 0).map(|(_, a)| *a))
}

/// The username as logged and used for sessions: a JWT username (jwt backend) is never shown.
fn username_label<'a>(p: &'a Params<'_>) -> &'a str {
    match p.username.as_deref() {
        Some(_) if p.username_is_token => "<token>",
        Some(u) => u,
        None => "",
    }
}

struct Ctx<'a> {
    state: &'a AppState,
    generation: Arc<Generation>,
    headers: &'a HeaderMap,
    params: Params<'a>,
}

impl Ctx<'_> {
    async fn verified_token(&self) -> Result<Option<(TokenHash, Arc<Verified>, TokenFrom)>, Outcome> {
        match find_token(self.headers, &self.params) {
            Err(e) => Err(Outcome::Bad(e.0)),
            Ok(None) => Ok(None),
            Ok(Some((token, from))) => verify(self.state, token).await.map(|(hash, v)| Some((hash, v, from))),
        }
    }

    fn subject(&self, hash: TokenHash, v: &Verified) -> Result<Arc<Subject>, Outcome> {
        self.state
            .authorizer
            .identities
            .subject(&self.generation, hash, v)
            .map_err(|e| Outcome::Deny(e.into()))
    }

    /// The subject of a call for a client known by its certificate: the Bearer value that is
    /// no JWT (jwt backend), else the username of a call without a token (http backend),
    /// when it is a certificate name. A username that names both a certificate and a token's
    /// session (the policy made it a certificate name after the session was bound) is refused.
    fn certificate_client(&self) -> Result<Option<Arc<Subject>>, Outcome> {
        if self.state.authorizer.certificate_subject_type().is_none() {
            return Ok(None);
        }
        let (name, from_username) = match self.headers.get(axum::http::header::AUTHORIZATION) {
            Some(h) => {
                let Some((scheme, value)) = h.to_str().ok().and_then(|h| h.split_once(' ')) else {
                    return Ok(None);
                };
                let value = value.trim();
                if !scheme.eq_ignore_ascii_case("bearer") || looks_like_jwt(value) {
                    return Ok(None);
                }
                (value, false)
            }
            None if self.params.password.is_none() && !self.params.username_is_token => {
                let Some(u) = self.params.username.as_deref() else { return Ok(None) };
                (u, true)
            }
            None => return Ok(None),
        };
        let subject = self
            .state
            .authorizer
            .certificate_subject(&self.generation, name)
            .map_err(|f| Outcome::Deny(f.0))?;
        if subject.is_some() && from_username && self.state.auth.session_token(name).is_some() {
            return Err(Outcome::Deny(format!(
                "the username {} is a certificate name and also a token holder's session: refused until \
                 the session ends",
                crate::short(name)
            )));
        }
        Ok(subject)
    }

    /// The record of a decision about this call.
    fn record<'r>(&'r self, endpoint: &'r str, subject: Option<&'r Subject>) -> DecisionRecord<'r> {
        DecisionRecord::about(
            endpoint,
            subject,
            username_label(&self.params),
            self.params.clientid.as_deref().unwrap_or(""),
            self.params.topic.as_deref().unwrap_or(""),
        )
    }
}

/// Writes the record of a call that came to `outcome` without the policy deciding it.
fn audit(ctx: &Ctx<'_>, endpoint: &str, subject: Option<&Subject>, action: &str, outcome: &Outcome) {
    let (allow, reason) = match outcome {
        Outcome::Allow(r) => (true, r.as_str()),
        Outcome::Deny(r) | Outcome::Bad(r) | Outcome::TooLarge(r) => (false, r.as_str()),
    };
    ctx.state.audit.write(&ctx.record(endpoint, subject).outcome(action, allow, reason));
}

async fn user(ctx: &Ctx<'_>) -> Outcome {
    let (hash, v, from) = match ctx.verified_token().await {
        Err(o) => return o,
        Ok(None) => {
            return Outcome::Deny(
                "no token: send the JWT as the MQTT password, as the username, or as a Bearer token".into(),
            );
        }
        Ok(Some(t)) => t,
    };
    let subject = match ctx.subject(hash, &v) {
        Ok(s) => s,
        Err(o) => return o,
    };
    // The http backend (the JWT as the password): its later ACL and superuser calls carry only
    // the username, so the username must be proven to name this token's subject before it
    // may stand for it. (The jwt backend sends the token with every call: nothing to bind.)
    if from == TokenFrom::Password {
        let username = ctx.params.username.as_deref().unwrap_or("");
        let authorizer = &ctx.state.authorizer;
        if let Err(refused) = authorizer.username_stands_for(&ctx.generation, username, &subject, &v) {
            let names: Vec<String> =
                authorizer.subject_names(&subject, &v).iter().map(|n| crate::short(n)).collect();
            let (username, names) = (crate::short(username), names.join(" or "));
            let o = Outcome::Deny(match refused {
                UsernameRefused::CertificateName => format!(
                    "the MQTT username {username} is a certificate name (the policy's certificates section): \
                     a token cannot stand for it; connect with the username {names}"
                ),
                UsernameRefused::Fault(fault) => format!(
                    "the MQTT username {username} could not be told apart from a certificate name ({fault}): \
                     a token cannot stand for it; connect with the username {names}"
                ),
                UsernameRefused::NotTheSubjects => format!(
                    "the MQTT username {username} does not name the token's subject: connect with the username \
                     {names} (later ACL calls carry only the username, so it must belong to the token)"
                ),
            });
            audit(ctx, "user", Some(&subject), "connect", &o);
            return o;
        }
        match &ctx.state.sessions {
            None => ctx.state.auth.bind(username, hash, Arc::clone(&v)),
            Some(shared) => {
                // Shared first: a binding the other replicas cannot see would deny half the
                // client's checks, so the CONNECT is refused instead.
                if let Err(e) = Box::pin(shared.put(username, hash, &v)).await {
                    let o = Outcome::Deny(format!("the session could not be recorded: {e}"));
                    audit(ctx, "user", Some(&subject), "connect", &o);
                    return o;
                }
                let until = identity::now() + crate::sessions::LOCAL_TTL.as_secs();
                ctx.state.auth.bind_until(username, hash, Arc::clone(&v), until);
            }
        }
    }
    let o = Outcome::Allow(format!("authenticated {} '{}'", subject.kind_str(), subject.id));
    audit(ctx, "user", Some(&subject), "connect", &o);
    o
}

fn no_session(p: &Params) -> Outcome {
    Outcome::Deny(format!(
        "no token and no session for username {}: the client must connect (user call) with that \
         username and its token as the password first",
        crate::short(username_label(p)),
    ))
}

/// The session of a (proven) username: this replica's, else the shared store's (then kept
/// here for `sessions::LOCAL_TTL`).
async fn session(ctx: &Ctx<'_>) -> Result<(TokenHash, Arc<Verified>), Outcome> {
    let username = ctx.params.username.as_deref().unwrap_or("");
    if let Some(s) = ctx.state.auth.session(username) {
        return Ok(s);
    }
    let Some(shared) = &ctx.state.sessions else { return Err(no_session(&ctx.params)) };
    // Boxed, as are the other waits off the cached path: every request's future stays small.
    match Box::pin(shared.get(username)).await {
        Ok(Some((hash, v))) => {
            let v = Arc::new(v);
            if !ctx.state.authorizer.identities.still_valid(&v) {
                return Err(no_session(&ctx.params));
            }
            let until = identity::now() + crate::sessions::LOCAL_TTL.as_secs();
            ctx.state.auth.bind_until(username, hash, Arc::clone(&v), until);
            Ok((hash, v))
        }
        Ok(None) => Err(no_session(&ctx.params)),
        Err(e) => Err(Outcome::Deny(format!(
            "no session for username {} on this replica, and {e}",
            crate::short(username_label(&ctx.params))
        ))),
    }
}

/// The identity a call speaks for: its token, else the session of its (proven) username.
async fn who(ctx: &Ctx<'_>) -> Result<(TokenHash, Arc<Verified>), Outcome> {
    match ctx.verified_token().await? {
        Some((hash, v, _)) => Ok((hash, v)),
        None => session(ctx).await,
    }
}

async fn superuser(ctx: &Ctx<'_>) -> Outcome {
    let subject = match ctx.certificate_client() {
        Ok(Some(s)) => Ok(s),
        // go-auth's http backend sends only the username here: found through its session,
        // proven at the user call to belong to the token.
        Ok(None) => who(ctx).await.and_then(|(hash, v)| ctx.subject(hash, &v)),
        Err(o) => Err(o),
    };
    match subject {
        Ok(s) => decided(
            ctx.record("superuser", Some(&s)),
            "superuser",
            &ctx.state.authorizer.superuser(&ctx.generation, &s),
            ctx,
        ),
        Err(o) => {
            audit(ctx, "superuser", None, "superuser", &o);
            o
        }
    }
}

/// Writes the record of what the policy decided, and answers it.
fn decided(record: DecisionRecord<'_>, action: &str, d: &Decision, ctx: &Ctx<'_>) -> Outcome {
    ctx.state.audit.write(&record.decided(action, d));
    if d.allow { Outcome::Allow(String::new()) } else { Outcome::Deny(d.reason.clone()) }
}

/// [`decided`] for an ACL check of `subject`: a granted subscription with a wildcard filter
/// is watched (counted, and its record says so).
fn acl_decided(ctx: &Ctx<'_>, subject: &Subject, action: Action, d: &Decision) -> Outcome {
    let mut record = ctx.record("acl", Some(subject));
    if d.allow
        && action == Action::Subscribe
        && ctx.state.authorizer.watch_subscription(subject, record.topic)
    {
        record = record.watched("wildcard");
    }
    decided(record, action_name(action), d, ctx)
}

async fn acl(ctx: &Ctx<'_>) -> Outcome {
    let p = &ctx.params;
    let Some(topic) = p.topic.as_deref() else { return Outcome::Bad("missing 'topic'".into()) };
    let mut actions = match p.acc.as_deref().map(parse_acc) {
        None => return Outcome::Bad("missing 'acc'".into()),
        Some(Err(e)) => return Outcome::Bad(e),
        Some(Ok(a)) => a.peekable(),
    };
    let Some(&first) = actions.peek() else { return Outcome::Bad("missing 'acc'".into()) };
    let authorizer = &ctx.state.authorizer;
    // Denied before the policy is asked: counted as a denial of the call's first action.
    let refused = |o: Outcome| {
        authorizer.metrics.decided(first, false, None);
        audit(ctx, "acl", None, action_name(first), &o);
        o
    };
    match ctx.certificate_client() {
        Ok(Some(subject)) => return certificate_acl(ctx, &subject, topic, actions),
        Ok(None) => {}
        Err(o) => return refused(o),
    }
    let auth = &ctx.state.auth;
    let token = match find_token(ctx.headers, p) {
        Err(e) => return Outcome::Bad(e.0),
        Ok(t) => t.map(|(t, _)| t),
    };
    // The identity: the token's hash, or that of the session of the (proven) username.
    let username = p.username.as_deref().unwrap_or("");
    let (mut holder, mut found) = match token {
        Some(t) => (crate::auth::token_hash(t), None),
        None => match auth.session_token(username) {
            Some(hash) => (hash, None),
            None => match session(ctx).await {
                Ok((hash, v)) => (hash, Some((hash, v))),
                Err(o) => return refused(o),
            },
        },
    };
    // Decisions are keyed by the username as given (a JWT username counts as none): whether it
    // names the subject is a function of the token, so the key stays exact.
    let given = if p.username_is_token { "" } else { username };
    let clientid = p.clientid.as_deref().unwrap_or("");
    let generation = &ctx.generation;
    // This worker's prepared identity: its residual allows most publishes and reads at once.
    let mut near = auth.prepared_identity(generation.id, &holder, clientid, given);
    let mut outcome = Outcome::Deny("no action".into());
    for action in actions {
        if let Some(identity) = &near
            && let Some(prepared) = &identity.prepared
            && let Some(rule) = authorizer.allowed_as_prepared(generation, prepared, action, topic)
        {
            outcome = allowed_at_once(ctx, &identity.subject, action, topic, rule);
            continue;
        }
        let key = DecisionKey::new(generation.id, holder, action, topic, clientid, given);
        let hit = authorizer.lookup(action, &key, &mut SharedDecisions(auth), |d| {
            acl_decided(ctx, &d.subject, action, &d.decision)
        });
        outcome = match hit {
            Ok(o) => o,
            Err(pending) => {
                let (identity, key) = match &near {
                    // Prepared only for what a residual answers (publish, read), and only by a
                    // generation that decides natively: most misses then prepare nothing.
                    Some(identity)
                        if identity.prepared.is_some()
                            || action == Action::Subscribe
                            || !generation.decides_natively() =>
                    {
                        (Arc::clone(identity), key)
                    }
                    Some(identity) => {
                        let prepared = Arc::new(PreparedIdentity {
                            prepared: generation.prepare(&identity.subject, clientid, &identity.username),
                            username: identity.username.clone(),
                            verified: Arc::clone(&identity.verified),
                            subject: Arc::clone(&identity.subject),
                        });
                        auth.keep_prepared_identity(generation.id, holder, clientid, given, &prepared);
                        near = Some(Arc::clone(&prepared));
                        (prepared, key)
                    }
                    None => {
                        // Not decided yet: verify (or find verified) and map the token as usual.
                        let verified = match (found.take(), token) {
                            (Some(hv), _) => Ok(hv),
                            (None, Some(t)) => verify(ctx.state, t).await,
                            (None, None) => session(ctx).await,
                        };
                        let (hash, verified, subject) = match verified
                            .and_then(|(hash, v)| Ok((hash, Arc::clone(&v), ctx.subject(hash, &v)?)))
                        {
                            Ok(t) => t,
                            Err(o) => {
                                authorizer.refused(pending);
                                audit(ctx, "acl", None, action_name(action), &o);
                                return o;
                            }
                        };
                        // The username was bound anew since the key was made: decide, and
                        // remember, for the token bound now.
                        let key = if holder != hash {
                            holder = hash;
                            DecisionKey::new(generation.id, holder, action, topic, clientid, given)
                        } else {
                            key
                        };
                        // `${username}` is only ever a name proven to belong to the subject.
                        let username = authorizer.proven_username(generation, given, &subject, &verified);
                        let identity = Arc::new(PreparedIdentity {
                            prepared: (action != Action::Subscribe)
                                .then(|| generation.prepare(&subject, clientid, username))
                                .flatten(),
                            username: username.to_string(),
                            verified,
                            subject,
                        });
                        auth.keep_prepared_identity(generation.id, holder, clientid, given, &identity);
                        near = Some(Arc::clone(&identity));
                        (identity, key)
                    }
                };
                let request = Request {
                    subject: (*identity.subject).clone(),
                    topic: topic.to_string(),
                    action,
                    clientid: clientid.to_string(),
                    username: identity.username.clone(),
                    qos: None,
                    retain: None,
                };
                let mut cache = DecisionsFor {
                    auth,
                    verified: &identity.verified,
                    subject: &identity.subject,
                    prepared: identity.prepared.as_ref(),
                };
                let d = authorizer.decide(pending, generation, &request, key, &mut cache);
                acl_decided(ctx, &d.subject, action, &d.decision)
            }
        };
        if matches!(outcome, Outcome::Deny(_)) {
            break;
        }
    }
    outcome
}

/// An allow the prepared identity's residual answered: its decision (and reason) is made only
/// for an audit line.
fn allowed_at_once(ctx: &Ctx<'_>, subject: &Subject, action: Action, topic: &str, rule: usize) -> Outcome {
    if ctx.state.audit.enabled()
        && let Some(d) = ctx.generation.allowed_by(rule, action, topic)
    {
        return acl_decided(ctx, subject, action, &d);
    }
    Outcome::Allow(String::new())
}

/// An ACL call for a client known by its certificate: each action decided by the module
/// (not cached: go-auth's own cache is the place for that), `${username}` the certificate's
/// name.
fn certificate_acl(
    ctx: &Ctx<'_>,
    subject: &Subject,
    topic: &str,
    actions: impl Iterator<Item = Action>,
) -> Outcome {
    let mut outcome = Outcome::Deny("no action".into());
    for action in actions {
        let request = Request {
            subject: subject.clone(),
            topic: topic.to_string(),
            action,
            clientid: ctx.params.clientid.as_deref().unwrap_or("").to_string(),
            username: subject.id.clone(),
            qos: None,
            retain: None,
        };
        outcome = ctx
            .state
            .authorizer
            .check(&ctx.generation, &request, (), &mut NoCache, |d, _| acl_decided(ctx, subject, action, d));
        if matches!(outcome, Outcome::Deny(_)) {
            break;
        }
    }
    outcome
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    User,
    Superuser,
    Acl,
}

impl Endpoint {
    pub const ALL: [Endpoint; 3] = [Endpoint::User, Endpoint::Superuser, Endpoint::Acl];

    fn label(self) -> &'static str {
        crate::reqmetrics::ENDPOINTS[self as usize]
    }
}

/// Counts a request and its latency (`reqmetrics`).
fn record(e: Endpoint, o: &Outcome, took: std::time::Duration) {
    let outcome = match o {
        Outcome::Allow(_) => 0,
        Outcome::Deny(_) => 1,
        Outcome::Bad(_) | Outcome::TooLarge(_) => 2,
    };
    crate::reqmetrics::request(e as usize, outcome, took);
}

/// The request body, within [`BODY_LIMIT`] bytes and [`REQUEST_TIMEOUT`]. A body that has
/// arrived with its headers (go-auth's always have) is taken as it is: no timer, no copy.
async fn read_body(headers: &HeaderMap, body: Incoming) -> Result<Bytes, Outcome> {
    use std::task::Poll;
    let declared =
        headers.get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        return Err(too_large());
    }
    let mut read = std::pin::pin!(collect(body));
    match std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await {
        Poll::Ready(r) => r,
        Poll::Pending => match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
            Ok(r) => r,
            Err(_) => Err(Outcome::Bad(format!(
                "the request body did not arrive within {} s",
                REQUEST_TIMEOUT.as_secs()
            ))),
        },
    }
}

fn too_large() -> Outcome {
    Outcome::TooLarge(format!("the request body is larger than {BODY_LIMIT} bytes"))
}

/// The body's data frames, joined (a body in one frame is not copied).
async fn collect(mut body: Incoming) -> Result<Bytes, Outcome> {
    use http_body_util::BodyExt;
    let mut first: Option<Bytes> = None;
    let mut joined: Vec<u8> = Vec::new();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Outcome::Bad(format!("the request body could not be read: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        len += data.len();
        if len > BODY_LIMIT {
            return Err(too_large());
        }
        match first.take() {
            None if joined.is_empty() => first = Some(data),
            earlier => {
                joined.extend_from_slice(earlier.as_deref().unwrap_or_default());
                joined.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| joined.into()))
}

/// Verifies a token (or finds it verified); a key refresh it waits for is bounded by
/// [`REQUEST_TIMEOUT`], well beyond go-auth's own 5 s.
async fn verify(state: &AppState, token: &str) -> Result<(TokenHash, Arc<Verified>), Outcome> {
    match Box::pin(tokio::time::timeout(REQUEST_TIMEOUT, state.authorizer.identities.verify(token))).await {
        Ok(r) => r.map_err(|e| Outcome::Deny(e.into())),
        Err(_) => Err(Outcome::Deny(format!(
            "token refused: its signing key could not be fetched within {} s",
            REQUEST_TIMEOUT.as_secs()
        ))),
    }
}

/// One handler for the three endpoints: parse, decide, answer, count.
///
/// It takes the request whole: extracting headers and URI separately would copy them.
pub async fn handle(
    endpoint: Endpoint,
    state: &AppState,
    request: axum::http::Request<Incoming>,
) -> Response<Out> {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let outcome = match read_body(&parts.headers, body).await {
        Err(o) => o,
        Ok(b) => match parse_params(&parts.headers, parts.uri.query(), &b) {
            Err(e) => Outcome::Bad(e.0),
            Ok(params) => {
                let ctx = Ctx { state, generation: state.generation(), headers: &parts.headers, params };
                match endpoint {
                    Endpoint::User => Box::pin(user(&ctx)).await,
                    Endpoint::Superuser => Box::pin(superuser(&ctx)).await,
                    Endpoint::Acl => acl(&ctx).await,
                }
            }
        },
    };
    if let Outcome::Bad(r) | Outcome::TooLarge(r) = &outcome {
        let record = DecisionRecord::about(endpoint.label(), None, "", "", "");
        state.audit.write(&DecisionRecord { decision: "bad_request", reason: r, ..record });
    }
    record(endpoint, &outcome, started.elapsed());
    outcome.into_response(state.response_mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acc_is_a_bit_mask_of_known_bits() {
        let actions = |acc| parse_acc(acc).unwrap().collect::<Vec<_>>();
        assert_eq!(actions("4"), [Action::Subscribe]);
        assert_eq!(actions("3"), [Action::Publish, Action::Read]);
        for bad in ["0", "8", "9", "-1", "x", ""] {
            assert!(parse_acc(bad).is_err(), "{bad}");
        }
    }
}
