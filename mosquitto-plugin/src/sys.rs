//! Mosquitto's C interface, declared by hand: plugin API version 5 as `mosquitto_broker.h`,
//! `mosquitto_plugin.h` and `mosquitto.h` of Mosquitto 2.0 define it (2.1 keeps these
//! layouts). Only what the plugin uses.
//!
//! The broker's functions live in the `mosquitto` executable, not in a library: they are
//! looked up by name when the plugin starts ([`Functions::resolve`]), so the crate links
//! without them (its tests call the safe code with a stand-in broker) and a broker that lacks
//! one is told which, instead of failing to load the library.

// The FFI edge: one of the two files where `unsafe` is allowed (see the workspace lints).
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_long, c_void};

use tracing::Level;

use crate::broker::{Broker, Removal};

pub const MOSQ_ERR_SUCCESS: c_int = 0;
pub const MOSQ_ERR_INVAL: c_int = 3;
pub const MOSQ_ERR_AUTH: c_int = 11;
pub const MOSQ_ERR_ACL_DENIED: c_int = 12;
pub const MOSQ_ERR_NOT_FOUND: c_int = 6;
pub const MOSQ_ERR_NOT_SUPPORTED: c_int = 10;
pub const MOSQ_ERR_UNKNOWN: c_int = 13;
/// Another plugin (or the broker) decides: an enhanced-authentication method not ours.
pub const MOSQ_ERR_PLUGIN_DEFER: c_int = 17;

pub const MOSQ_EVT_RELOAD: c_int = 1;
pub const MOSQ_EVT_ACL_CHECK: c_int = 2;
pub const MOSQ_EVT_BASIC_AUTH: c_int = 3;
pub const MOSQ_EVT_EXT_AUTH_START: c_int = 4;
pub const MOSQ_EVT_TICK: c_int = 9;
pub const MOSQ_EVT_DISCONNECT: c_int = 10;
/// Mosquitto 2.1: a client finished connecting.
pub const MOSQ_EVT_CONNECT: c_int = 11;
/// Mosquitto 2.1: a client went offline and its session stays (its disconnect event then
/// means the session ends).
pub const MOSQ_EVT_CLIENT_OFFLINE: c_int = 28;

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

/// `struct mosquitto_evt_connect` (Mosquitto 2.1).
#[repr(C)]
pub struct EvtConnect {
    pub future: *mut c_void,
    pub client: *mut Mosquitto,
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
type ClientBool = unsafe extern "C" fn(*const Mosquitto) -> bool;
type ClientInt = unsafe extern "C" fn(*const Mosquitto) -> c_int;
type ClientPointer = unsafe extern "C" fn(*const Mosquitto) -> *mut c_void;
type SetUsername = unsafe extern "C" fn(*mut Mosquitto, *const c_char) -> c_int;
type KickByClientId = unsafe extern "C" fn(*const c_char, bool) -> c_int;
type SubscriptionDelete = unsafe extern "C" fn(*const c_char, *const c_char) -> c_int;
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
    /// Mosquitto 2.1's removal of one subscription; 2.0 has none.
    pub subscription_delete: Option<SubscriptionDelete>,
    pub broker_publish_copy: BrokerPublishCopy,
    pub client_clean_session: ClientBool,
    pub client_protocol_version: ClientInt,
    /// The client's TLS certificate (an OpenSSL `X509 *` with a reference the caller frees),
    /// or NULL.
    pub client_certificate: ClientPointer,
    /// OpenSSL's functions, when the broker has them (built with TLS).
    pub tls: Option<Tls>,
}

type X509Free = unsafe extern "C" fn(*mut c_void);
type X509GetSubjectName = unsafe extern "C" fn(*const c_void) -> *mut c_void;
type NameIndexByNid = unsafe extern "C" fn(*const c_void, c_int, c_int) -> c_int;
type NameGetEntry = unsafe extern "C" fn(*const c_void, c_int) -> *mut c_void;
type EntryGetData = unsafe extern "C" fn(*const c_void) -> *mut c_void;
type StringGet0Data = unsafe extern "C" fn(*const c_void) -> *const u8;
type StringLength = unsafe extern "C" fn(*const c_void) -> c_int;
type BioSMem = unsafe extern "C" fn() -> *const c_void;
type BioNew = unsafe extern "C" fn(*const c_void) -> *mut c_void;
type BioFree = unsafe extern "C" fn(*mut c_void) -> c_int;
type BioCtrl = unsafe extern "C" fn(*mut c_void, c_int, c_long, *mut c_void) -> c_long;
type NamePrintEx = unsafe extern "C" fn(*mut c_void, *const c_void, c_int, std::ffi::c_ulong) -> c_int;

