//! Real MQTT clients for the end-to-end tests (rumqttc, MQTT 3.1.1 and 5), with what they
//! receive normalised to wire codes, so a test asserts exactly what a client sees: CONNACK
//! and SUBACK codes, deliveries, PUBACKs.
#![allow(dead_code)]

pub mod enhanced;

use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use rumqttc::QoS;

/// How long a test waits for something the broker should send.
pub const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

/// What a client received, as wire codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Connected,
    /// CONNACK with a refusal: 3.1.1 return code (5 = not authorised) or MQTT 5 reason code
    /// (0x87 = not authorized).
    Refused(u8),
    /// SUBACK: one code per filter (0–2 granted QoS, 0x80 / 0x87 refused).
    SubAck(Vec<u8>),
    /// PUBACK, with its reason code (MQTT 5; 0 for 3.1.1, which has none): 0x87 = not
    /// authorized, 0x97 = quota exceeded.
    PubAck(u8),
    /// UNSUBACK.
    UnsubAck,
    Message {
        topic: String,
        payload: Vec<u8>,
    },
    /// The connection ended (by the broker or the network).
    Closed(String),
}

enum Handle {
    V311(rumqttc::Client),
    V5(rumqttc::v5::Client),
}

pub struct Client {
    handle: Handle,
    events: Receiver<Event>,
    pub id: String,
}

fn v311_code(c: rumqttc::ConnectReturnCode) -> u8 {
    use rumqttc::ConnectReturnCode as C;
    match c {
        C::Success => 0,
        C::RefusedProtocolVersion => 1,
        C::BadClientId => 2,
        C::ServiceUnavailable => 3,
        C::BadUserNamePassword => 4,
        C::NotAuthorized => 5,
    }
}

fn v5_code(c: rumqttc::v5::mqttbytes::v5::ConnectReturnCode) -> u8 {
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as C;
    match c {
        C::Success => 0,
        C::BadUserNamePassword => 0x86,
        C::NotAuthorized => 0x87,
        C::ServerUnavailable => 0x88,
        C::Banned => 0x8a,
        C::BadAuthenticationMethod => 0x8c,
        _ => 0x80,
    }
}

fn v5_puback_code(r: &rumqttc::v5::mqttbytes::v5::PubAckReason) -> u8 {
    use rumqttc::v5::mqttbytes::v5::PubAckReason as R;
    match r {
        R::Success => 0,
        R::NoMatchingSubscribers => 0x10,
        R::NotAuthorized => 0x87,
        R::QuotaExceeded => 0x97,
        _ => 0x80,
    }
}

fn v5_sub_code(c: &rumqttc::v5::mqttbytes::v5::SubscribeReasonCode) -> u8 {
    use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode as C;
    match c {
        C::Success(q) => *q as u8,
        C::NotAuthorized => 0x87,
        C::TopicFilterInvalid => 0x8f,
        C::Unspecified => 0x80,
        _ => 0x83,
    }
}

impl Client {
    /// Connects with `username` (empty: none is sent) and `password`; returns the client
    /// and whether the broker accepted it.
    pub fn connect(version: Version, port: u16, id: &str, username: &str, password: &str) -> (Client, Event) {
        Client::connect_over(version, port, id, Some((username, password)), None)
    }

