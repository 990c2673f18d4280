//! The symbols Mosquitto calls, and one trampoline per event: each turns the broker's
//! pointers into safe values, calls [`Plugin`], and turns the answer into a return code.
//!
//! Every entry point runs under `catch_unwind`: since Rust 1.81 a panic that reaches an
//! `extern "C"` boundary aborts the process, which here would be the broker. A fault in the
//! plugin or in the policy module instead denies that one request (CONNACK "not
//! authorised", an ACL denial) and is logged.

// The FFI edge: one of the two files where `unsafe` is allowed (see the workspace lints).
#![allow(unsafe_code)]

use std::ffi::{c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tracing::Level;

use crate::broker::Broker;
use crate::client::{BrokerClient, CertificateNames, ClientKey};
use crate::logging;
use crate::options::Options;
use crate::plugin::{AclMessage, Admission, Plugin};
use crate::sys::{self, Callback, Functions, MosquittoOpt, PluginId, RealBroker};

/// What `mosquitto_plugin_init` hands the broker as userdata.
struct Instance {
    id: *mut PluginId,
    functions: Functions,
    plugin: Plugin,
    /// The broker has Mosquitto 2.1's connect and offline events (registered).
    sessions_reported: bool,
}

/// A client as the broker's accessor functions describe it, during one event.
struct EventClient<'a> {
    functions: &'a Functions,
    client: *mut sys::Mosquitto,
}

impl EventClient<'_> {
    fn text(
        &self,
        f: unsafe extern "C" fn(*const sys::Mosquitto) -> *const std::ffi::c_char,
    ) -> Option<&[u8]> {
        // SAFETY: the client lives for the duration of the event, and the strings the broker
        // returns for it as long as nothing changes them (the plugin only reads them).
        unsafe { sys::bytes(f(self.client)) }
    }
}

impl BrokerClient for EventClient<'_> {
    fn key(&self) -> ClientKey {
        ClientKey(self.client as usize)
    }
    fn id(&self) -> &[u8] {
        self.text(self.functions.client_id).unwrap_or_default()
    }
    fn username(&self) -> Option<&[u8]> {
        self.text(self.functions.client_username)
    }
    fn address(&self) -> &[u8] {
        self.text(self.functions.client_address).unwrap_or_default()
    }
    fn protocol_version(&self) -> i32 {
        // SAFETY: the event's client.
        unsafe { (self.functions.client_protocol_version)(self.client) }
    }
    fn clean_start(&self) -> bool {
        // SAFETY: the event's client.
        unsafe { (self.functions.client_clean_session)(self.client) }
    }
    fn has_certificate(&self) -> bool {
        let Some(tls) = &self.functions.tls else { return false };
        // SAFETY: the event's client; the reference the broker hands out is released here.
        unsafe {
            let cert = (self.functions.client_certificate)(self.client);
            if cert.is_null() {
                return false;
            }
            tls.release(cert);
            true
        }
    }
    fn certificate_names(&self) -> Option<CertificateNames> {
        let tls = self.functions.tls.as_ref()?;
        // SAFETY: the event's client; the certificate is read, then released once.
        unsafe {
            let cert = (self.functions.client_certificate)(self.client);
            if cert.is_null() {
                return None;
            }
            let names = tls.names(cert);
            tls.release(cert);
            Some(names)
        }
    }
    fn set_username(&self, name: &str) -> bool {
        let Ok(name) = std::ffi::CString::new(name) else { return false };
        // SAFETY: the event's client, a NUL-terminated name the broker copies.
        unsafe { (self.functions.set_username)(self.client, name.as_ptr()) == sys::MOSQ_ERR_SUCCESS }
    }
    #[inline]
    fn is_named(&self, id: &[u8], username: Option<&[u8]>) -> bool {
        let (functions, client) = (self.functions, self.client);
        // SAFETY: as in `text`.
        unsafe {
            sys::names_are(
                (functions.client_id)(client),
                || (functions.client_username)(client),
                id,
                username,
            )
        }
    }
}

/// Asked of Mosquitto 2.1 between ticks, in milliseconds.
const TICK_EVERY_MS: std::ffi::c_long = 100;

