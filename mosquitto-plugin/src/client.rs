//! What the broker tells the plugin about one client, and how an identity stays bound to the
//! client that proved it.
//!
//! Mosquitto 2.0 gives a plugin no per-connection id or user data: the plugin knows a client
//! by the address of its `struct mosquitto` ([`ClientKey`]), and the allocator hands a freed
//! client's address to the next one. Not every client passes through this plugin's
//! authentication either (a certificate listener with `use_identity_as_username`, another
//! plugin earlier in the chain, another enhanced-authentication method). So an identity is
//! kept with a [`Binding`]: what the broker says about the client that proved it (client id,
//! username, address, protocol, clean start, whether it showed a certificate), compared with
//! what the broker says about the client a check is for. The rules that make it hold, from
//! Mosquitto's own code (2.0 and 2.1):
//!
//! - A client's structure is freed only after the plugin's disconnect (or, in 2.1, offline)
//!   event for it, or, for an offline persistent session, when the session expires (no
//!   event). So an entry that has seen no disconnect still belongs to its client; a
//!   disconnected one may have been freed and its address reused, and is used only when the
//!   whole binding matches, never for a subscribe (an offline session does not subscribe),
//!   and for a publish only as the will that the broker checks right after the disconnect
//!   event, before any other event.
//! - A second disconnect event for a disconnected entry is a new client at that address: the
//!   entry goes.
//! - On Mosquitto 2.1, the connect event of a client this plugin did not just admit removes
//!   whatever the address held.
//!
//! Nothing here sees a pointer: `entry.rs` implements [`BrokerClient`] over the broker's
//! accessor functions, the tests over plain values.

/// A client as the broker identifies it: the address of its `struct mosquitto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey(pub usize);

/// The names the broker may have made a client's username from, when it showed a
/// certificate: its first common name (`use_identity_as_username`) and its subject in RFC
/// 2253 form (`use_subject_as_username`), as Mosquitto computes them with OpenSSL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateNames {
    pub common_name: Option<String>,
    pub subject: Option<String>,
}

/// What the broker says about one client, read when it is needed (each is a call into the
/// broker, valid for the duration of the event).
pub trait BrokerClient {
    fn key(&self) -> ClientKey;
    /// The client id (empty when none).
    fn id(&self) -> &[u8];
    /// The username as the broker holds it now (after any rename). A rename
    /// ([`BrokerClient::set_username`]) frees the broker's copy: read it again after one,
    /// never keep a slice across it.
    fn username(&self) -> Option<&[u8]>;
    /// The client's IP address as text.
    fn address(&self) -> &[u8];
    /// 3, 4 or 5 (MQTT 3.1, 3.1.1, 5).
    fn protocol_version(&self) -> i32;
    fn clean_start(&self) -> bool;
    /// Did the client show a TLS certificate on this connection?
    fn has_certificate(&self) -> bool;
    /// The names in the client's certificate; `None` without one (or when the broker's TLS
    /// library cannot be asked).
    fn certificate_names(&self) -> Option<CertificateNames>;
    /// Sets the username the broker knows the client by; `false` when the broker refused.
    fn set_username(&self, name: &str) -> bool;

    /// Whether the broker knows the client by exactly this client id (empty: none) and
    /// username: what every check of a connected entry asks ([`Binding::still_names`]), so
    /// the broker's client answers it without copying or measuring its strings first. An
    /// answer must be the one [`BrokerClient::id`] and [`BrokerClient::username`] give.
    fn is_named(&self, id: &[u8], username: Option<&[u8]>) -> bool {
        self.id() == id && self.username() == username
    }

    /// The client id as text, for logs.
    fn id_text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.id())
    }

    fn address_text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.address())
    }
}

/// What the broker said about the client that proved an identity (what every check compares
/// first, as in `Connection`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[repr(C)]
pub struct Binding {
    id: Box<[u8]>,
    username: Option<Box<[u8]>>,
    address: Box<[u8]>,
    protocol: i32,
    clean: bool,
    certificate: bool,
}