/// `NID_commonName`.
const NID_COMMON_NAME: c_int = 13;
/// `BIO_CTRL_INFO` (what `BIO_get_mem_data` asks).
const BIO_CTRL_INFO: c_int = 3;
/// `XN_FLAG_RFC2253`: how Mosquitto prints a subject for `use_subject_as_username`.
const XN_FLAG_RFC2253: std::ffi::c_ulong = 0x0111_0317;

/// The OpenSSL functions Mosquitto itself uses to turn a client's certificate into its
/// username, so the plugin can tell whether the username is the certificate's name.
#[derive(Clone, Copy)]
pub struct Tls {
    x509_free: X509Free,
    get_subject_name: X509GetSubjectName,
    name_index_by_nid: NameIndexByNid,
    name_get_entry: NameGetEntry,
    entry_get_data: EntryGetData,
    string_get0_data: StringGet0Data,
    string_length: StringLength,
    bio_s_mem: BioSMem,
    bio_new: BioNew,
    bio_free: BioFree,
    bio_ctrl: BioCtrl,
    name_print_ex: NamePrintEx,
}

impl Tls {
    fn resolve() -> Result<Tls, String> {
        // The broker's own OpenSSL, not a copy another library carries: its certificates
        // are freed with its `X509_free`.
        let free = symbol(c"X509_free")?;
        let mut info = libc::Dl_info {
            dli_fname: std::ptr::null(),
            dli_fbase: std::ptr::null_mut(),
            dli_sname: std::ptr::null(),
            dli_saddr: std::ptr::null_mut(),
        };
        // SAFETY: dladdr only fills `info` for an address of the process.
        let found = unsafe { libc::dladdr(free, &mut info) } != 0 && !info.dli_fname.is_null();
        // SAFETY: dladdr set `dli_fname` to the NUL-terminated path of a loaded object.
        let from =
            if found { unsafe { CStr::from_ptr(info.dli_fname) }.to_string_lossy() } else { "?".into() };
        if !from.contains("libcrypto") {
            return Err(format!(
                "OpenSSL's X509_free comes from {from}, not the shared libcrypto a broker links"
            ));
        }
        // SAFETY: each symbol is the OpenSSL function of that name (1.1 and 3.x), whose C
        // signature is the function pointer type it is turned into.
        unsafe {
            Ok(Tls {
                x509_free: std::mem::transmute::<*mut c_void, X509Free>(symbol(c"X509_free")?),
                get_subject_name: std::mem::transmute::<*mut c_void, X509GetSubjectName>(symbol(
                    c"X509_get_subject_name",
                )?),
                name_index_by_nid: std::mem::transmute::<*mut c_void, NameIndexByNid>(symbol(
                    c"X509_NAME_get_index_by_NID",
                )?),
                name_get_entry: std::mem::transmute::<*mut c_void, NameGetEntry>(symbol(
                    c"X509_NAME_get_entry",
                )?),
                entry_get_data: std::mem::transmute::<*mut c_void, EntryGetData>(symbol(
                    c"X509_NAME_ENTRY_get_data",
                )?),
                string_get0_data: std::mem::transmute::<*mut c_void, StringGet0Data>(symbol(
                    c"ASN1_STRING_get0_data",
                )?),
                string_length: std::mem::transmute::<*mut c_void, StringLength>(symbol(
                    c"ASN1_STRING_length",
                )?),
                bio_s_mem: std::mem::transmute::<*mut c_void, BioSMem>(symbol(c"BIO_s_mem")?),
                bio_new: std::mem::transmute::<*mut c_void, BioNew>(symbol(c"BIO_new")?),
                bio_free: std::mem::transmute::<*mut c_void, BioFree>(symbol(c"BIO_free")?),
                bio_ctrl: std::mem::transmute::<*mut c_void, BioCtrl>(symbol(c"BIO_ctrl")?),
                name_print_ex: std::mem::transmute::<*mut c_void, NamePrintEx>(symbol(
                    c"X509_NAME_print_ex",
                )?),
            })
        }
    }