/// Plugin instances alive (one per listener with `per_listener_settings true`).
static INSTANCES: AtomicUsize = AtomicUsize::new(0);

const EVENTS: [(c_int, Callback); 6] = [
    (sys::MOSQ_EVT_BASIC_AUTH, on_basic_auth),
    (sys::MOSQ_EVT_EXT_AUTH_START, on_ext_auth_start),
    (sys::MOSQ_EVT_ACL_CHECK, on_acl_check),
    (sys::MOSQ_EVT_DISCONNECT, on_disconnect),
    (sys::MOSQ_EVT_TICK, on_tick),
    (sys::MOSQ_EVT_RELOAD, on_reload),
];

/// Mosquitto 2.1's session events, registered when the broker has them (2.0 answers "not
/// supported"): with them the plugin knows every CONNECT, its own or not.
const SESSION_EVENTS: [(c_int, Callback); 2] =
    [(sys::MOSQ_EVT_CONNECT, on_connect), (sys::MOSQ_EVT_CLIENT_OFFLINE, on_client_offline)];

/// Runs `f`; a panic becomes `on_panic` and a log line.
fn guard(what: &str, on_panic: c_int, f: impl FnOnce() -> c_int) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(rc) => rc,
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            // Logging itself must not unwind out of here either.
            let _ = catch_unwind(|| {
                tracing::error!("a fault in the plugin ({what}): {why}; that request is denied")
            });
            on_panic
        }
    }
}

/// # Safety
/// `userdata` is what `mosquitto_plugin_init` returned: a live `Instance` (or NULL).
unsafe fn instance<'a>(userdata: *mut c_void) -> Option<&'a Instance> {
    // SAFETY: the caller's contract; the instance lives until cleanup, after which the broker
    // calls none of its callbacks.
    unsafe { userdata.cast::<Instance>().as_ref() }
}

/// # Safety
/// Called by Mosquitto with `count` supported API versions at `versions`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mosquitto_plugin_version(count: c_int, versions: *const c_int) -> c_int {
    guard("version", -1, || {
        if versions.is_null() || count <= 0 {
            return -1;
        }
        // SAFETY: the broker passes `count` supported versions.
        let offered = unsafe { std::slice::from_raw_parts(versions, count as usize) };
        if offered.contains(&sys::PLUGIN_VERSION) { sys::PLUGIN_VERSION } else { -1 }
    })
}