    /// Connects over TLS with `tls` (its client certificate, if any) and no credentials.
    pub fn connect_tls(
        version: Version,
        port: u16,
        id: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> (Client, Event) {
        Client::connect_over(version, port, id, None, Some(tls))
    }

    fn connect_over(
        version: Version,
        port: u16,
        id: &str,
        credentials: Option<(&str, &str)>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> (Client, Event) {
        let (tx, events) = channel();
        let transport =
            tls.map(|c| rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(c)));
        let handle = match version {
            Version::V311 => {
                let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
                o.set_keep_alive(Duration::from_secs(30));
                if let Some((username, password)) = credentials {
                    o.set_credentials(username, password);
                }
                if let Some(t) = transport {
                    o.set_transport(t);
                }
                let (client, mut connection) = rumqttc::Client::new(o, 64);
                std::thread::spawn(move || {
                    use rumqttc::{ConnectionError, Event as E, Packet as P};
                    for ev in connection.iter() {
                        let out = match ev {
                            Ok(E::Incoming(P::ConnAck(a)))
                                if a.code == rumqttc::ConnectReturnCode::Success =>
                            {
                                Event::Connected
                            }
                            Ok(E::Incoming(P::ConnAck(a))) => Event::Refused(v311_code(a.code)),
                            Ok(E::Incoming(P::SubAck(s))) => Event::SubAck(
                                s.return_codes
                                    .iter()
                                    .map(|c| match c {
                                        rumqttc::SubscribeReasonCode::Success(q) => *q as u8,
                                        rumqttc::SubscribeReasonCode::Failure => 0x80,
                                    })
                                    .collect(),
                            ),
                            Ok(E::Incoming(P::PubAck(_))) => Event::PubAck(0),
                            Ok(E::Incoming(P::UnsubAck(_))) => Event::UnsubAck,
                            Ok(E::Incoming(P::Publish(p))) => {
                                Event::Message { topic: p.topic.clone(), payload: p.payload.to_vec() }
                            }
                            Ok(_) => continue,
                            Err(ConnectionError::ConnectionRefused(c)) => Event::Refused(v311_code(c)),
                            Err(e) => Event::Closed(e.to_string()),
                        };
                        let end = matches!(out, Event::Refused(_) | Event::Closed(_));
                        if tx.send(out).is_err() || end {
                            return;
                        }
                    }
                });
                Handle::V311(client)
            }
            Version::V5 => {
                let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
                o.set_keep_alive(Duration::from_secs(30));
                if let Some((username, password)) = credentials {
                    o.set_credentials(username, password);
                }
                if let Some(t) = transport {
                    o.set_transport(t);
                }
                let (client, mut connection) = rumqttc::v5::Client::new(o, 64);
                std::thread::spawn(move || {
                    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet as P};
                    use rumqttc::v5::{ConnectionError, Event as E};
                    for ev in connection.iter() {
                        let out = match ev {
                            Ok(E::Incoming(P::ConnAck(a))) if a.code == ConnectReturnCode::Success => {
                                Event::Connected
                            }
                            Ok(E::Incoming(P::ConnAck(a))) => Event::Refused(v5_code(a.code)),
                            Ok(E::Incoming(P::SubAck(s))) => {
                                Event::SubAck(s.return_codes.iter().map(v5_sub_code).collect())
                            }
                            Ok(E::Incoming(P::PubAck(a))) => Event::PubAck(v5_puback_code(&a.reason)),
                            Ok(E::Incoming(P::UnsubAck(_))) => Event::UnsubAck,
                            Ok(E::Incoming(P::Publish(p))) => Event::Message {
                                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                                payload: p.payload.to_vec(),
                            },
                            Ok(_) => continue,
                            Err(ConnectionError::ConnectionRefused(c)) => Event::Refused(v5_code(c)),
                            Err(e) => Event::Closed(e.to_string()),
                        };
                        let end = matches!(out, Event::Refused(_) | Event::Closed(_));
                        if tx.send(out).is_err() || end {
                            return;
                        }
                    }
                });
                Handle::V5(client)
            }
        };
        let client = Client { handle, events, id: id.to_string() };
        let first = client.next().unwrap_or_else(|| panic!("{id}: no CONNACK within {WAIT:?}"));
        (client, first)
    }

    /// Connects and expects to be accepted.
    pub fn connected(version: Version, port: u16, id: &str, username: &str, password: &str) -> Client {
        let (c, first) = Client::connect(version, port, id, username, password);
        assert_eq!(first, Event::Connected, "{id} was not let in");
        c
    }

    /// The next event within [`WAIT`].
    pub fn next(&self) -> Option<Event> {
        self.next_within(WAIT)
    }

    pub fn next_within(&self, d: Duration) -> Option<Event> {
        self.events.recv_timeout(d).ok()
    }

