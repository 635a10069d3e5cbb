//! A real authoritative DNS server for the tests, in a test namespace, whose
//! records and TTLs the test controls at run time (and which can be made to stop
//! answering). UDP and TCP; A, AAAA and CNAME; every query is recorded. Over UDP
//! it can also be made to send forged replies before the real one: one with
//! another question, one with another id (what an off-path attacker racing the
//! real answer sends).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType, rdata};

use crate::Netns;

#[derive(Clone, Debug)]
enum Rec {
    Ip(IpAddr),
    Cname(String),
}

type Zone = HashMap<String, (u32, Vec<Rec>)>;

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The server; stops on drop.
pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    /// Queried name → (forged owner name, forged address).
    spoof: Arc<Mutex<HashMap<String, (String, IpAddr)>>>,
    /// Names starting with one of these are never answered (a slow upstream).
    silent: Arc<Mutex<Vec<String>>>,
    queries: Arc<Mutex<Vec<(String, RecordType, bool)>>>,
    up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Serves on `addr` (UDP and TCP) inside `ns`.
    pub fn start(ns: &Netns, addr: SocketAddr) -> Self {
        let zone = Arc::new(Mutex::new(Zone::new()));
        let spoof: Arc<Mutex<HashMap<String, (String, IpAddr)>>> = Arc::default();
        let silent: Arc<Mutex<Vec<String>>> = Arc::default();
        let queries = Arc::new(Mutex::new(Vec::new()));
        let up = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (tx, rx) = std::sync::mpsc::channel();
        for tcp in [false, true] {
            let spoof = spoof.clone();
            let silent = silent.clone();
            let (zone, queries, up, stop, tx) = (
                zone.clone(),
                queries.clone(),
                up.clone(),
                stop.clone(),
                tx.clone(),
            );
            let path = ns.path();
            threads.push(std::thread::spawn(move || {
                crate::enter_netns(&path);
                if tcp {
                    let l = TcpListener::bind(addr).expect("bind DNS/TCP");
                    l.set_nonblocking(true).unwrap();
                    tx.send(()).unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        match l.accept() {
                            Ok((mut s, _)) => {
                                s.set_nonblocking(false).ok();
                                s.set_read_timeout(Some(Duration::from_secs(2))).ok();
                                let mut len = [0u8; 2];
                                while s.read_exact(&mut len).is_ok() {
                                    let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                                    if s.read_exact(&mut q).is_err() {
                                        break;
                                    }
                                    if !up.load(Ordering::Relaxed) {
                                        break;
                                    }
                                    if let Some(r) = answer(&q, &zone, &queries, true) {
                                        let _ = s.write_all(&(r.len() as u16).to_be_bytes());
                                        let _ = s.write_all(&r);
                                    }
                                }
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(5)),
                        }
                    }
                } else {
                    let sock = UdpSocket::bind(addr).expect("bind DNS/UDP");
                    sock.set_read_timeout(Some(Duration::from_millis(50)))
                        .unwrap();
                    tx.send(()).unwrap();
                    let mut buf = [0u8; 4096];
                    while !stop.load(Ordering::Relaxed) {
                        let Ok((n, src)) = sock.recv_from(&mut buf) else {
                            continue;
                        };
                        if !up.load(Ordering::Relaxed) || is_silent(&buf[..n], &silent) {
                            continue;
                        }
                        for f in forged(&buf[..n], &spoof) {
                            let _ = sock.send_to(&f, src);
                        }
                        if let Some(r) = answer(&buf[..n], &zone, &queries, false) {
                            let _ = sock.send_to(&r, src);
                        }
                    }
                }
            }));
        }
        rx.recv().unwrap();
        rx.recv().unwrap();
        Self {
            addr,
            zone,
            spoof,
            silent,
            queries,
            up,
            stop,
            threads,
        }
    }

    /// Sets the A/AAAA records of `name` (replacing what it had).
    pub fn set_ips(&self, name: &str, ips: &[&str], ttl: u32) {
        let recs = ips.iter().map(|i| Rec::Ip(i.parse().unwrap())).collect();
        self.zone.lock().unwrap().insert(key(name), (ttl, recs));
    }

    /// Makes `name` a CNAME for `target`.
    pub fn set_cname(&self, name: &str, target: &str, ttl: u32) {
        self.zone
            .lock()
            .unwrap()
            .insert(key(name), (ttl, vec![Rec::Cname(key(target))]));
    }

    /// Before each real UDP answer for `name`, sends two forged replies giving
    /// `forged_name` (another question) and `name` (another id) the address `ip`.
    pub fn set_spoof(&self, name: &str, forged_name: &str, ip: &str) {
        self.spoof
            .lock()
            .unwrap()
            .insert(key(name), (key(forged_name), ip.parse().unwrap()));
    }

    /// Never answers (over UDP) names that start with `prefix`.
    pub fn set_silent(&self, prefix: &str) {
        self.silent.lock().unwrap().push(prefix.to_owned());
    }

    /// Stops (false) or resumes (true) answering: queries then time out.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }

    /// How many queries for `name` arrived (over TCP when `tcp`).
    pub fn queries_for(&self, name: &str, tcp: Option<bool>) -> usize {
        self.queries
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _, t)| *n == key(name) && tcp.is_none_or(|x| x == *t))
            .count()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn is_silent(q: &[u8], silent: &Mutex<Vec<String>>) -> bool {
    let Ok(msg) = Message::from_vec(q) else {
        return false;
    };
    let Some(query) = msg.queries.first() else {
        return false;
    };
    let name = key(&query.name().to_ascii());
    silent
        .lock()
        .unwrap()
        .iter()
        .any(|p| name.starts_with(p.as_str()))
}

