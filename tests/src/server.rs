//! Real TCP servers inside test namespaces, run on threads of the test process that
//! entered the namespace. They record every connection and answer with their name,
//! speaking enough HTTP/1.x for curl and a line protocol for the probe.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::Netns;

/// One connection a server accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    pub peer: SocketAddr,
    /// First line the client sent.
    pub first_line: String,
}

/// A listening server; stops on drop.
pub struct Server {
    pub name: String,
    pub addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Listens on `addr` inside `ns`. Replies `hello from NAME` (as an HTTP body
    /// when the request looks like HTTP).
    pub fn start(ns: &Netns, addr: SocketAddr, name: &str) -> Self {
        let hits = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let ns_path = ns.path();
        let (h, s, n) = (hits.clone(), stop.clone(), name.to_owned());
        let thread = std::thread::spawn(move || {
            crate::enter_netns(&ns_path);
            let listener = TcpListener::bind(addr);
            let listener = match listener {
                Ok(l) => l,
                Err(e) => {
                    tx.send(Err(e.to_string())).unwrap();
                    return;
                }
            };
            listener.set_nonblocking(true).unwrap();
            tx.send(Ok(())).unwrap();
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        let (h, n) = (h.clone(), n.clone());
                        std::thread::spawn(move || serve(stream, peer, &n, &h));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break,
                }
            }
        });
        rx.recv()
            .unwrap()
            .unwrap_or_else(|e| panic!("server {name} on {addr}: {e}"));
        Self {
            name: name.into(),
            addr,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    pub fn hit_count(&self) -> usize {
        self.hits.lock().unwrap().len()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut stream: TcpStream, peer: SocketAddr, name: &str, hits: &Mutex<Vec<Hit>>) {
    stream.set_nonblocking(false).ok();
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Read until a full line (probe) or a full header block (HTTP).
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                let http = text.starts_with("GET ")
                    || text.starts_with("POST ")
                    || text.starts_with("HEAD ");
                if (http && text.contains("\r\n\r\n")) || (!http && text.contains('\n')) {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let first_line = text.lines().next().unwrap_or("").to_owned();
    hits.lock().unwrap().push(Hit {
        peer,
        first_line: first_line.clone(),
    });
    // GET /bytes/N answers with N bytes (for traffic accounting tests).
    if let Some(n) = first_line
        .strip_prefix("GET /bytes/")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse::<usize>().ok())
    {
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n"
        );
        let chunk = vec![b'x'; 64 * 1024];
        let mut left = n;
        while left > 0 {
            let k = left.min(chunk.len());
            if stream.write_all(&chunk[..k]).is_err() {
                return;
            }
            left -= k;
        }
        let _ = stream.flush();
        return;
    }
    let body = format!("hello from {name}\n");
    if first_line.contains("HTTP/1.") {
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    } else {
        let _ = stream.write_all(body.as_bytes());
    }
    let _ = stream.flush();
}

/// A UDP server that answers every datagram with `echo from NAME`; stops on drop.
pub struct UdpServer {
    pub addr: SocketAddr,
    hits: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpServer {
    pub fn start(ns: &Netns, addr: SocketAddr, name: &str) -> Self {
        let hits = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (h, s, n, path) = (hits.clone(), stop.clone(), name.to_owned(), ns.path());
        let thread = std::thread::spawn(move || {
            crate::enter_netns(&path);
            let sock = std::net::UdpSocket::bind(addr).expect("bind UDP server");
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            tx.send(()).unwrap();
            let mut buf = [0u8; 2048];
            let reply = format!("echo from {n}\n");
            while !s.load(Ordering::Relaxed) {
                if let Ok((_, src)) = sock.recv_from(&mut buf) {
                    h.lock().unwrap().push(src);
                    let _ = sock.send_to(reply.as_bytes(), src);
                }
            }
        });
        rx.recv().unwrap();
        Self {
            addr,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    pub fn hit_count(&self) -> usize {
        self.hits.lock().unwrap().len()
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
