//! A loopback backend that tells the test what it received: it answers every request with a
//! JSON echo of the model headers and body it got, can add outcome metrics (the
//! `x-evolve-outcome` header or an `evolve_outcome` field), and can hold requests until the
//! test releases them (a backend that does not answer in time, without any sleep).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

/// What one request carried.
#[derive(Debug, Clone)]
pub struct Seen {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Default)]
struct Behaviour {
    outcome_header: Option<String>,
    outcome_field: Option<Value>,
    held: bool,
}

#[derive(Default)]
struct Shared {
    behaviour: Mutex<Behaviour>,
    released: Condvar,
    seen: Mutex<Vec<Seen>>,
    arrived: Condvar,
}

pub struct EchoBackend {
    pub id: String,
    pub addr: String,
    shared: Arc<Shared>,
}

impl EchoBackend {
    pub fn start(id: &str) -> EchoBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let shared = Arc::new(Shared::default());
        let server = Arc::clone(&shared);
        let name = id.to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let shared = Arc::clone(&server);
                let name = name.clone();
                std::thread::spawn(move || serve(stream, &shared, &name));
            }
        });
        EchoBackend {
            id: id.to_string(),
            addr,
            shared,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Later answers carry `x-evolve-outcome: <text>` (`None`: no header).
    pub fn set_outcome_header(&self, text: Option<&str>) {
        self.shared.behaviour.lock().unwrap().outcome_header = text.map(str::to_string);
    }

    /// Later answers carry `"evolve_outcome": <value>` (`None`: no field).
    pub fn set_outcome_field(&self, value: Option<Value>) {
        self.shared.behaviour.lock().unwrap().outcome_field = value;
    }

    /// Requests arriving from now on wait (unanswered) until [`EchoBackend::release`].
    pub fn hold(&self) {
        self.shared.behaviour.lock().unwrap().held = true;
    }

    pub fn release(&self) {
        self.shared.behaviour.lock().unwrap().held = false;
        self.shared.released.notify_all();
    }

    /// Every request received so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// The last request received.
    pub fn last(&self) -> Seen {
        self.seen()
            .last()
            .cloned()
            .unwrap_or_else(|| panic!("backend {} received nothing", self.id))
    }

    /// Waits until at least `n` requests arrived (health checks included).
    pub fn wait_requests(&self, n: usize) {
        let seen = self.shared.seen.lock().unwrap();
        let (_seen, timeout) = self
            .shared
            .arrived
            .wait_timeout_while(seen, super::EVENT_TIMEOUT, |s| s.len() < n)
            .unwrap();
        assert!(!timeout.timed_out(), "backend {}: no request {n}", self.id);
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.release();
    }
}

fn serve(stream: std::net::TcpStream, shared: &Shared, id: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut stream = write_half;
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut headers = Vec::new();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line.trim_end().is_empty() => break,
                Ok(_) => {
                    if let Some((k, v)) = line.split_once(':') {
                        let (k, v) = (k.trim().to_string(), v.trim().to_string());
                        if k.eq_ignore_ascii_case("content-length") {
                            length = v.parse().unwrap_or(0);
                        }
                        headers.push((k, v));
                    }
                }
            }
        }
        let mut body = vec![0; length.min(1 << 20)];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let seen = Seen { headers, body };
        let health = request_line.contains(" /health");
        let (outcome_header, outcome_field) = {
            let behaviour = shared.behaviour.lock().unwrap();
            let behaviour = if health {
                behaviour
            } else {
                shared.released.wait_while(behaviour, |b| b.held).unwrap()
            };
            (
                behaviour.outcome_header.clone(),
                behaviour.outcome_field.clone(),
            )
        };
        let mut answer = json!({
            "backend": id,
            "model": seen.header("x-evolve-model"),
            "model_version": seen.header("x-evolve-model-version"),
            "model_source": seen.header("x-evolve-model-source"),
            "body": seen.json(),
        });
        if let Some(field) = outcome_field {
            answer["evolve_outcome"] = field;
        }
        {
            shared.seen.lock().unwrap().push(seen);
            shared.arrived.notify_all();
        }
        let text = answer.to_string();
        let outcome = outcome_header
            .map(|o| format!("x-evolve-outcome: {o}\r\n"))
            .unwrap_or_default();
        let written = write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{outcome}\r\n{}",
            text.len(),
            // A HEAD answer has the length of the GET's body, and no body.
            if request_line.starts_with("HEAD ") {
                ""
            } else {
                &text
            }
        );
        if written.is_err() {
            return;
        }
    }
}