impl Binding {
    pub fn of(c: &dyn BrokerClient) -> Binding {
        Binding {
            id: c.id().into(),
            username: c.username().map(Into::into),
            address: c.address().into(),
            protocol: c.protocol_version(),
            clean: c.clean_start(),
            certificate: c.has_certificate(),
        }
    }

    /// The broker now knows the client by `name` (a rename this plugin made).
    pub fn renamed(&mut self, name: &str) {
        self.username = Some(name.as_bytes().into());
    }

    /// The check for a connected entry: its client's structure cannot have been freed (no
    /// disconnect event since), so client id and username suffice, as a guard against a
    /// change made behind the plugin's back.
    #[inline]
    pub fn still_names(&self, c: &(impl BrokerClient + ?Sized)) -> bool {
        c.is_named(&self.id, self.username.as_deref())
    }

    /// The check for a disconnected entry: everything the broker says must be as it was. An
    /// offline session has no TLS connection, so a certificate may be gone, never appear.
    pub fn describes(&self, c: &dyn BrokerClient) -> bool {
        self.still_names(c)
            && *self.address == *c.address()
            && self.protocol == c.protocol_version()
            && self.clean == c.clean_start()
            && (self.certificate || !c.has_certificate())
    }

    /// Whether the client's session ends with its connection for sure: MQTT 3.1 and 3.1.1
    /// with clean session (an MQTT 5 session's expiry interval is not visible to plugins).
    pub fn ends_with_connection(&self) -> bool {
        self.protocol < 5 && self.clean
    }

    pub fn client_id(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.id)
    }
}

/// A client described by plain values: the tests' broker, and the fuzz target's.
#[derive(Debug, Clone)]
pub struct PlainClient {
    pub key: ClientKey,
    pub id: String,
    pub username: Option<String>,
    /// The username the plugin set (a client is renamed at most once, at its CONNECT).
    pub renamed: std::cell::OnceCell<String>,
    pub address: String,
    pub protocol: i32,
    pub clean: bool,
    pub certificate: Option<CertificateNames>,
    /// Whether a rename succeeds.
    pub renames: bool,
}

impl PlainClient {
    /// An MQTT 3.1.1 clean-session client from 127.0.0.1 without a certificate.
    pub fn new(key: usize, id: &str, username: Option<&str>) -> PlainClient {
        PlainClient {
            key: ClientKey(key),
            id: id.into(),
            username: username.map(str::to_string),
            renamed: std::cell::OnceCell::new(),
            address: "127.0.0.1".into(),
            protocol: 4,
            clean: true,
            certificate: None,
            renames: true,
        }
    }

    /// A client admitted by its certificate with `use_identity_as_username`: the username
    /// is the certificate's common name.
    pub fn with_certificate(key: usize, id: &str, common_name: &str) -> PlainClient {
        let mut c = PlainClient::new(key, id, Some(common_name));
        c.certificate = Some(CertificateNames {
            common_name: Some(common_name.into()),
            subject: Some(format!("CN={common_name}")),
        });
        c
    }
}

impl BrokerClient for PlainClient {
    fn key(&self) -> ClientKey {
        self.key
    }
    fn id(&self) -> &[u8] {
        self.id.as_bytes()
    }
    fn username(&self) -> Option<&[u8]> {
        self.renamed.get().or(self.username.as_ref()).map(String::as_bytes)
    }
    fn address(&self) -> &[u8] {
        self.address.as_bytes()
    }
    fn protocol_version(&self) -> i32 {
        self.protocol
    }
    fn clean_start(&self) -> bool {
        self.clean
    }
    fn has_certificate(&self) -> bool {
        self.certificate.is_some()
    }
    fn certificate_names(&self) -> Option<CertificateNames> {
        self.certificate.clone()
    }
    fn set_username(&self, name: &str) -> bool {
        self.renames && self.renamed.set(name.to_string()).is_ok()
    }
}
