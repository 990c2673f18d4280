//! An MQTT 5 client with enhanced authentication (rust-mqtt): CONNECT with the method `jwt`
//! and the token as authentication data, and re-authentication (an AUTH packet with reason
//! 0x19 carrying a fresh token), which rumqttc cannot send. Blocking, on its own runtime.

use std::num::NonZero;
use std::time::{Duration, Instant};

use embedded_io_adapters::tokio_1::FromTokio;
use rust_mqtt::Bytes;
use rust_mqtt::auth::{AuthMechanism, AuthOptions};
use rust_mqtt::buffer::AllocBuffer;
use rust_mqtt::client::event::{Auth, Event};
use rust_mqtt::client::options::{
    ConnectOptions, PublicationOptions, ReAuthOptions, SubscriptionOptions, TopicReference,
};
use rust_mqtt::client::{Client, MqttError};
use rust_mqtt::config::KeepAlive;
use rust_mqtt::types::{MqttBinary, MqttString, QoS, ReasonCode, TopicFilter, TopicName};
use tokio::net::TcpStream;

use super::WAIT;

/// One client: 1 subscription in flight, 4 incoming and 4 outgoing QoS 1 messages.
type Raw = Client<'static, 'static, FromTokio<TcpStream>, AllocBuffer, 1, 4, 4, 1, 16, 0, 0>;

/// The `jwt` method is a single step: the broker answers CONNECT (or AUTH 0x19) directly.
struct Jwt;

impl<const P: usize> AuthMechanism<P> for Jwt {
    type Error = &'static str;

    fn kontinue(&mut self, _: &Auth<'_, P>) -> Result<AuthOptions<'_, P>, (Self::Error, Option<ReasonCode>)> {
        Err(("the jwt method has no second step", Some(ReasonCode::ProtocolError)))
    }

    fn success(&mut self, _: &Auth<'_, P>) -> Result<(), (Self::Error, Option<ReasonCode>)> {
        Ok(())
    }
}

/// What the client saw next.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    Message {
        topic: String,
        payload: String,
    },
    /// The connection ended: how (a DISCONNECT's reason code, or the socket closing).
    Closed(String),
}

pub struct JwtClient {
    rt: tokio::runtime::Runtime,
    client: Raw,
    pub id: String,
}

fn binary(token: &str) -> MqttBinary<'static> {
    MqttBinary::try_from(token.as_bytes().to_vec()).expect("a token fits an MQTT binary")
}

fn string(s: &str) -> MqttString<'static> {
    MqttString::try_from(s.to_string()).expect("a valid MQTT string")
}

