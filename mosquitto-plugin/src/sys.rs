//! Mosquitto's C interface, declared by hand: plugin API version 5 as `mosquitto_broker.h`,
//! `mosquitto_plugin.h` and `mosquitto.h` of Mosquitto 2.0 define it (2.1 keeps these
//! layouts). Only what the plugin uses.
//!
//! The broker's functions live in the `mosquitto` executable, not in a library: they are
//! looked up by name when the plugin starts ([`Functions::resolve`]), so the crate links
//! without them (its tests call the safe code with a stand-in broker) and a broker that lacks
//! one is told which, instead of failing to load the library.

use std::ffi::{CStr, CString, c_char, c_int, c_long, c_void};

use tracing::Level;

use crate::broker::Broker;

pub const MOSQ_ERR_SUCCESS: c_int = 0;
pub const MOSQ_ERR_INVAL: c_int = 3;
pub const MOSQ_ERR_AUTH: c_int = 11;
pub const MOSQ_ERR_ACL_DENIED: c_int = 12;
pub const MOSQ_ERR_UNKNOWN: c_int = 13;
/// Another plugin (or the broker) decides: an enhanced-authentication method not ours.
pub const MOSQ_ERR_PLUGIN_DEFER: c_int = 17;

pub const MOSQ_EVT_RELOAD: c_int = 1;
pub const MOSQ_EVT_ACL_CHECK: c_int = 2;
pub const MOSQ_EVT_BASIC_AUTH: c_int = 3;
pub const MOSQ_EVT_EXT_AUTH_START: c_int = 4;
pub const MOSQ_EVT_TICK: c_int = 9;
pub const MOSQ_EVT_DISCONNECT: c_int = 10;

pub const MOSQ_LOG_INFO: c_int = 1 << 0;
pub const MOSQ_LOG_WARNING: c_int = 1 << 2;
pub const MOSQ_LOG_ERR: c_int = 1 << 3;
pub const MOSQ_LOG_DEBUG: c_int = 1 << 4;

/// The plugin API version this plugin speaks.
pub const PLUGIN_VERSION: c_int = 5;

/// `struct mosquitto` (a client), opaque.
#[repr(C)]
pub struct Mosquitto {
    _private: [u8; 0],
}

/// `mosquitto_plugin_id_t`, opaque.
#[repr(C)]
pub struct PluginId {
    _private: [u8; 0],
}

/// `struct mosquitto_opt`: one `plugin_opt_<key> <value>` line.
#[repr(C)]
pub struct MosquittoOpt {
    pub key: *mut c_char,
    pub value: *mut c_char,
}

/// `struct mosquitto_evt_reload`.
#[repr(C)]
pub struct EvtReload {
    pub future: *mut c_void,
    pub options: *mut MosquittoOpt,
    pub option_count: c_int,
    pub future2: [*mut c_void; 4],
}

/// `struct mosquitto_evt_acl_check`.
#[repr(C)]
pub struct EvtAclCheck {
    pub future: *mut c_void,
    pub client: *mut Mosquitto,
    pub topic: *const c_char,
    pub payload: *const c_void,
    pub properties: *mut c_void,
    pub access: c_int,
    pub payloadlen: u32,
    pub qos: u8,
    pub retain: bool,
    pub future2: [*mut c_void; 4],
}

/// `struct mosquitto_evt_basic_auth`. Either string may be NULL (absent, or zero-length).
#[repr(C)]
pub struct EvtBasicAuth {
    pub future: *mut c_void,
    pub client: *mut Mosquitto,
    pub username: *mut c_char,
    pub password: *mut c_char,
    pub future2: [*mut c_void; 4],
}

/// `struct mosquitto_evt_extended_auth`: MQTT 5 enhanced authentication, at CONNECT and at
/// re-authentication (an AUTH packet with reason 0x19 fires the start event again). `data_in`
/// may be NULL (length 0) and lives only for the event; `data_out`, when set, must come from
/// the C allocator (the broker frees it).
#[repr(C)]
pub struct EvtExtendedAuth {
    pub future: *mut c_void,
    pub client: *mut Mosquitto,
    pub data_in: *const c_void,
    pub data_out: *mut c_void,
    pub data_in_len: u16,
    pub data_out_len: u16,
    pub auth_method: *const c_char,
    pub future2: [*mut c_void; 3],
}

/// `struct mosquitto_evt_tick`.
#[repr(C)]
pub struct EvtTick {
    pub future: *mut c_void,
    pub now_ns: c_long,
    pub next_ns: c_long,
    pub now_s: libc::time_t,
    pub next_s: libc::time_t,
    pub future2: [*mut c_void; 4],
}

/// `struct mosquitto_evt_disconnect`.
#[repr(C)]
pub struct EvtDisconnect {
    pub future: *mut c_void,
    pub client: *mut Mosquitto,
    pub reason: c_int,
    pub future2: [*mut c_void; 4],
}

/// `MOSQ_FUNC_generic_callback`.
pub type Callback =
    unsafe extern "C" fn(event: c_int, event_data: *mut c_void, userdata: *mut c_void) -> c_int;

type CallbackRegister =
    unsafe extern "C" fn(*mut PluginId, c_int, Callback, *const c_void, *mut c_void) -> c_int;
