//! DNS on the real kernel: workloads' queries captured into the agent's proxy, VIP
//! answers, DNS/DNS_ROUND_ROBIN endpoints following a real upstream server's
//! records, learned addresses for NONE and wildcard hosts, per-namespace views.
//! Clients are dig, getent (glibc getaddrinfo), curl and plain sockets.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use egress_tests::dns::DnsServer;
use egress_tests::server::Server;
use egress_tests::*;

/// A world with `externals` server hosts and one more host running the upstream
/// DNS server; the agent config block that points the agent at it.
fn dns_world(pods: usize, externals: usize) -> (World, DnsServer, String) {
    let w = World::with_pods(pods, externals + 1);
    let dns_host = externals + 1;
    let addr = SocketAddr::new(ext_v4(dns_host), 53);
    let server = DnsServer::start(w.net.ext(dns_host), addr);
    let extra = format!(
        r#"dns:
  listen: ["{NODE_V4}:53", "[{NODE_V6}]:53"]
  upstream: ["{addr}"]
  vipTtl: 5s
  learnedMinTtl: 1s
  learnedMaxTtl: 60s
  upstreamTimeout: 500ms
resolver:
  upstream: ["{addr}"]
  minTtl: 1s
  retry: 300ms
  timeout: 300ms
  staleLimit: 1h
"#
    );
    (w, server, extra)
}

