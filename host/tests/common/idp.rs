//! A fake identity provider's key-set endpoint (`GET /jwks`) on a free loopback port, whose
//! keys and behaviour a test changes: healthy, slow, failing, garbage, endless, cut off.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::fixtures;

/// How the fake identity provider answers `GET /jwks`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Mode {
    Healthy,
    /// Answers after 12 s: go-auth gives up after 5, the service's own fetch after 10.
    Slow,
    Status500,
    Garbage,
    /// A key set of 256 MiB, streamed until the client stops reading.
    Enormous,
    /// Promises 5,000 bytes, sends 100, closes the connection.
    Vanish,
}

pub const MODES: [Mode; 6] =
    [Mode::Healthy, Mode::Slow, Mode::Status500, Mode::Garbage, Mode::Enormous, Mode::Vanish];

pub struct Idp {
    pub url: String,
    mode: Arc<AtomicU8>,
    keys: Arc<Mutex<String>>,
    /// Key-set requests answered or begun.
    pub requests: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
}

impl Idp {
    pub fn start(keys: &str) -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let idp = Idp {
            url: format!("http://{addr}/jwks"),
            mode: Arc::new(AtomicU8::new(Mode::Healthy as u8)),
            keys: Arc::new(Mutex::new(keys.to_string())),
            requests: Arc::default(),
            stop: Arc::default(),
            addr,
        };
        let (mode, keys, requests, stop) =
            (Arc::clone(&idp.mode), Arc::clone(&idp.keys), Arc::clone(&idp.requests), Arc::clone(&idp.stop));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let mode = MODES[usize::from(mode.load(Ordering::Relaxed))];
                let keys = keys.lock().unwrap().clone();
                requests.fetch_add(1, Ordering::Relaxed);
                std::thread::spawn(move || {
                    let _ = answer(conn, mode, &keys);
                });
            }
        });
        idp
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::Relaxed);
    }

    /// Serves `keys` from now on (a rotation, or a key withdrawn).
    pub fn set_keys(&self, keys: &str) {
        *self.keys.lock().unwrap() = keys.to_string();
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn answer(mut conn: TcpStream, mode: Mode, keys: &str) -> std::io::Result<()> {
    // Read the request head (a GET has no body).
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let ok = |body_len: usize| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {body_len}\r\nConnection: close\r\n\r\n"
        )
    };
    match mode {
        Mode::Healthy => write!(conn, "{}{keys}", ok(keys.len())),
        Mode::Slow => {
            std::thread::sleep(Duration::from_secs(12));
            write!(conn, "{}{keys}", ok(keys.len()))
        }
        Mode::Status500 => {
            write!(
                conn,
                "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\nConnection: close\r\n\r\noops!"
            )
        }
        Mode::Garbage => {
            let body = "<html>Service Unavailable</html>";
            write!(conn, "{}{body}", ok(body.len()))
        }
        Mode::Enormous => {
            // A well-formed beginning of a key set that goes on and on, without a length.
            write!(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")?;
            conn.write_all(br#"{"keys":["#)?;
            let key: Value = serde_json::from_str::<Value>(keys).unwrap()["keys"][0].clone();
            let chunk = format!("{key},").repeat(64);
            let mut sent = 0;
            while sent < 256 << 20 {
                conn.write_all(chunk.as_bytes())?;
                sent += chunk.len();
            }
            Ok(())
        }
        Mode::Vanish => {
            write!(conn, "{}", ok(5000))?;
            conn.write_all(&keys.as_bytes()[..100.min(keys.len())])?;
            conn.flush()?;
            let _ = conn.shutdown(std::net::Shutdown::Both);
            // Keep the socket until the peer has seen the close.
            let _ = conn.read(&mut [0; 1]);
            Ok(())
        }
    }
}

/// The keys of these fixture key-set files, as one key set.
pub fn key_set(files: &[&str]) -> String {
    let keys: Vec<Value> = files
        .iter()
        .flat_map(|f| {
            let set: Value = serde_json::from_slice(&std::fs::read(fixtures().join(f)).unwrap()).unwrap();
            set["keys"].as_array().unwrap().clone()
        })
        .collect();
    json!({ "keys": keys }).to_string()
}