    /// Waits for an event `pick` accepts, skipping others; panics after [`WAIT`].
    fn wait<T>(&self, what: &str, mut pick: impl FnMut(Event) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_within(left) {
                Some(e) => {
                    if let Some(t) = pick(e) {
                        return t;
                    }
                }
                None => panic!("{}: no {what} within {WAIT:?}", self.id),
            }
        }
    }

    /// Subscribes and returns the SUBACK code.
    pub fn subscribe(&self, filter: &str) -> u8 {
        match &self.handle {
            Handle::V311(c) => c.subscribe(filter, QoS::AtLeastOnce).unwrap(),
            Handle::V5(c) => c.subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce).unwrap(),
        }
        self.wait("SUBACK", |e| match e {
            Event::SubAck(codes) => Some(codes[0]),
            Event::Closed(why) => panic!("{}: closed while subscribing: {why}", self.id),
            _ => None,
        })
    }

    /// Unsubscribes and waits for the UNSUBACK.
    pub fn unsubscribe(&self, filter: &str) {
        match &self.handle {
            Handle::V311(c) => c.unsubscribe(filter).unwrap(),
            Handle::V5(c) => c.unsubscribe(filter).unwrap(),
        }
        self.wait("UNSUBACK", |e| match e {
            Event::UnsubAck => Some(()),
            Event::Closed(why) => panic!("{}: closed while unsubscribing: {why}", self.id),
            _ => None,
        })
    }

    /// Publishes at QoS 1 and waits for the broker's PUBACK (sent whether or not the
    /// publish was allowed: MQTT 3.1.1 has no way to refuse it).
    pub fn publish(&self, topic: &str, payload: &str) {
        self.publish_with(topic, payload, false)
    }

    /// As [`Client::publish`], with the retain flag.
    pub fn publish_with(&self, topic: &str, payload: &str, retain: bool) {
        self.publish_at(topic, payload, 1, retain);
    }

    /// Publishes at `qos` (0 or 1) with the retain flag; at QoS 1 waits for the PUBACK and
    /// returns its reason code (MQTT 5; 0 for 3.1.1), at QoS 0 returns `None` at once.
    pub fn publish_at(&self, topic: &str, payload: &str, qos: u8, retain: bool) -> Option<u8> {
        let body = payload.as_bytes().to_vec();
        match &self.handle {
            Handle::V311(c) => {
                let q = if qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
                c.publish(topic, q, retain, body).unwrap()
            }
            Handle::V5(c) => {
                use rumqttc::v5::mqttbytes::QoS as Q5;
                let q = if qos == 0 { Q5::AtMostOnce } else { Q5::AtLeastOnce };
                c.publish(topic, q, retain, body).unwrap()
            }
        }
        if qos == 0 {
            return None;
        }
        Some(self.wait("PUBACK", |e| match e {
            Event::PubAck(code) => Some(code),
            Event::Closed(why) => panic!("{}: closed while publishing: {why}", self.id),
            _ => None,
        }))
    }

    /// The next message received, skipping acknowledgements.
    pub fn message(&self) -> (String, String) {
        self.wait("message", |e| match e {
            Event::Message { topic, payload } => {
                Some((topic, String::from_utf8_lossy(&payload).into_owned()))
            }
            Event::Closed(why) => panic!("{}: closed while waiting for a message: {why}", self.id),
            _ => None,
        })
    }

    /// The messages received until one with payload `marker` arrives (not included).
    pub fn messages_until(&self, marker: &str) -> Vec<(String, String)> {
        let mut before = Vec::new();
        loop {
            let (topic, payload) = self.message();
            if payload == marker {
                return before;
            }
            before.push((topic, payload));
        }
    }

    pub fn disconnect(&self) {
        match &self.handle {
            Handle::V311(c) => {
                let _ = c.disconnect();
            }
            Handle::V5(c) => {
                let _ = c.disconnect();
            }
        }
    }
}

/// A client (`mosquitto_pub -l`, MQTT 3.1.1) that stays connected with a will message until
/// it is killed: the socket then closes without a DISCONNECT and the broker sends the will.
pub struct WillClient(std::process::Child);

impl WillClient {
    pub fn connect(port: u16, id: &str, username: &str, password: &str, will: (&str, &str)) -> WillClient {
        let child = std::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv311", "-i", id])
            .args(["-u", username, "-P", password, "-q", "1", "-l", "-t", "unused/by/this/test"])
            .args(["--will-topic", will.0, "--will-payload", will.1, "--will-qos", "1"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto_pub (apt-get install mosquitto-clients; cargo xtask e2e installs it)");
        WillClient(child)
    }

    /// Kills the client (by its PID): no DISCONNECT is sent.
    pub fn vanish(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for WillClient {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
