//! The DNS proxy workloads' queries are redirected to (UDP and TCP). Registry hosts
//! of the asker's view are answered with their VIPs without going upstream; other
//! names are forwarded and the answer returned unchanged — after the addresses of
//! NONE and wildcard hosts have been written to the asker's learned set in the
//! kernel, so the first `connect()` after a lookup is never refused.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use egress_common::addr::to_addr;
use egress_common::{LearnedKey, LearnedValue};
use hickory_proto::op::{Edns, Message, MessageType, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType, rdata};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tracing::{debug, warn};

pub use crate::config::DnsProxySettings as Settings;

use super::table::{DnsClient, DnsTables, HostDns, ViewDns};
use crate::telemetry::metrics::Metrics;

/// Where learned destinations go: the dataplane owner, which writes them to the
/// kernel and acknowledges ([`crate::dataplane::owner::Owner`]).
pub trait LearnSink: Send + Sync + 'static {
    fn learn(
        &self,
        entries: Vec<(LearnedKey, LearnedValue)>,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;
}

/// The matching key of a DNS name.
fn key(name: &hickory_proto::rr::Name) -> String {
    crate::registry::host_key(&name.to_ascii())
}

/// A local answer for a query in `view`, if the name is a registry host with VIPs.
pub fn local_answer(query: &Message, view: &ViewDns, ttl: u32) -> Option<Message> {
    let q = query.queries.first()?;
    let host = view.lookup(&q.name().to_ascii())?;
    if !host.answers_locally() {
        return None;
    }
    let mut resp = response_to(query, ResponseCode::NoError);
    resp.metadata.authoritative = true;
    resp.add_query(q.clone());
    match q.query_type() {
        RecordType::A => {
            for ip in &host.v4 {
                resp.add_answer(Record::from_rdata(
                    q.name().clone(),
                    ttl,
                    RData::A(rdata::A(*ip)),
                ));
            }
        }
        RecordType::AAAA => {
            for ip in &host.v6 {
                resp.add_answer(Record::from_rdata(
                    q.name().clone(),
                    ttl,
                    RData::AAAA(rdata::AAAA(*ip)),
                ));
            }
        }
        // Other types of a VIP host get an empty answer: nothing upstream may
        // hand out the real addresses behind the VIP.
        _ => {}
    }
    if query.edns.is_some() {
        resp.set_edns(Edns::new());
    }
    Some(resp)
}

/// What an upstream answer teaches: the host of the view it belongs to (the
/// question name first, then the CNAME chain), its addresses and their lifetime.
pub fn learn_from<'v>(
    reply: &Message,
    view: &'v ViewDns,
) -> Option<(&'v HostDns, Vec<IpAddr>, u32)> {
    let q = reply.queries.first()?;
    let mut chain = vec![key(q.name())];
    let mut ttl = u32::MAX;
    for _ in 0..8 {
        let before = chain.len();
        for r in &reply.answers {
            if let RData::CNAME(target) = &r.data
                && chain.contains(&key(&r.name))
            {
                let t = key(&target.0);
                if !chain.contains(&t) {
                    chain.push(t);
                    ttl = ttl.min(r.ttl);
                }
            }
        }
        if chain.len() == before {
            break;
        }
    }
    let host = chain
        .iter()
        .filter_map(|n| view.lookup(n))
        .find(|h| !h.answers_locally() && !h.learn.is_empty())?;
    let mut ips = Vec::new();
    for r in &reply.answers {
        if !chain.contains(&key(&r.name)) {
            continue;
        }
        let ip = match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        ips.push(ip);
        ttl = ttl.min(r.ttl);
    }
    (!ips.is_empty()).then_some((host, ips, ttl))
}