    /// Releases the reference `mosquitto_client_certificate` gave.
    ///
    /// # Safety
    /// `cert` is a certificate from `mosquitto_client_certificate`, released once.
    pub unsafe fn release(&self, cert: *mut c_void) {
        // SAFETY: the caller's contract.
        unsafe { (self.x509_free)(cert) }
    }

    /// The certificate's first common name and its subject in RFC 2253 form, computed as
    /// Mosquitto computes `use_identity_as_username` and `use_subject_as_username`.
    ///
    /// # Safety
    /// `cert` is a live certificate (`X509 *`).
    pub unsafe fn names(&self, cert: *mut c_void) -> crate::client::CertificateNames {
        // SAFETY: every pointer comes from OpenSSL for this certificate and is checked for
        // NULL before use; the BIO is freed on every path.
        unsafe {
            let name = (self.get_subject_name)(cert);
            if name.is_null() {
                return crate::client::CertificateNames::default();
            }
            let common_name = (|| {
                let i = (self.name_index_by_nid)(name, NID_COMMON_NAME, -1);
                if i < 0 {
                    return None;
                }
                let entry = (self.name_get_entry)(name, i);
                let data = if entry.is_null() { std::ptr::null_mut() } else { (self.entry_get_data)(entry) };
                if data.is_null() {
                    return None;
                }
                let (bytes, len) = ((self.string_get0_data)(data), (self.string_length)(data));
                let len = usize::try_from(len).ok()?;
                if bytes.is_null() {
                    return None;
                }
                let raw = std::slice::from_raw_parts(bytes, len);
                // Mosquitto refuses a name with a NUL inside; such a name is no one's here.
                (!raw.contains(&0)).then(|| String::from_utf8(raw.to_vec()).ok()).flatten()
            })();
            let subject = (|| {
                let bio = (self.bio_new)((self.bio_s_mem)());
                if bio.is_null() {
                    return None;
                }
                (self.name_print_ex)(bio, name, 0, XN_FLAG_RFC2253);
                let mut data: *mut u8 = std::ptr::null_mut();
                let len = (self.bio_ctrl)(bio, BIO_CTRL_INFO, 0, (&mut data as *mut *mut u8).cast());
                let text = usize::try_from(len)
                    .ok()
                    .filter(|_| !data.is_null())
                    .and_then(|len| String::from_utf8(std::slice::from_raw_parts(data, len).to_vec()).ok());
                (self.bio_free)(bio);
                text
            })();
            crate::client::CertificateNames { common_name, subject }
        }
    }
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
                subscription_delete: symbol(c"mosquitto_subscription_delete")
                    .ok()
                    .map(|p| std::mem::transmute::<*mut c_void, SubscriptionDelete>(p)),
                broker_publish_copy: std::mem::transmute::<*mut c_void, BrokerPublishCopy>(symbol(
                    c"mosquitto_broker_publish_copy",
                )?),
                client_clean_session: std::mem::transmute::<*mut c_void, ClientBool>(symbol(
                    c"mosquitto_client_clean_session",
                )?),
                client_protocol_version: std::mem::transmute::<*mut c_void, ClientInt>(symbol(
                    c"mosquitto_client_protocol_version",
                )?),
                client_certificate: std::mem::transmute::<*mut c_void, ClientPointer>(symbol(
                    c"mosquitto_client_certificate",
                )?),
                tls: Tls::resolve().ok(),
            })
        }
    }
}

/// A coarse clock (the time at the kernel's last tick, read without a system call).
#[derive(Debug, Clone, Copy)]
pub enum CoarseClock {
    /// `CLOCK_REALTIME_COARSE`: since the epoch.
    Realtime,
    /// `CLOCK_MONOTONIC_COARSE`.
    Monotonic,
}