/// The forged replies for query `q`, if its name is set to be spoofed.
fn forged(q: &[u8], spoof: &Mutex<HashMap<String, (String, IpAddr)>>) -> Vec<Vec<u8>> {
    let Ok(msg) = Message::from_vec(q) else {
        return Vec::new();
    };
    let Some(query) = msg.queries.first() else {
        return Vec::new();
    };
    let Some((other, ip)) = spoof
        .lock()
        .unwrap()
        .get(&key(&query.name().to_ascii()))
        .cloned()
    else {
        return Vec::new();
    };
    let IpAddr::V4(v4) = ip else {
        return Vec::new();
    };
    let reply = |id: u16, owner: &str| {
        let owner = Name::from_ascii(format!("{owner}.")).unwrap();
        let mut r = Message::new(id, MessageType::Response, msg.metadata.op_code);
        r.metadata.recursion_available = true;
        r.add_query(hickory_proto::op::Query::query(
            owner.clone(),
            RecordType::A,
        ));
        r.add_answer(Record::from_rdata(owner, 300, RData::A(rdata::A(v4))));
        r.to_vec().unwrap()
    };
    let asked = key(&query.name().to_ascii());
    vec![
        reply(msg.metadata.id, &other),
        reply(msg.metadata.id.wrapping_add(1), &asked),
    ]
}

fn answer(
    q: &[u8],
    zone: &Mutex<Zone>,
    queries: &Mutex<Vec<(String, RecordType, bool)>>,
    tcp: bool,
) -> Option<Vec<u8>> {
    let msg = Message::from_vec(q).ok()?;
    let query = msg.queries.first()?.clone();
    queries
        .lock()
        .unwrap()
        .push((key(&query.name().to_ascii()), query.query_type(), tcp));
    let mut resp = Message::new(msg.metadata.id, MessageType::Response, msg.metadata.op_code);
    resp.metadata.recursion_desired = msg.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.authoritative = true;
    resp.add_query(query.clone());
    let zone = zone.lock().unwrap();
    let mut name = key(&query.name().to_ascii());
    let mut found = false;
    for _ in 0..8 {
        let Some((ttl, recs)) = zone.get(&name) else {
            break;
        };
        found = true;
        let owner = Name::from_ascii(format!("{name}.")).unwrap();
        let mut next = None;
        for r in recs {
            match r {
                Rec::Cname(t) => {
                    resp.add_answer(Record::from_rdata(
                        owner.clone(),
                        *ttl,
                        RData::CNAME(rdata::CNAME(Name::from_ascii(format!("{t}.")).unwrap())),
                    ));
                    next = Some(t.clone());
                }
                Rec::Ip(IpAddr::V4(a)) if query.query_type() == RecordType::A => {
                    resp.add_answer(Record::from_rdata(
                        owner.clone(),
                        *ttl,
                        RData::A(rdata::A(*a)),
                    ));
                }
                Rec::Ip(IpAddr::V6(a)) if query.query_type() == RecordType::AAAA => {
                    resp.add_answer(Record::from_rdata(
                        owner.clone(),
                        *ttl,
                        RData::AAAA(rdata::AAAA(*a)),
                    ));
                }
                _ => {}
            }
        }
        match next {
            Some(t) => name = t,
            None => break,
        }
    }
    if !found {
        resp.metadata.response_code = ResponseCode::NXDomain;
    }
    resp.to_vec().ok()
}