/// The learned entries for an answer, expiring `now + clamp(ttl)`.
pub fn learned_entries(
    client: DnsClient,
    host: &HostDns,
    ips: &[IpAddr],
    ttl: u32,
    settings: &Settings,
    now_boot_ns: u64,
) -> Vec<(LearnedKey, LearnedValue)> {
    let life = Duration::from_secs(u64::from(ttl))
        .clamp(settings.learned_min_ttl, settings.learned_max_ttl);
    let expires_ns = now_boot_ns + life.as_nanos() as u64;
    let mut out = Vec::new();
    for ip in ips {
        for &(port, proto) in &host.learn {
            out.push((
                LearnedKey {
                    addr: to_addr(*ip),
                    workload_id: client.workload_id,
                    port,
                    proto,
                    _pad: 0,
                },
                LearnedValue {
                    service_id: host.service_id,
                    _pad: 0,
                    expires_ns,
                },
            ));
        }
    }
    out
}

/// An empty response to `query` with `code`: same id and opcode, RD echoed, RA set.
fn response_to(query: &Message, code: ResponseCode) -> Message {
    let mut resp = Message::new(
        query.metadata.id,
        MessageType::Response,
        query.metadata.op_code,
    );
    resp.metadata.recursion_desired = query.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.response_code = code;
    resp
}

fn servfail(query: &Message) -> Option<Vec<u8>> {
    answer(query, ResponseCode::ServFail)
}

/// The running proxy.
pub struct Proxy<L: LearnSink> {
    /// Replaced as a whole when the configuration is reloaded.
    pub settings: watch::Receiver<Arc<Settings>>,
    pub tables: watch::Receiver<Arc<DnsTables>>,
    pub learned: Arc<L>,
    pub metrics: Arc<Metrics>,
}