/// # Safety
/// Called by Mosquitto with its plugin identifier, a place for our userdata, and
/// `option_count` options.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mosquitto_plugin_init(
    identifier: *mut PluginId,
    userdata: *mut *mut c_void,
    options: *mut MosquittoOpt,
    option_count: c_int,
) -> c_int {
    guard("start", sys::MOSQ_ERR_UNKNOWN, || {
        let functions = match Functions::resolve() {
            Ok(f) => f,
            Err(e) => {
                eprintln!("mqtt-policy: {e}");
                return sys::MOSQ_ERR_UNKNOWN;
            }
        };
        let broker = Arc::new(RealBroker(functions));
        let fail = |rc: c_int, message: &str| {
            broker.log(Level::ERROR, &format!("mqtt-policy: cannot start: {message}"));
            rc
        };
        // SAFETY: the broker passes `option_count` options.
        let pairs = match unsafe { read_options(options, option_count) } {
            Ok(p) => p,
            Err(e) => return fail(sys::MOSQ_ERR_INVAL, &e),
        };
        let options = match Options::parse(&pairs) {
            Ok(o) => o,
            Err(e) => return fail(sys::MOSQ_ERR_INVAL, &e.0),
        };
        logging::start(Arc::clone(&broker) as Arc<dyn Broker>, options.log_level);
        if options.keys.certificate_subject_type().is_some() && functions.tls.is_none() {
            return fail(
                sys::MOSQ_ERR_INVAL,
                "plugin_opt_certificate_subject_type: this broker has no OpenSSL functions (built without \
                 TLS?), so certificates cannot be read",
            );
        }
        let plugin = match Plugin::start(options, broker.clone()) {
            Ok(p) => p,
            Err(e) => return fail(sys::MOSQ_ERR_UNKNOWN, &format!("{e:#}")),
        };
        let state =
            Box::into_raw(Box::new(Instance { id: identifier, functions, plugin, sessions_reported: false }));
        for (i, (event, callback)) in EVENTS.iter().enumerate() {
            // SAFETY: registering our callbacks with our identifier; `state` outlives them
            // (cleanup unregisters before freeing it).
            let rc = unsafe {
                (functions.callback_register)(identifier, *event, *callback, std::ptr::null(), state.cast())
            };
            if rc != sys::MOSQ_ERR_SUCCESS {
                // SAFETY: the ones registered so far, then the state nobody else holds.
                unsafe {
                    for (event, callback) in &EVENTS[..i] {
                        (functions.callback_unregister)(identifier, *event, *callback, std::ptr::null());
                    }
                    drop(Box::from_raw(state));
                }
                return fail(
                    sys::MOSQ_ERR_UNKNOWN,
                    &format!("registering for broker event {event} failed (error {rc})"),
                );
            }
        }
        // Both of 2.1's session events, or neither: one without the other would misread the
        // disconnect event.
        // SAFETY: as above; `state` outlives the callbacks.
        let registered: Vec<bool> = SESSION_EVENTS
            .iter()
            .map(|(event, callback)| unsafe {
                (functions.callback_register)(identifier, *event, *callback, std::ptr::null(), state.cast())
                    == sys::MOSQ_ERR_SUCCESS
            })
            .collect();
        let sessions_reported = registered.iter().all(|r| *r);
        if !sessions_reported {
            for ((event, callback), _) in SESSION_EVENTS.iter().zip(&registered).filter(|(_, r)| **r) {
                // SAFETY: unregistering what was just registered.
                unsafe { (functions.callback_unregister)(identifier, *event, *callback, std::ptr::null()) };
            }
        }
        // SAFETY: `state` is ours until the broker holds it as userdata.
        unsafe { (*state).sessions_reported = sessions_reported };
        tracing::info!(
            "client sessions: {}",
            if sessions_reported {
                "Mosquitto 2.1's connect and offline events tell every CONNECT apart"
            } else {
                "this broker has no connect event (Mosquitto 2.0): identities are bound to what the broker says about each client"
            }
        );
        INSTANCES.fetch_add(1, Ordering::SeqCst);
        // SAFETY: the broker gives a valid place for our userdata.
        unsafe { *userdata = state.cast() };
        sys::MOSQ_ERR_SUCCESS
    })
}

/// # Safety
/// `userdata` is what `mosquitto_plugin_init` returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mosquitto_plugin_cleanup(
    userdata: *mut c_void,
    _options: *mut MosquittoOpt,
    _option_count: c_int,
) -> c_int {
    guard("cleanup", sys::MOSQ_ERR_SUCCESS, || {
        if userdata.is_null() {
            return sys::MOSQ_ERR_SUCCESS;
        }
        // SAFETY: init made it with Box::into_raw; the broker calls cleanup once.
        let state = unsafe { Box::from_raw(userdata.cast::<Instance>()) };
        let session_events: &[(c_int, Callback)] =
            if state.sessions_reported { &SESSION_EVENTS } else { &[] };
        for (event, callback) in EVENTS.iter().chain(session_events) {
            // SAFETY: unregistering what init registered.
            unsafe { (state.functions.callback_unregister)(state.id, *event, *callback, std::ptr::null()) };
        }
        tracing::info!("stopping");
        // Joins the plugin's threads: nothing of it may run once the library is unloaded.
        drop(state);
        if INSTANCES.fetch_sub(1, Ordering::SeqCst) == 1 {
            logging::stop();
        }
        sys::MOSQ_ERR_SUCCESS
    })
}

/// # Safety
/// `options` points to `count` entries whose keys and values are NULL or C strings.
unsafe fn read_options(options: *const MosquittoOpt, count: c_int) -> Result<Vec<(String, String)>, String> {
    if options.is_null() || count <= 0 {
        return Ok(Vec::new());
    }
    // SAFETY: the caller's contract.
    let entries = unsafe { std::slice::from_raw_parts(options, count as usize) };
    entries
        .iter()
        .map(|o| {
            // SAFETY: the caller's contract.
            let (key, value) = unsafe { (sys::bytes(o.key), sys::bytes(o.value)) };
            let key = String::from_utf8(key.unwrap_or_default().to_vec())
                .map_err(|_| "an option name is not UTF-8".to_string())?;
            let value = String::from_utf8(value.unwrap_or_default().to_vec())
                .map_err(|_| format!("plugin_opt_{key}: the value is not UTF-8"))?;
            Ok((key, value))
        })
        .collect()
}