/// A coarse clock's reading, in seconds and nanoseconds; `None` if the kernel refuses the
/// clock. Through the C library's `clock_gettime`, which Mosquitto's own loop calls too (a
/// check finds its code in the caches, and no pointer of the plugin's own to load); under
/// valgrind it is followed like any call.
pub fn coarse_clock(clock: CoarseClock) -> Option<(i64, i64)> {
    let id = match clock {
        CoarseClock::Realtime => libc::CLOCK_REALTIME_COARSE,
        CoarseClock::Monotonic => libc::CLOCK_MONOTONIC_COARSE,
    };
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a timespec the call may write.
    let rc = unsafe { libc::clock_gettime(id, &mut t) };
    (rc == 0).then_some((t.tv_sec, t.tv_nsec))
}

/// A C string the broker gave, as bytes; NULL is `None`.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string that outlives the returned value.
pub unsafe fn bytes<'a>(p: *const c_char) -> Option<&'a [u8]> {
    // SAFETY: the caller's contract.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_bytes())
}

/// Whether the broker still names a client by exactly `expected_id` and `expected_username`:
/// its id `id` (NULL: none, which is the empty id) and its username, asked of `username` only
/// when the ids agree (NULL: none). Every check of a connected client asks this, so the
/// broker's strings are compared where they lie, a byte at a time, without taking their
/// length first (but for names longer than [`SHORT_NAME`]).
///
/// # Safety
/// `id` and what `username` returns are NULL or NUL-terminated strings.
#[inline]
pub(crate) unsafe fn names_are(
    id: *const c_char,
    username: impl FnOnce() -> *const c_char,
    expected_id: &[u8],
    expected_username: Option<&[u8]>,
) -> bool {
    // SAFETY: the caller's contract.
    let id_agrees = if id.is_null() { expected_id.is_empty() } else { unsafe { c_str_is(id, expected_id) } };
    if !id_agrees {
        return false;
    }
    let username = username();
    match expected_username {
        None => username.is_null(),
        // SAFETY: the caller's contract.
        Some(expected) => !username.is_null() && unsafe { c_str_is(username, expected) },
    }
}

/// Names up to this long are compared a byte at a time; longer ones (a client may send a
/// username of up to 64 KiB) are measured and compared by the C library, many bytes at a time.
const SHORT_NAME: usize = 64;