impl<L: LearnSink> Proxy<L> {
    /// The settings now (a reload may replace them between two queries).
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.borrow().clone()
    }

    /// Answers one query from `src`; `None` drops it.
    pub async fn handle(&self, query: &[u8], src: IpAddr, tcp: bool) -> Option<Vec<u8>> {
        match self.local(query, src) {
            Local::Reply(r) => r,
            Local::Forward(msg) => self.forward(query, &msg, src, tcp).await,
        }
    }

    /// What needs no upstream: a malformed query (dropped), a stranger
    /// (REFUSED), a registry host (its VIPs), a name refused unregistered
    /// (NXDOMAIN). Cheap and synchronous: served even when upstream slots are
    /// all taken.
    pub fn local(&self, query: &[u8], src: IpAddr) -> Local {
        let Ok(msg) = Message::from_vec(query) else {
            self.metrics
                .dns
                .queries
                .with_label_values(&["malformed"])
                .inc();
            return Local::Reply(None);
        };
        let tables = self.tables.borrow().clone();
        let settings = self.settings();
        // Only workloads are answered: the proxy is no open resolver on the node.
        let Some((client, view)) = tables.client(src) else {
            self.metrics
                .dns
                .queries
                .with_label_values(&["refused_source"])
                .inc();
            return Local::Reply(answer(&msg, ResponseCode::Refused));
        };
        if let Some(resp) = local_answer(&msg, view, settings.vip_ttl) {
            self.metrics.dns.queries.with_label_values(&["vip"]).inc();
            return Local::Reply(resp.to_vec().ok());
        }
        if settings.refuse_unregistered
            && client.registry_only
            && msg
                .queries
                .first()
                .is_none_or(|q| view.lookup(&q.name().to_ascii()).is_none())
        {
            // Never forwarded: a name outside the view carries nothing out.
            self.metrics
                .dns
                .queries
                .with_label_values(&["nxdomain_unregistered"])
                .inc();
            return Local::Reply(answer(&msg, ResponseCode::NXDomain));
        }
        Local::Forward(msg)
    }

    /// Forwards `query` (parsed: `msg`) upstream, learns from the answer.
    async fn forward(
        &self,
        query: &[u8],
        msg: &Message,
        src: IpAddr,
        tcp: bool,
    ) -> Option<Vec<u8>> {
        let msg = msg.clone();
        let tables = self.tables.borrow().clone();
        let settings = self.settings();
        let (client, view) = tables.client(src)?;
        // Upstream sees a fresh random id (and a fresh random source port);
        // the reply must answer exactly this question.
        let mut upstream_query = query.to_vec();
        if upstream_query.len() < 12 {
            return None;
        }
        let id: u16 = rand::random();
        upstream_query[..2].copy_from_slice(&id.to_be_bytes());
        let started = Instant::now();
        let reply = if tcp {
            self.upstream_tcp(&settings, &upstream_query, id, &msg)
                .await
        } else {
            self.upstream_udp(&settings, &upstream_query, id, &msg)
                .await
        };
        self.metrics
            .dns
            .upstream_seconds
            .observe(started.elapsed().as_secs_f64());
        let (mut reply, parsed) = match reply {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "upstream DNS failed");
                self.metrics
                    .dns
                    .queries
                    .with_label_values(&["servfail"])
                    .inc();
                return servfail(&msg);
            }
        };
        reply[..2].copy_from_slice(&msg.metadata.id.to_be_bytes());
        if let Some((host, ips, ttl)) = learn_from(&parsed, view) {
            let entries = learned_entries(
                client,
                host,
                &ips,
                ttl,
                &settings,
                crate::telemetry::events::boot_ns(),
            );
            // Written before the answer is released: the client's first
            // connect() after it can never race the map write.
            if let Err(e) = self.learned.learn(entries).await {
                warn!(host = %host.host, error = %e, "cannot record learned addresses");
                self.metrics
                    .dns
                    .queries
                    .with_label_values(&["learn_failed"])
                    .inc();
            } else {
                self.metrics
                    .dns
                    .queries
                    .with_label_values(&["learned"])
                    .inc();
                return Some(reply);
            }
        }
        self.metrics
            .dns
            .queries
            .with_label_values(&["forwarded"])
            .inc();
        Some(reply)
    }

    async fn upstream_udp(
        &self,
        settings: &Settings,
        query: &[u8],
        id: u16,
        asked: &Message,
    ) -> Result<(Vec<u8>, Message), String> {
        let mut last = String::from("no upstream configured");
        for up in &settings.upstream {
            let bind = if up.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            let attempt = async {
                // A new socket per query: a new random source port.
                let sock = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
                sock.connect(up).await.map_err(|e| e.to_string())?;
                sock.send(query).await.map_err(|e| e.to_string())?;
                let mut buf = vec![0u8; 65535];
                loop {
                    let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
                    // Anything that is not the answer to this query is ignored.
                    if let Some(parsed) = answer_to(&buf[..n], id, asked) {
                        buf.truncate(n);
                        return Ok::<_, String>((buf, parsed));
                    }
                    self.metrics
                        .dns
                        .queries
                        .with_label_values(&["reply_mismatch"])
                        .inc();
                }
            };
            match tokio::time::timeout(settings.upstream_timeout, attempt).await {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(e)) => last = format!("{up}: {e}"),
                Err(_) => last = format!("{up}: timeout"),
            }
        }
        Err(last)
    }

    async fn upstream_tcp(
        &self,
        settings: &Settings,
        query: &[u8],
        id: u16,
        asked: &Message,
    ) -> Result<(Vec<u8>, Message), String> {
        let mut last = String::from("no upstream configured");
        for up in &settings.upstream {
            let attempt = async {
                let mut s = TcpStream::connect(up).await.map_err(|e| e.to_string())?;
                s.write_u16(query.len() as u16)
                    .await
                    .map_err(|e| e.to_string())?;
                s.write_all(query).await.map_err(|e| e.to_string())?;
                let n = s.read_u16().await.map_err(|e| e.to_string())?;
                let mut buf = vec![0u8; usize::from(n)];
                s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
                let Some(parsed) = answer_to(&buf, id, asked) else {
                    self.metrics
                        .dns
                        .queries
                        .with_label_values(&["reply_mismatch"])
                        .inc();
                    return Err("the reply does not answer the query".to_owned());
                };
                Ok::<_, String>((buf, parsed))
            };
            match tokio::time::timeout(settings.upstream_timeout, attempt).await {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(e)) => last = format!("{up}: {e}"),
                Err(_) => last = format!("{up}: timeout"),
            }
        }
        Err(last)
    }
}