unsafe extern "C" fn on_basic_auth(_event: c_int, data: *mut c_void, userdata: *mut c_void) -> c_int {
    guard("CONNECT", sys::MOSQ_ERR_AUTH, || {
        // SAFETY: registered with an Instance; the broker passes its basic-auth event.
        let (Some(inst), Some(ev)) =
            (unsafe { instance(userdata) }, unsafe { data.cast::<sys::EvtBasicAuth>().as_ref() })
        else {
            return sys::MOSQ_ERR_AUTH;
        };
        // SAFETY: the username and password live for the duration of the event.
        let (username, password) = unsafe { (sys::bytes(ev.username), sys::bytes(ev.password)) };
        let client = EventClient { functions: &inst.functions, client: ev.client };
        answer(inst.plugin.authenticate(&client, username, password))
    })
}

/// An admission as the broker's return code (a rename was applied by the plugin).
fn answer(admission: Admission) -> c_int {
    match admission {
        Admission::Refused => sys::MOSQ_ERR_AUTH,
        Admission::NotOurs => sys::MOSQ_ERR_PLUGIN_DEFER,
        Admission::Admitted { .. } => sys::MOSQ_ERR_SUCCESS,
    }
}

/// MQTT 5 enhanced authentication: at CONNECT, and again for each re-authentication (AUTH
/// with reason 0x19). No data goes back to the client (`data_out` stays NULL).
unsafe extern "C" fn on_ext_auth_start(_event: c_int, data: *mut c_void, userdata: *mut c_void) -> c_int {
    guard("enhanced authentication", sys::MOSQ_ERR_AUTH, || {
        // SAFETY: registered with an Instance; the broker passes its extended-auth event.
        let (Some(inst), Some(ev)) =
            (unsafe { instance(userdata) }, unsafe { data.cast::<sys::EvtExtendedAuth>().as_ref() })
        else {
            return sys::MOSQ_ERR_AUTH;
        };
        // SAFETY: the method and `data_in` (`data_in_len` bytes) live for the duration of the
        // event.
        let (method, token) = unsafe {
            (
                sys::bytes(ev.auth_method).unwrap_or_default(),
                (!ev.data_in.is_null()).then(|| {
                    std::slice::from_raw_parts(ev.data_in.cast::<u8>(), usize::from(ev.data_in_len))
                }),
            )
        };
        let client = EventClient { functions: &inst.functions, client: ev.client };
        let username = client.username();
        answer(inst.plugin.authenticate_ext(&client, method, token, username))
    })
}

unsafe extern "C" fn on_acl_check(_event: c_int, data: *mut c_void, userdata: *mut c_void) -> c_int {
    guard("ACL check", sys::MOSQ_ERR_ACL_DENIED, || {
        // SAFETY: registered with an Instance; the broker passes its ACL event.
        let (Some(inst), Some(ev)) =
            (unsafe { instance(userdata) }, unsafe { data.cast::<sys::EvtAclCheck>().as_ref() })
        else {
            return sys::MOSQ_ERR_ACL_DENIED;
        };
        // SAFETY: the topic lives for the duration of the event.
        let topic = unsafe { sys::bytes(ev.topic) }.unwrap_or_default();
        let client = EventClient { functions: &inst.functions, client: ev.client };
        let message = AclMessage { qos: ev.qos, retain: ev.retain, payload_len: ev.payloadlen };
        if inst.plugin.check(&client, ev.access, topic, message) {
            sys::MOSQ_ERR_SUCCESS
        } else {
            sys::MOSQ_ERR_ACL_DENIED
        }
    })
}