/// Whether the C string `p` holds exactly `expected`. No byte past the terminator is read
/// (nor, for a short `expected`, past the first difference); an `expected` holding a NUL
/// never matches.
///
/// # Safety
/// `p` is a NUL-terminated string.
#[inline]
unsafe fn c_str_is(p: *const c_char, expected: &[u8]) -> bool {
    if expected.len() > SHORT_NAME {
        // SAFETY: the caller's contract.
        return unsafe { CStr::from_ptr(p) }.to_bytes() == expected;
    }
    for (i, &want) in expected.iter().enumerate() {
        // SAFETY: bytes `0..i` matched `expected` and none was NUL, so the string goes on at
        // least to index `i`.
        let got = unsafe { p.add(i).read() } as u8;
        if got != want || got == 0 {
            return false;
        }
    }
    // SAFETY: as above, for index `expected.len()`.
    unsafe { p.add(expected.len()).read() == 0 }
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

    fn removes_subscriptions(&self) -> bool {
        self.0.subscription_delete.is_some()
    }

    fn remove_subscription(&self, client_id: &str, filter: &str) -> Removal {
        let Some(delete) = self.0.subscription_delete else { return Removal::Failed(MOSQ_ERR_NOT_SUPPORTED) };
        let (Ok(id), Ok(filter)) = (CString::new(client_id), CString::new(filter)) else {
            return Removal::Failed(MOSQ_ERR_INVAL);
        };
        // SAFETY: two NUL-terminated strings the broker only reads; called on the broker
        // thread (from its tick).
        match unsafe { delete(id.as_ptr(), filter.as_ptr()) } {
            MOSQ_ERR_SUCCESS => Removal::Removed,
            MOSQ_ERR_NOT_FOUND => Removal::NoSuchClient,
            rc => Removal::Failed(rc),
        }
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

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::ffi::c_char;

    use super::names_are;

    /// Whether a client the broker holds as `id` and `username` (each ending in a NUL, as the
    /// broker's strings do, or none) is named by `expected`; and whether its username was
    /// asked for. The answer is checked against what `BrokerClient::id` and
    /// `BrokerClient::username` would give (each string up to its first NUL, no id the empty
    /// one), the contract of `BrokerClient::is_named`.
    fn named(id: Option<&str>, username: Option<&str>, expected: (&str, Option<&str>)) -> (bool, bool) {
        assert!(id.into_iter().chain(username).all(|s| s.ends_with('\0')), "a broker's strings end in a NUL");
        let pointer = |s: Option<&str>| s.map_or(std::ptr::null(), |s| s.as_ptr().cast::<c_char>());
        let asked = Cell::new(false);
        let username_of = || {
            asked.set(true);
            pointer(username)
        };
        // SAFETY: every string given is NULL or ends in a NUL (above).
        let is = unsafe {
            names_are(pointer(id), username_of, expected.0.as_bytes(), expected.1.map(str::as_bytes))
        };
        let as_read = |s: &str| s.split('\0').next().unwrap_or_default().to_string();
        let by_accessors =
            id.map_or(String::new(), as_read) == expected.0 && username.map(as_read).as_deref() == expected.1;
        assert_eq!(is, by_accessors, "{id:?} {username:?} against {expected:?}");
        (is, asked.get())
    }

    #[test]
    fn a_client_is_named_by_exactly_the_strings_the_broker_holds() {
        let is = |id, username, expected| named(id, username, expected).0;
        assert!(is(Some("c1\0"), Some("vera\0"), ("c1", Some("vera"))));
        assert!(is(Some("c1\0"), None, ("c1", None)));
        assert!(is(None, None, ("", None)), "no id is the empty id");
        assert!(is(Some("\0"), Some("\0"), ("", Some(""))));
        let vera = ("c1", Some("vera"));
        for (id, username) in [
            ("c\0", "vera\0"),
            ("c12\0", "vera\0"),
            ("c2\0", "vera\0"),
            ("C1\0", "vera\0"),
            ("\0", "vera\0"),
            ("c1\0", "ver\0"),
            ("c1\0", "veras\0"),
            ("c1\0", "vEra\0"),
            ("c1\0", "\0"),
        ] {
            assert!(!is(Some(id), Some(username), vera), "{id:?} {username:?}");
        }
        assert!(!is(None, Some("vera\0"), vera), "no id is not c1");
        assert!(!is(Some("c1\0"), None, vera), "no username is not vera");
        assert!(!is(Some("c1\0"), None, ("c1", Some(""))), "no username is not the empty one");
        assert!(!is(Some("c1\0"), Some("\0"), ("c1", None)), "the empty username is not none");
        // Nothing after a terminator is compared: a NUL expected where the string ends, or in
        // its middle, does not match what follows it.
        assert!(!is(Some("c1\0\0"), None, ("c1\0", None)));
        assert!(!is(Some("ab\0cd\0"), None, ("ab\0cd", None)));
        assert!(!is(Some("c1\0"), Some("ve\0ra\0"), ("c1", Some("ve\0ra"))));
    }

    #[test]
    fn long_names_are_compared_as_exactly_as_short_ones() {
        let is = |id: &str, username: &str, expected: (&str, Option<&str>)| {
            named(Some(&format!("{id}\0")), Some(&format!("{username}\0")), expected).0
        };
        for n in [super::SHORT_NAME, super::SHORT_NAME + 1, 4096] {
            let long = "x".repeat(n);
            let (shorter, longer) = (&long[1..], format!("{long}x"));
            let mut off = long.clone().into_bytes();
            off[n / 2] = b'y';
            let off = String::from_utf8(off).unwrap();
            assert!(is(&long, &long, (&long, Some(&long))), "{n}");
            assert!(is("c1", &long, ("c1", Some(&long))), "{n}");
            for other in [shorter, &longer, &off] {
                assert!(!is(other, "vera", (&long, Some("vera"))), "{n}: an id {} long", other.len());
                assert!(!is("c1", other, ("c1", Some(&long))), "{n}: a username {} long", other.len());
            }
            let with_nul = format!("{}\0{}", &long[..n / 2], &long[n / 2 + 1..]);
            assert!(!is("c1", &with_nul[..n / 2], ("c1", Some(&with_nul))), "{n}: a NUL expected");
        }
    }

    #[test]
    fn the_username_is_asked_for_only_when_the_ids_agree() {
        assert!(!named(Some("c2\0"), Some("vera\0"), ("c1", Some("vera"))).1);
        assert!(named(Some("c1\0"), Some("vera\0"), ("c1", Some("vera"))).1);
    }
}