/// [`Proxy::local`]'s verdict.
pub enum Local {
    /// Answered (or dropped: `None`) without upstream.
    Reply(Option<Vec<u8>>),
    /// To be forwarded upstream.
    Forward(Message),
}

/// Is `reply` the answer to the query `asked` sent upstream with `id`: a
/// response with that id and the same question (name, type, class)?
pub fn answers(reply: &[u8], id: u16, asked: &Message) -> bool {
    answer_to(reply, id, asked).is_some()
}

/// [`answers`], with the reply parsed (once) when it does.
pub fn answer_to(reply: &[u8], id: u16, asked: &Message) -> Option<Message> {
    if reply.len() < 12 || u16::from_be_bytes([reply[0], reply[1]]) != id {
        return None;
    }
    let r = Message::from_vec(reply).ok()?;
    let ok = r.metadata.message_type == MessageType::Response
        && r.queries.len() == asked.queries.len()
        && r.queries.iter().zip(&asked.queries).all(|(a, b)| {
            a.name() == b.name()
                && a.query_type() == b.query_type()
                && a.query_class() == b.query_class()
        });
    ok.then_some(r)
}

/// An empty answer with `code` to `query`, serialised.
fn answer(query: &Message, code: ResponseCode) -> Option<Vec<u8>> {
    let mut resp = response_to(query, code);
    for q in &query.queries {
        resp.add_query(q.clone());
    }
    resp.to_vec().ok()
}

/// Binds a proxy socket with `SO_REUSEPORT`: a new agent binds beside the
/// running one before it stops (a planned restart).
fn reuseport_socket(addr: SocketAddr, ty: socket2::Type) -> std::io::Result<socket2::Socket> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, ty, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

pub fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = reuseport_socket(addr, socket2::Type::DGRAM)?;
    UdpSocket::from_std(s.into())
}

pub fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = reuseport_socket(addr, socket2::Type::STREAM)?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

/// Serves UDP queries on `sock` until `stop` says so; then leaves the
/// `SO_REUSEPORT` group (connecting the socket to itself: the kernel no longer
/// picks a connected socket for other senders), answers what is queued, and
/// returns after the answers in flight are sent.
pub async fn serve_udp<L: LearnSink>(
    sock: UdpSocket,
    proxy: Arc<Proxy<L>>,
    mut stop: watch::Receiver<bool>,
) {
    let sock = Arc::new(sock);
    let mut buf = vec![0u8; 65535];
    let mut inflight = tokio::task::JoinSet::new();
    // Forwarded queries in flight per source.
    let mut pending: std::collections::HashMap<IpAddr, usize> = Default::default();
    let mut stopping = false;
    loop {
        let received = if stopping {
            // Drain: what is queued, without waiting for more.
            match sock.try_recv_from(&mut buf) {
                Ok(r) => Ok(r),
                Err(_) => break,
            }
        } else {
            tokio::select! {
                r = sock.recv_from(&mut buf) => r,
                _ = stop.changed() => {
                    stopping = true;
                    if let Ok(me) = sock.local_addr() {
                        let _ = sock.connect(me).await;
                    }
                    continue;
                }
            }
        };
        let Ok((n, src)) = received else {
            continue;
        };
        let query = &buf[..n];
        let msg = match proxy.local(query, src.ip()) {
            Local::Reply(r) => {
                if let Some(resp) = r {
                    let _ = sock.send_to(&resp, src).await;
                }
                continue;
            }
            Local::Forward(msg) => msg,
        };
        // Upstream slots: a source floods its own share, never another's.
        let ip = src.ip();
        let settings = proxy.settings();
        let mine = pending.get(&ip).copied().unwrap_or(0);
        if mine >= settings.udp_per_source || inflight.len() >= settings.udp_total {
            proxy
                .metrics
                .dns
                .queries
                .with_label_values(&["udp_over_limit"])
                .inc();
            while let Some(Ok(done)) = inflight.try_join_next() {
                release(&mut pending, done);
            }
            continue;
        }
        *pending.entry(ip).or_insert(0) += 1;
        let query = query.to_vec();
        let (p, s) = (proxy.clone(), sock.clone());
        inflight.spawn(async move {
            if let Some(resp) = p.forward(&query, &msg, ip, false).await {
                let _ = s.send_to(&resp, src).await;
            }
            ip
        });
        while let Some(Ok(done)) = inflight.try_join_next() {
            release(&mut pending, done);
        }
    }
    while inflight.join_next().await.is_some() {}
}

