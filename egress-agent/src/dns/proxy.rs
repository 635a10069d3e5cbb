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

use super::table::{DnsClient, DnsTables, HostDns, ViewDns};
use crate::metrics::Metrics;

/// Proxy settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub listen: Vec<SocketAddr>,
    pub upstream: Vec<SocketAddr>,
    /// TTL of VIP answers.
    pub vip_ttl: u32,
    /// Clamp of learned entries' lifetime (SPEC §7.1 `dnsLearnedMinTtl/MaxTtl`).
    pub learned_min_ttl: Duration,
    pub learned_max_ttl: Duration,
    pub upstream_timeout: Duration,
}

/// Where learned destinations go: the kernel map in the agent.
pub trait LearnSink: Send + Sync + 'static {
    fn learn(&self, entries: &[(LearnedKey, LearnedValue)]) -> Result<(), String>;
}

impl LearnSink for Mutex<crate::loader::LearnedMap> {
    fn learn(&self, entries: &[(LearnedKey, LearnedValue)]) -> Result<(), String> {
        let mut map = self.lock().expect("learned map lock");
        for (k, v) in entries {
            map.insert(k, v, 0).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
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
    let mut resp = response_to(query, ResponseCode::ServFail);
    for q in &query.queries {
        resp.add_query(q.clone());
    }
    resp.to_vec().ok()
}

/// The running proxy.
pub struct Proxy<L: LearnSink> {
    pub settings: Settings,
    pub tables: watch::Receiver<Arc<DnsTables>>,
    pub learned: Arc<L>,
    pub metrics: Arc<Metrics>,
}

impl<L: LearnSink> Proxy<L> {
    /// Answers one query from `src`; `None` drops it.
    pub async fn handle(&self, query: &[u8], src: IpAddr, tcp: bool) -> Option<Vec<u8>> {
        let Ok(msg) = Message::from_vec(query) else {
            self.metrics
                .dns_queries
                .with_label_values(&["malformed"])
                .inc();
            return None;
        };
        let tables = self.tables.borrow().clone();
        let client = tables.client(src);
        if let Some((_, view)) = client
            && let Some(resp) = local_answer(&msg, view, self.settings.vip_ttl)
        {
            self.metrics.dns_queries.with_label_values(&["vip"]).inc();
            return resp.to_vec().ok();
        }
        let started = Instant::now();
        let reply = if tcp {
            self.upstream_tcp(query).await
        } else {
            self.upstream_udp(query, msg.metadata.id).await
        };
        self.metrics
            .dns_upstream_seconds
            .observe(started.elapsed().as_secs_f64());
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "upstream DNS failed");
                self.metrics
                    .dns_queries
                    .with_label_values(&["servfail"])
                    .inc();
                return servfail(&msg);
            }
        };
        if let Some((c, view)) = client
            && let Ok(parsed) = Message::from_vec(&reply)
            && let Some((host, ips, ttl)) = learn_from(&parsed, view)
        {
            let entries =
                learned_entries(c, host, &ips, ttl, &self.settings, crate::events::boot_ns());
            // Written before the answer is released: the client's first
            // connect() after it can never race the map write.
            if let Err(e) = self.learned.learn(&entries) {
                warn!(host = %host.host, error = %e, "cannot record learned addresses");
                self.metrics
                    .dns_queries
                    .with_label_values(&["learn_failed"])
                    .inc();
            } else {
                self.metrics
                    .dns_queries
                    .with_label_values(&["learned"])
                    .inc();
                return Some(reply);
            }
        }
        self.metrics
            .dns_queries
            .with_label_values(&["forwarded"])
            .inc();
        Some(reply)
    }

    async fn upstream_udp(&self, query: &[u8], id: u16) -> Result<Vec<u8>, String> {
        let mut last = String::from("no upstream configured");
        for up in &self.settings.upstream {
            let bind = if up.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            let attempt = async {
                let sock = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
                sock.connect(up).await.map_err(|e| e.to_string())?;
                sock.send(query).await.map_err(|e| e.to_string())?;
                let mut buf = vec![0u8; 65535];
                loop {
                    let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
                    // Ignore anything that is not the answer to this query.
                    if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                        buf.truncate(n);
                        return Ok::<_, String>(buf);
                    }
                }
            };
            match tokio::time::timeout(self.settings.upstream_timeout, attempt).await {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(e)) => last = format!("{up}: {e}"),
                Err(_) => last = format!("{up}: timeout"),
            }
        }
        Err(last)
    }

    async fn upstream_tcp(&self, query: &[u8]) -> Result<Vec<u8>, String> {
        let mut last = String::from("no upstream configured");
        for up in &self.settings.upstream {
            let attempt = async {
                let mut s = TcpStream::connect(up).await.map_err(|e| e.to_string())?;
                s.write_u16(query.len() as u16)
                    .await
                    .map_err(|e| e.to_string())?;
                s.write_all(query).await.map_err(|e| e.to_string())?;
                let n = s.read_u16().await.map_err(|e| e.to_string())?;
                let mut buf = vec![0u8; usize::from(n)];
                s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
                Ok::<_, String>(buf)
            };
            match tokio::time::timeout(self.settings.upstream_timeout, attempt).await {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(e)) => last = format!("{up}: {e}"),
                Err(_) => last = format!("{up}: timeout"),
            }
        }
        Err(last)
    }
}

/// Serves UDP queries on `sock` until the task is dropped.
pub async fn serve_udp<L: LearnSink>(sock: UdpSocket, proxy: Arc<Proxy<L>>) {
    let sock = Arc::new(sock);
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((n, src)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let query = buf[..n].to_vec();
        let (p, s) = (proxy.clone(), sock.clone());
        tokio::spawn(async move {
            if let Some(resp) = p.handle(&query, src.ip(), false).await {
                let _ = s.send_to(&resp, src).await;
            }
        });
    }
}

/// Serves DNS over TCP on `listener` until the task is dropped.
pub async fn serve_tcp<L: LearnSink>(listener: TcpListener, proxy: Arc<Proxy<L>>) {
    loop {
        let Ok((mut stream, src)) = listener.accept().await else {
            continue;
        };
        let p = proxy.clone();
        tokio::spawn(async move {
            loop {
                let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(10), stream.read_u16()).await
                else {
                    return;
                };
                let mut query = vec![0u8; usize::from(n)];
                if stream.read_exact(&mut query).await.is_err() {
                    return;
                }
                let Some(resp) = p.handle(&query, src.ip(), true).await else {
                    return;
                };
                if stream.write_u16(resp.len() as u16).await.is_err()
                    || stream.write_all(&resp).await.is_err()
                {
                    return;
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
        };
        let client = DnsClient {
            workload_id: 5,
            view_id: 1,
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
}