impl JwtClient {
    /// Connects with method `jwt`; `Err` is the CONNACK's refusal (or why it failed).
    pub fn connect(port: u16, id: &str, username: Option<&str>, token: &str) -> Result<JwtClient, String> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // The client borrows its buffer for as long as it lives: one per test client.
        let buffer: &'static mut AllocBuffer = Box::leak(Box::new(AllocBuffer));
        let mut client = Raw::new(buffer);
        let mut options = ConnectOptions::new()
            .clean_start()
            .keep_alive(KeepAlive::Seconds(NonZero::new(60).unwrap()))
            .authentication_data(binary(token));
        if let Some(u) = username {
            options = options.user_name(string(u));
        }
        rt.block_on(async {
            let socket = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
            let connected = tokio::time::timeout(
                WAIT,
                client.connect_enhanced(
                    FromTokio::new(socket),
                    &options,
                    Some(string(id)),
                    string("jwt"),
                    &mut Jwt,
                ),
            )
            .await
            .map_err(|_| format!("{id}: no CONNACK within {WAIT:?}"))?;
            match connected {
                Ok(_) => Ok(()),
                Err(MqttError::Disconnect { reason, .. }) => Err(format!("refused: {:#04x}", reason.value())),
                Err(e) => Err(format!("{e:?}")),
            }
        })?;
        Ok(JwtClient { rt, client, id: id.to_string() })
    }

    /// The next event within `within` (`None`: nothing came), acknowledgements skipped.
    fn event(&mut self, within: Duration) -> Option<Result<EventSummary, String>> {
        let client = &mut self.client;
        self.rt.block_on(async {
            let deadline = tokio::time::Instant::now() + within;
            loop {
                // Waiting for a header can be given up safely; a body, once begun, is read.
                let header = match tokio::time::timeout_at(deadline, client.poll_header()).await {
                    Err(_) => return None,
                    Ok(Err(e)) => return Some(Err(closed(e))),
                    Ok(Ok(h)) => h,
                };
                match client.poll_body(header).await {
                    Err(e) => return Some(Err(closed(e))),
                    Ok(Event::Publish(p)) => {
                        let topic =
                            p.topic.name().map(|t| AsRef::<MqttString>::as_ref(t).as_ref().to_string());
                        let payload = String::from_utf8_lossy(&p.message).into_owned();
                        return Some(Ok(EventSummary::Message(topic.unwrap_or_default(), payload)));
                    }
                    Ok(Event::Suback(s)) => return Some(Ok(EventSummary::SubAck(s.reason_code.value()))),
                    Ok(Event::Auth(a)) => return Some(Ok(EventSummary::Auth(a.reason_code.value()))),
                    Ok(Event::PublishAcknowledged(_)) => return Some(Ok(EventSummary::PubAck)),
                    Ok(_) => continue,
                }
            }
        })
    }

    fn wait_for<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(EventSummary) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.event(left) {
                None => panic!("{}: no {what} within {WAIT:?}", self.id),
                Some(Err(closed)) => return Err(closed),
                Some(Ok(e)) => {
                    if let Some(t) = pick(e) {
                        return Ok(t);
                    }
                }
            }
        }
    }

    /// Subscribes at QoS 1; the SUBACK's reason code.
    pub fn subscribe(&mut self, filter: &str) -> u8 {
        let filter = TopicFilter::new(string(filter)).expect("a valid filter");
        let options = SubscriptionOptions::new().qos(QoS::AtLeastOnce);
        self.rt.block_on(self.client.subscribe(filter, &options)).expect("SUBSCRIBE sent");
        self.wait_for("SUBACK", |e| match e {
            EventSummary::SubAck(code) => Some(code),
            _ => None,
        })
        .unwrap_or_else(|closed| panic!("{}: closed while subscribing: {closed}", self.id))
    }

    /// Publishes at QoS 1 and waits for the PUBACK.
    pub fn publish(&mut self, topic: &str, payload: &str) {
        let name = TopicName::new(string(topic)).expect("a valid topic");
        let options = PublicationOptions::new(TopicReference::Name(name)).qos(QoS::AtLeastOnce);
        let body = Bytes::from(payload.as_bytes().to_vec());
        self.rt.block_on(self.client.publish(&options, body)).expect("PUBLISH sent");
        self.wait_for("PUBACK", |e| matches!(e, EventSummary::PubAck).then_some(()))
            .unwrap_or_else(|closed| panic!("{}: closed while publishing: {closed}", self.id))
    }

    /// Re-authenticates with a fresh token: `Ok` when the broker answers AUTH success,
    /// `Err` with how the connection ended otherwise.
    pub fn reauthenticate(&mut self, token: &str) -> Result<(), String> {
        let options = ReAuthOptions::new().authentication_data(binary(token));
        self.rt.block_on(self.client.reauthenticate(&options)).map_err(|e| format!("{e:?}"))?;
        match self.wait_for("AUTH", |e| match e {
            EventSummary::Auth(code) => Some(code),
            _ => None,
        })? {
            0 => Ok(()),
            other => Err(format!("AUTH {other:#04x}")),
        }
    }

    /// The next message or the end of the connection, within `within`; `None`: neither.
    pub fn next(&mut self, within: Duration) -> Option<Seen> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.event(left)? {
                Err(closed) => return Some(Seen::Closed(closed)),
                Ok(EventSummary::Message(topic, payload)) => return Some(Seen::Message { topic, payload }),
                Ok(_) => continue,
            }
        }
    }
}

/// The events the tests look at, owned.
enum EventSummary {
    Message(String, String),
    SubAck(u8),
    Auth(u8),
    PubAck,
}

fn closed<const P: usize, A: std::fmt::Debug>(e: MqttError<'_, P, A>) -> String {
    match e {
        MqttError::Disconnect { reason, .. } => format!("DISCONNECT {:#04x}", reason.value()),
        other => format!("{other:?}"),
    }
}