fn server(w: &World, i: usize, port: u16) -> Server {
    w.ext_server(i, port, &format!("ext{i}"))
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// `dig +short` from a place; the answer lines.
fn dig(place: &Place, args: &[&str]) -> Vec<String> {
    let mut a = vec!["+short", "+time=2", "+tries=1"];
    a.extend_from_slice(args);
    let out = place.run("dig", &a);
    assert!(
        out.status.success(),
        "dig {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out).lines().map(str::to_owned).collect()
}

const DNS_SE: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payments, namespace: shop}
spec:
  hosts: [api.payments.example]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
"#;

#[test]
fn vip_answer_from_the_proxy_then_connect_through_it() {
    let (w, upstream, extra) = dns_world(1, 1);
    upstream.set_ips("api.payments.example", &["198.18.0.11"], 60);
    w.write_se("payments.yaml", DNS_SE);
    let _e1 = server(&w, 1, 8080);
    let agent = w.start_agent("REGISTRY_ONLY", &extra);

    // dig at an arbitrary resolver: captured, answered with the VIP, and the
    // reply appears to come from the server dig asked.
    let out = w.pod().run(
        "dig",
        &[
            "+time=2",
            "+tries=1",
            "@192.0.2.53",
            "api.payments.example",
            "A",
        ],
    );
    let text = stdout(&out);
    assert!(text.contains("SERVER: 192.0.2.53#53"), "{text}");
    let vip = dig(&w.pod(), &["@192.0.2.53", "api.payments.example", "A"]);
    assert_eq!(vip.len(), 1, "{vip:?}");
    assert!(vip[0].starts_with("240.240."), "{vip:?}");
    // glibc getaddrinfo through the system resolver (connected UDP socket).
    let out = w.pod().run("getent", &["ahostsv4", "api.payments.example"]);
    assert!(
        stdout(&out).starts_with(&vip[0]),
        "getent: {}",
        stdout(&out)
    );
    // curl by name reaches the endpoint the agent resolved.
    let out = w
        .pod()
        .run("curl", &["-sS", "-m", "5", "http://api.payments.example/"]);
    assert_eq!(
        stdout(&out),
        "hello from ext1",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The endpoint's own address is no registry address (SPEC §7.3): refused
    // when connected to directly. The upstream never saw a workload's query for
    // the name (only the agent's resolver asks for it).
    assert_eq!(w.pod().connect(sa("198.18.0.11:8080")).errno, EPERM);
    let m = agent.metrics_text();
    assert!(
        metric_sum(&m, "egress_dns_queries_total", &[("result", "vip")]) >= 3.0,
        "{m}"
    );
}

#[test]
fn dns_resolution_keeps_every_address_and_spreads_connections() {
    let (w, upstream, extra) = dns_world(1, 2);
    upstream.set_ips("api.payments.example", &["198.18.0.11", "198.18.0.12"], 60);
    w.write_se("payments.yaml", DNS_SE);
    let (e1, e2) = (server(&w, 1, 8080), server(&w, 2, 8080));
    let _agent = w.start_agent("REGISTRY_ONLY", &extra);
    let vip = dig(&w.pod(), &["api.payments.example"])[0].clone();
    for _ in 0..30 {
        assert!(w.pod().connect(sa(&format!("{vip}:80"))).ok);
    }
    assert_eq!(e1.hit_count() + e2.hit_count(), 30);
    assert!(
        e1.hit_count() > 0 && e2.hit_count() > 0,
        "{} / {}",
        e1.hit_count(),
        e2.hit_count()
    );
}

#[test]
fn failover_of_the_record_is_followed_within_ttl_and_refresh() {
    let (w, upstream, extra) = dns_world(1, 2);
    let ttl = 2;
    upstream.set_ips("api.payments.example", &["198.18.0.11"], ttl);
    w.write_se(
        "payments.yaml",
        &DNS_SE.replace("resolution: DNS", "resolution: DNS_ROUND_ROBIN"),
    );
    let (_e1, _e2) = (server(&w, 1, 8080), server(&w, 2, 8080));
    let _agent = w.start_agent("REGISTRY_ONLY", &extra);
    let vip = dig(&w.pod(), &["api.payments.example"])[0].clone();
    assert_eq!(
        w.pod().connect(sa(&format!("{vip}:80"))).reply,
        "hello from ext1\n"
    );

    // The primary fails over: the record now names the other host.
    upstream.set_ips("api.payments.example", &["198.18.0.12"], ttl);
    let changed = Instant::now();
    let mut switched = None;
    while changed.elapsed() < Duration::from_secs(8) {
        let r = w.pod().connect(sa(&format!("{vip}:80")));
        assert!(r.ok, "a connection failed during the failover: {r:?}");
        if r.reply == "hello from ext2\n" {
            switched = Some(changed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let switched = switched.expect("never followed the record");
    // TTL (2 s) + one refresh round (bounded by the 300 ms timeout) + slack.
    assert!(switched <= Duration::from_millis(3500), "took {switched:?}");
    for _ in 0..5 {
        assert_eq!(
            w.pod().connect(sa(&format!("{vip}:80"))).reply,
            "hello from ext2\n"
        );
    }
}

#[test]
fn upstream_down_keeps_the_last_good_answer() {
    let (w, upstream, extra) = dns_world(1, 1);
    upstream.set_ips("api.payments.example", &["198.18.0.11"], 1);
    w.write_se("payments.yaml", DNS_SE);
    let _e1 = server(&w, 1, 8080);
    let agent = w.start_agent("REGISTRY_ONLY", &extra);
    let vip = dig(&w.pod(), &["api.payments.example"])[0].clone();
    upstream.set_up(false);
    // Several TTLs and failed refreshes later the endpoint is still used.
    std::thread::sleep(Duration::from_secs(3));
    for _ in 0..5 {
        let r = w.pod().connect(sa(&format!("{vip}:80")));
        assert_eq!(r.reply, "hello from ext1\n", "{r:?}");
    }
    assert_eq!(
        metric_sum(&agent.metrics_text(), "egress_dns_stale_answers", &[]),
        1.0
    );
    assert!(
        metric_sum(
            &agent.metrics_text(),
            "egress_dns_resolutions_total",
            &[("result", "error")]
        ) >= 2.0
    );
    assert!(agent.log_text().contains("resolution failed"));
    // The VIP answer does not depend on the upstream at all.
    assert_eq!(dig(&w.pod(), &["api.payments.example"]), [vip]);
}

const WILDCARD_SE: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: google, namespace: shop}
spec:
  hosts: ["*.googleapis.example"]
  resolution: NONE
  ports: [{number: 443, name: tls, protocol: TLS}]
"#;

#[test]
fn wildcard_none_allows_learned_addresses_and_refuses_the_rest() {
    let (w, upstream, extra) = dns_world(1, 3);
    w.write_se("google.yaml", WILDCARD_SE);
    // 50 names, each its own address on host 2: every lookup is a first.
    for i in 0..50 {
        w.net.ext(2).ip(&[
            "addr",
            "add",
            &format!("198.18.0.{}/24", 100 + i),
            "dev",
            "eth0",
        ]);
        upstream.set_ips(
            &format!("r{i}.googleapis.example"),
            &[&format!("198.18.0.{}", 100 + i)],
            60,
        );
    }
    upstream.set_ips("storage.googleapis.example", &["198.18.0.12"], 60);
    let (_e2, e3) = (server(&w, 2, 443), server(&w, 3, 443));
    let _e2b = server(&w, 2, 80);
    let _agent = w.start_agent("REGISTRY_ONLY", &extra);

    // Before any lookup the address is unknown.
    assert_eq!(w.pod().connect(sa("198.18.0.12:443")).errno, EPERM);
    assert_eq!(
        dig(&w.pod(), &["storage.googleapis.example"]),
        ["198.18.0.12"]
    );
    assert!(w.pod().connect(sa("198.18.0.12:443")).ok);
    // Only the entry's ports; never an address nobody resolved.
    assert_eq!(w.pod().connect(sa("198.18.0.12:80")).errno, EPERM);
    assert_eq!(w.pod().connect(sa("198.18.0.13:443")).errno, EPERM);
    assert_eq!(e3.hit_count(), 0);

    // connect() right after getaddrinfo never races the learned entry.
    let out = w.pod().run(
        probe_bin().to_str().unwrap(),
        &["resolve", "r{}.googleapis.example:443", "50"],
    );
    let results: Vec<ProbeResult> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 50);
    let refused: Vec<_> = results.iter().filter(|r| !r.ok).collect();
    assert!(
        refused.is_empty(),
        "{} refused, first: {:?}",
        refused.len(),
        refused.first()
    );
}

#[test]
fn a_learned_address_expires_with_its_ttl() {
    let (w, upstream, extra) = dns_world(1, 2);
    w.write_se("google.yaml", WILDCARD_SE);
    upstream.set_ips("short.googleapis.example", &["198.18.0.12"], 1);
    let _e2 = server(&w, 2, 443);
    let agent = w.start_agent("REGISTRY_ONLY", &extra);
    assert_eq!(
        dig(&w.pod(), &["short.googleapis.example"]),
        ["198.18.0.12"]
    );
    assert!(w.pod().connect(sa("198.18.0.12:443")).ok);
    assert_eq!(
        metric_sum(
            &agent.metrics_text(),
            "egress_dns_queries_total",
            &[("result", "learned")]
        ),
        1.0
    );
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(
        w.pod().connect(sa("198.18.0.12:443")).errno,
        EPERM,
        "expired after 1 s"
    );
}

#[test]
fn dns_over_tcp_is_captured_too() {
    let (w, upstream, extra) = dns_world(1, 2);
    upstream.set_ips("api.payments.example", &["198.18.0.11"], 60);
    upstream.set_ips("storage.googleapis.example", &["198.18.0.12"], 60);
    w.write_se("payments.yaml", DNS_SE);
    w.write_se("google.yaml", WILDCARD_SE);
    let _e2 = server(&w, 2, 443);
    let _agent = w.start_agent("REGISTRY_ONLY", &extra);
    let vip = dig(&w.pod(), &["+tcp", "@192.0.2.53", "api.payments.example"]);
    assert!(vip[0].starts_with("240.240."), "{vip:?}");
    // Forwarded over TCP, learned all the same.
    assert_eq!(
        dig(
            &w.pod(),
            &["+tcp", "@192.0.2.53", "storage.googleapis.example"]
        ),
        ["198.18.0.12"]
    );
    assert_eq!(
        upstream.queries_for("storage.googleapis.example", Some(true)),
        1
    );
    assert!(w.pod().connect(sa("198.18.0.12:443")).ok);
}

#[test]
fn aaaa_answers_and_ipv6_connections() {
    let (w, upstream, extra) = dns_world(1, 2);
    upstream.set_ips("api.payments.example", &["198.18.0.11"], 60);
    upstream.set_ips("v6.googleapis.example", &["2001:db8::12"], 60);
    w.write_se("payments.yaml", DNS_SE);
    w.write_se("google.yaml", WILDCARD_SE);
    let (_e1, _e2) = (server(&w, 1, 8080), server(&w, 2, 443));
    let _agent = w.start_agent("REGISTRY_ONLY", &extra);
    // The IPv6 VIP of the DNS host, asked over IPv6 at an IPv6 resolver.
    let v6 = dig(
        &w.pod(),
        &["-6", "@2001:db8::53", "AAAA", "api.payments.example"],
    );
    assert!(v6[0].starts_with("2001:2::f0f0:"), "{v6:?}");
    let r = w.pod().connect(sa(&format!("[{}]:80", v6[0])));
    assert_eq!(r.reply, "hello from ext1\n", "{r:?}");
    // A learned IPv6 address of a wildcard host.
    assert_eq!(w.pod().connect(sa("[2001:db8::12]:443")).errno, EPERM);
    assert_eq!(
        dig(&w.pod(), &["AAAA", "v6.googleapis.example"]),
        ["2001:db8::12"]
    );
    assert!(w.pod().connect(sa("[2001:db8::12]:443")).ok);
}

#[test]
fn two_namespaces_get_different_answers() {
    let (w, upstream, extra) = dns_world(2, 2);
    // The public answer of the name, which the other namespace gets.
    upstream.set_ips("billing.internal.example", &["198.18.0.12"], 60);
    w.write_se(
        "billing.yaml",
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: billing, namespace: shop}
spec:
  hosts: [billing.internal.example]
  exportTo: ["."]
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  endpoints: [{address: 198.18.0.11}]
"#,
    );
    let (_e1, e2) = (server(&w, 1, 8080), server(&w, 2, 80));
    let workloads = format!(
        "workloads:\n  - {{cgroup: pod, namespace: shop, name: web, ip: {}}}\n  - {{cgroup: pod1, namespace: team, name: batch, ip: {}}}\n",
        pod_v4(0),
        pod_v4(1)
    );
    let _agent = w.start_agent("REGISTRY_ONLY", &format!("{extra}{workloads}"));
    let shop = dig(&w.pod_n(0), &["billing.internal.example"]);
    let team = dig(&w.pod_n(1), &["billing.internal.example"]);
    assert!(shop[0].starts_with("240.240."), "{shop:?}");
    assert_eq!(
        team,
        ["198.18.0.12"],
        "outside the view the name still resolves, upstream"
    );
    assert_eq!(
        w.pod_n(0).connect(sa(&format!("{}:80", shop[0]))).reply,
        "hello from ext1\n"
    );
    // team may resolve it, but not use it: REGISTRY_ONLY refuses the address.
    assert_eq!(w.pod_n(1).connect(sa("198.18.0.12:80")).errno, EPERM);
    assert_eq!(
        w.pod_n(1).connect(sa(&format!("{}:80", shop[0]))).errno,
        EPERM
    );
    assert_eq!(e2.hit_count(), 0);
}