unsafe extern "C" fn on_disconnect(_event: c_int, data: *mut c_void, userdata: *mut c_void) -> c_int {
    guard("disconnect", sys::MOSQ_ERR_SUCCESS, || {
        // SAFETY: registered with an Instance; the broker passes its disconnect event.
        if let (Some(inst), Some(ev)) =
            (unsafe { instance(userdata) }, unsafe { data.cast::<sys::EvtDisconnect>().as_ref() })
        {
            let key = ClientKey(ev.client as usize);
            // On 2.1 the disconnect event means the session ends (an offline one is reported
            // as such); on 2.0 it is every disconnect.
            if inst.sessions_reported { inst.plugin.session_ended(key) } else { inst.plugin.disconnect(key) }
        }
        sys::MOSQ_ERR_SUCCESS
    })
}

/// Mosquitto 2.1: a client finished connecting.
unsafe extern "C" fn on_connect(_event: c_int, data: *mut c_void, userdata: *mut c_void) -> c_int {
    guard("connect", sys::MOSQ_ERR_SUCCESS, || {
        // SAFETY: registered with an Instance; the broker passes its connect event.
        if let (Some(inst), Some(ev)) =
            (unsafe { instance(userdata) }, unsafe { data.cast::<sys::EvtConnect>().as_ref() })
        {
            inst.plugin.connected(&EventClient { functions: &inst.functions, client: ev.client });
        }
        sys::MOSQ_ERR_SUCCESS
    })
}

/// Mosquitto 2.1: a client went offline; its session stays.
unsafe extern "C" fn on_client_offline(_event: c_int, data: *mut c_void, userdata: *mut c_void) -> c_int {
    guard("offline", sys::MOSQ_ERR_SUCCESS, || {
        // SAFETY: registered with an Instance; the offline event has the disconnect event's
        // layout.
        if let (Some(inst), Some(ev)) =
            (unsafe { instance(userdata) }, unsafe { data.cast::<sys::EvtDisconnect>().as_ref() })
        {
            inst.plugin.offline(ClientKey(ev.client as usize));
        }
        sys::MOSQ_ERR_SUCCESS
    })
}

unsafe extern "C" fn on_tick(_event: c_int, data: *mut c_void, userdata: *mut c_void) -> c_int {
    guard("tick", sys::MOSQ_ERR_SUCCESS, || {
        // SAFETY: the broker passes its tick event. Mosquitto 2.1 reads this field (`next_ms`)
        // as when to tick us next (else every loop); 2.0 ticks every loop (≤ 100 ms) anyway.
        if let Some(ev) = unsafe { data.cast::<sys::EvtTick>().as_mut() } {
            ev.next_ns = TICK_EVERY_MS;
        }
        // SAFETY: registered with an Instance.
        if let Some(inst) = unsafe { instance(userdata) } {
            inst.plugin.tick();
        }
        sys::MOSQ_ERR_SUCCESS
    })
}

unsafe extern "C" fn on_reload(_event: c_int, _data: *mut c_void, userdata: *mut c_void) -> c_int {
    guard("reload", sys::MOSQ_ERR_SUCCESS, || {
        // SAFETY: registered with an Instance. (2.0.11 passes no options here: we keep ours.)
        if let Some(inst) = unsafe { instance(userdata) } {
            inst.plugin.reload();
        }
        sys::MOSQ_ERR_SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_the_denial_it_stands_for() {
        assert_eq!(guard("test", sys::MOSQ_ERR_ACL_DENIED, || panic!("boom")), sys::MOSQ_ERR_ACL_DENIED);
        assert_eq!(
            guard("test", sys::MOSQ_ERR_AUTH, || panic!("{}", String::from("boom"))),
            sys::MOSQ_ERR_AUTH
        );
        assert_eq!(guard("test", sys::MOSQ_ERR_AUTH, || sys::MOSQ_ERR_SUCCESS), sys::MOSQ_ERR_SUCCESS);
    }

    #[test]
    fn only_plugin_api_version_5_is_spoken() {
        // SAFETY: valid slices of versions.
        unsafe {
            assert_eq!(mosquitto_plugin_version(4, [5, 4, 3, 2].as_ptr()), 5);
            assert_eq!(mosquitto_plugin_version(2, [4, 3].as_ptr()), -1);
            assert_eq!(mosquitto_plugin_version(0, std::ptr::null()), -1);
        }
    }
}