type CallbackUnregister = unsafe extern "C" fn(*mut PluginId, c_int, Callback, *const c_void) -> c_int;
type LogPrintf = unsafe extern "C" fn(c_int, *const c_char, ...);
type ClientString = unsafe extern "C" fn(*const Mosquitto) -> *const c_char;
type SetUsername = unsafe extern "C" fn(*mut Mosquitto, *const c_char) -> c_int;
type KickByClientId = unsafe extern "C" fn(*const c_char, bool) -> c_int;
type BrokerPublishCopy = unsafe extern "C" fn(
    *const c_char,
    *const c_char,
    c_int,
    *const c_void,
    c_int,
    bool,
    *mut c_void,
) -> c_int;

/// The broker functions the plugin calls.
#[derive(Clone, Copy)]
pub struct Functions {
    pub callback_register: CallbackRegister,
    pub callback_unregister: CallbackUnregister,
    pub log_printf: LogPrintf,
    pub client_id: ClientString,
    pub client_address: ClientString,
    pub set_username: SetUsername,
    pub client_username: ClientString,
    pub kick_client_by_clientid: KickByClientId,
    pub broker_publish_copy: BrokerPublishCopy,
}

/// The address of a symbol of the running process, or why it is missing.
fn symbol(name: &CStr) -> Result<*mut c_void, String> {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only reads the loaded images.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    if p.is_null() {
        return Err(format!(
            "this broker does not export {}: the plugin needs Mosquitto 2.0 or newer",
            name.to_string_lossy()
        ));
    }
    Ok(p)
}

impl Functions {
    /// Finds the broker's functions in the running process.
    pub fn resolve() -> Result<Functions, String> {
        // SAFETY: each symbol is the broker function of that name, whose C signature (from
        // mosquitto_broker.h, 2.0 and 2.1) is the function pointer type it is turned into.
        unsafe {
            Ok(Functions {
                callback_register: std::mem::transmute::<*mut c_void, CallbackRegister>(symbol(
                    c"mosquitto_callback_register",
                )?),
                callback_unregister: std::mem::transmute::<*mut c_void, CallbackUnregister>(symbol(
                    c"mosquitto_callback_unregister",
                )?),
                log_printf: std::mem::transmute::<*mut c_void, LogPrintf>(symbol(c"mosquitto_log_printf")?),
                client_id: std::mem::transmute::<*mut c_void, ClientString>(symbol(c"mosquitto_client_id")?),
                client_address: std::mem::transmute::<*mut c_void, ClientString>(symbol(
                    c"mosquitto_client_address",
                )?),
                set_username: std::mem::transmute::<*mut c_void, SetUsername>(symbol(
                    c"mosquitto_set_username",
                )?),
                client_username: std::mem::transmute::<*mut c_void, ClientString>(symbol(
                    c"mosquitto_client_username",
                )?),
                kick_client_by_clientid: std::mem::transmute::<*mut c_void, KickByClientId>(symbol(
                    c"mosquitto_kick_client_by_clientid",
                )?),
                broker_publish_copy: std::mem::transmute::<*mut c_void, BrokerPublishCopy>(symbol(
                    c"mosquitto_broker_publish_copy",
                )?),
            })
        }
    }
}

/// A C string the broker gave, as text (lossily: client ids and addresses are for logs and
/// keys, and the broker has checked them already); NULL is empty.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string that outlives the returned value.
pub unsafe fn text<'a>(p: *const c_char) -> std::borrow::Cow<'a, str> {
    if p.is_null() {
        return std::borrow::Cow::Borrowed("");
    }
    // SAFETY: the caller's contract.
    unsafe { CStr::from_ptr(p) }.to_string_lossy()
}

/// A C string the broker gave, as bytes; NULL is `None`.
///
/// # Safety
/// As [`text`].
pub unsafe fn bytes<'a>(p: *const c_char) -> Option<&'a [u8]> {
    // SAFETY: the caller's contract.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_bytes())
}

/// The real broker, through its functions.
pub struct RealBroker(pub Functions);

impl Broker for RealBroker {
    fn log(&self, level: Level, line: &str) {
        let priority = match level {
            Level::ERROR => MOSQ_LOG_ERR,
            Level::WARN => MOSQ_LOG_WARNING,
            Level::INFO => MOSQ_LOG_INFO,
            _ => MOSQ_LOG_DEBUG,
        };
        // A NUL inside a line would cut it: show it instead.
        let Ok(line) = CString::new(line.replace('\0', "\\0")) else { return };
        // SAFETY: a "%s" format with one NUL-terminated string argument.
        unsafe { (self.0.log_printf)(priority, c"%s".as_ptr(), line.as_ptr()) }
    }

    fn kick(&self, client_id: &str, with_will: bool) -> bool {
        let Ok(id) = CString::new(client_id) else { return false };
        // SAFETY: a NUL-terminated client id the broker only reads; called on the broker thread
        // (from its tick), the only place Mosquitto allows it.
        unsafe { (self.0.kick_client_by_clientid)(id.as_ptr(), with_will) == MOSQ_ERR_SUCCESS }
    }

    fn publish_retained(&self, topic: &str, payload: &[u8]) {
        let Ok(topic) = CString::new(topic) else { return };
        let Ok(len) = c_int::try_from(payload.len()) else { return };
        // SAFETY: the broker copies the payload; topic is NUL-terminated; no properties.
        let rc = unsafe {
            (self.0.broker_publish_copy)(
                std::ptr::null(),
                topic.as_ptr(),
                len,
                payload.as_ptr().cast(),
                0,
                true,
                std::ptr::null_mut(),
            )
        };
        if rc != MOSQ_ERR_SUCCESS {
            self.log(Level::WARN, &format!("mqtt-policy: publishing {topic:?} failed (error {rc})"));
        }
    }
}