fn release(pending: &mut std::collections::HashMap<IpAddr, usize>, ip: IpAddr) {
    if let Some(n) = pending.get_mut(&ip) {
        *n -= 1;
        if *n == 0 {
            pending.remove(&ip);
        }
    }
}

/// Serves DNS over TCP on `listener` until `stop` says so. A connection gets
/// `tcp_read_timeout` for each message; connections beyond the per-source and
/// total caps are closed at once; an accept error (out of descriptors) backs
/// off instead of spinning.
pub async fn serve_tcp<L: LearnSink>(
    listener: TcpListener,
    proxy: Arc<Proxy<L>>,
    mut stop: watch::Receiver<bool>,
) {
    let open: Arc<Mutex<std::collections::HashMap<IpAddr, usize>>> = Arc::default();
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        let (mut stream, src) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(10);
                a
            }
            Err(e) => {
                warn!(error = %e, "DNS proxy: accept failed; backing off {backoff:?}");
                proxy
                    .metrics
                    .dns
                    .queries
                    .with_label_values(&["accept_error"])
                    .inc();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let ip = src.ip();
        let admitted = {
            let mut open = open.lock().expect("tcp table lock");
            let total: usize = open.values().sum();
            let mine = open.entry(ip).or_insert(0);
            let settings = proxy.settings();
            if *mine >= settings.tcp_per_source || total >= settings.tcp_total {
                false
            } else {
                *mine += 1;
                true
            }
        };
        if !admitted {
            proxy
                .metrics
                .dns
                .queries
                .with_label_values(&["tcp_over_limit"])
                .inc();
            drop(stream);
            continue;
        }
        let (p, open) = (proxy.clone(), open.clone());
        tokio::spawn(async move {
            let timeout = p.settings().tcp_read_timeout;
            loop {
                // The whole message (length and body) within the timeout.
                let read = async {
                    let n = stream.read_u16().await?;
                    let mut query = vec![0u8; usize::from(n)];
                    stream.read_exact(&mut query).await?;
                    Ok::<_, std::io::Error>(query)
                };
                let Ok(Ok(query)) = tokio::time::timeout(timeout, read).await else {
                    break;
                };
                let Some(resp) = p.handle(&query, ip, true).await else {
                    break;
                };
                if stream.write_u16(resp.len() as u16).await.is_err()
                    || stream.write_all(&resp).await.is_err()
                {
                    break;
                }
            }
            let mut open = open.lock().expect("tcp table lock");
            if let Some(n) = open.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&ip);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn query(name: &str, t: RecordType) -> Message {
        let mut m = Message::new(4242, MessageType::Query, hickory_proto::op::OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m
    }

    fn view() -> ViewDns {
        let mut v = ViewDns::default();
        v.exact.insert(
            "api.example.com".into(),
            HostDns {
                host: "api.example.com".into(),
                service_id: 1,
                v4: vec!["240.240.0.9".parse().unwrap()],
                v6: vec!["2001:2::f0f0:9".parse().unwrap()],
                learn: vec![],
            },
        );
        v.wildcards.push((
            ".googleapis.com".into(),
            HostDns {
                host: "*.googleapis.com".into(),
                service_id: 2,
                learn: vec![(443, egress_common::PROTO_TCP)],
                ..HostDns::default()
            },
        ));
        v
    }

    #[test]
    fn vip_hosts_are_answered_locally() {
        let v = view();
        let r = local_answer(&query("API.example.com.", RecordType::A), &v, 30).unwrap();
        assert_eq!(r.metadata.id, 4242);
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.answers[0].ttl, 30);
        assert_eq!(
            &r.answers[0].data,
            &RData::A(rdata::A("240.240.0.9".parse().unwrap()))
        );
        let r = local_answer(&query("api.example.com.", RecordType::AAAA), &v, 30).unwrap();
        assert_eq!(
            &r.answers[0].data,
            &RData::AAAA(rdata::AAAA("2001:2::f0f0:9".parse().unwrap()))
        );
        let r = local_answer(&query("api.example.com.", RecordType::MX), &v, 30).unwrap();
        assert!(r.answers.is_empty());
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(local_answer(&query("storage.googleapis.com.", RecordType::A), &v, 30).is_none());
        assert!(local_answer(&query("other.org.", RecordType::A), &v, 30).is_none());
    }

    #[test]
    fn upstream_answers_are_learned_through_cnames() {
        let mut reply = query("storage.googleapis.com.", RecordType::A);
        reply.metadata.message_type = MessageType::Response;
        let name = |n: &str| Name::from_ascii(n).unwrap();
        reply.add_answer(Record::from_rdata(
            name("storage.googleapis.com."),
            300,
            RData::CNAME(rdata::CNAME(name("edge.cdn.example."))),
        ));
        reply.add_answer(Record::from_rdata(
            name("edge.cdn.example."),
            20,
            RData::A(rdata::A("203.0.113.7".parse().unwrap())),
        ));
        reply.add_answer(Record::from_rdata(
            name("unrelated.example."),
            20,
            RData::A(rdata::A("203.0.113.99".parse().unwrap())),
        ));
        let v = view();
        let (host, ips, ttl) = learn_from(&reply, &v).unwrap();
        assert_eq!(host.service_id, 2);
        assert_eq!(ips, ["203.0.113.7".parse::<IpAddr>().unwrap()]);
        assert_eq!(ttl, 20);
        let settings = Settings {
            listen: vec![],
            upstream: vec![],
            vip_ttl: 30,
            learned_min_ttl: Duration::from_secs(30),
            learned_max_ttl: Duration::from_secs(3600),
            upstream_timeout: Duration::from_secs(1),
            refuse_unregistered: false,
            tcp_read_timeout: Duration::from_secs(5),
            tcp_per_source: 16,
            tcp_total: 1024,
            udp_per_source: 64,
            udp_total: 1024,
            queries_per_second: 0,
        };
        let client = DnsClient {
            workload_id: 5,
            view_id: 1,
            registry_only: true,
        };
        let e = learned_entries(client, host, &ips, ttl, &settings, 1_000);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0.port, 443);
        assert_eq!(e[0].0.workload_id, 5);
        assert_eq!(
            e[0].1.expires_ns,
            1_000 + 30_000_000_000,
            "clamped up to the minimum"
        );
        // A name outside the view teaches nothing.
        let other = query("other.org.", RecordType::A);
        assert!(learn_from(&other, &v).is_none());
    }

    #[test]
    fn a_reply_counts_only_for_its_id_and_question() {
        let asked = query("api.example.com.", RecordType::A);
        let reply = |id: u16, name: &str, t: RecordType| {
            let mut r = query(name, t);
            r.metadata.id = id;
            r.metadata.message_type = MessageType::Response;
            r.to_vec().unwrap()
        };
        assert!(answers(
            &reply(7, "api.example.com.", RecordType::A),
            7,
            &asked
        ));
        assert!(
            answers(&reply(7, "API.Example.com.", RecordType::A), 7, &asked),
            "names compare without case"
        );
        assert!(!answers(
            &reply(8, "api.example.com.", RecordType::A),
            7,
            &asked
        ));
        assert!(!answers(
            &reply(7, "evil.example.com.", RecordType::A),
            7,
            &asked
        ));
        assert!(!answers(
            &reply(7, "api.example.com.", RecordType::AAAA),
            7,
            &asked
        ));
        // A query is not an answer.
        let mut q = query("api.example.com.", RecordType::A);
        q.metadata.id = 7;
        assert!(!answers(&q.to_vec().unwrap(), 7, &asked));
        assert!(!answers(&[0, 7], 7, &asked));
    }
}
