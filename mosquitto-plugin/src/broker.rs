//! What the plugin asks of the broker, as a safe trait: the real broker's functions
//! (`sys.rs`, resolved when the plugin starts) or a test double. Only ever called on the
//! broker thread.

use tracing::Level;

pub trait Broker: Send + Sync + 'static {
    /// A line in Mosquitto's log.
    fn log(&self, level: Level, line: &str);
    /// Publishes a retained QoS 0 message from the broker itself.
    fn publish_retained(&self, topic: &str, payload: &[u8]);
    /// Disconnects the client with this id (an MQTT 5 client is sent DISCONNECT 0x98,
    /// "administrative action"), with or without its will. The broker reports the disconnect
    /// (the plugin's disconnect event) before this returns. `false`: no such client.
    fn kick(&self, client_id: &str, with_will: bool) -> bool;
    /// Whether the broker can remove a single subscription of a client (Mosquitto 2.1 and
    /// newer; 2.0 cannot).
    fn removes_subscriptions(&self) -> bool;
    /// Removes the subscription to `filter` (as the subscribe check saw it: with the
    /// listener's mount point and any `$share/` prefix) of the client with this id. The
    /// client is not told, and the broker raises no plugin event for it. Mosquitto 2.1 also
    /// answers [`Removal::Removed`] for a filter the client does not hold.
    fn remove_subscription(&self, client_id: &str, filter: &str) -> Removal;
}

/// What [`Broker::remove_subscription`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// The broker has no client with that id (it has just gone).
    NoSuchClient,
    /// Anything else: the broker's error code.
    Failed(i32),
}
