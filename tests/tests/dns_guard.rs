//! The DNS proxy against hostile clients and replies: only workloads are
//! answered, forged upstream replies are ignored and teach nothing, names outside
//! the view can be refused without leaving the node, and one pod's stalled or
//! flooding TCP clients (even with the agent out of descriptors) do not keep
//! another pod's lookups from being answered.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use egress_tests::dns::DnsServer;
use egress_tests::*;

fn dns_world(pods: usize, extra_dns: &str) -> (World, DnsServer, String) {
    let w = World::with_pods(pods, 3);
    let addr = SocketAddr::new(ext_v4(3), 53);
    let server = DnsServer::start(w.net.ext(3), addr);
    let workloads: String = (0..pods)
        .map(|i| {
            let cg = if i == 0 {
                "pod".to_owned()
            } else {
                format!("pod{i}")
            };
            format!(
                "  - {{cgroup: {cg}, namespace: shop, name: web{i}, ip: {}}}\n",
                pod_v4(i)
            )
        })
        .collect();
    let extra = format!(
        "dns:\n  listen: [\"{NODE_V4}:53\"]\n  upstream: [\"{addr}\"]\n  upstreamTimeout: 500ms\n{extra_dns}\
         resolver:\n  upstream: [\"{addr}\"]\n  timeout: 300ms\nworkloads:\n{workloads}"
    );
    (w, server, extra)
}

/// A host answered upstream (NONE, no addresses): its answers are learned.
const PARTNER: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: partner, namespace: shop}
spec:
  hosts: [api.partner.example]
  location: MESH_EXTERNAL
  resolution: NONE
  ports: [{number: 8080, name: tcp, protocol: TCP}]
"#;

/// A host answered with its VIP by the proxy itself.
const LEGACY: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: shop}
spec:
  hosts: [legacy.internal]
  addresses: [240.240.1.1]
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  endpoints: [{address: 198.18.0.11}]
"#;

/// `dig` output (not `+short`): the status line and answers.
fn dig_full(place: &Place, args: &[&str]) -> String {
    let mut a = vec!["+time=2", "+tries=1"];
    a.extend_from_slice(args);
    String::from_utf8_lossy(&place.run("dig", &a).stdout).into_owned()
}

fn dig_short(place: &Place, args: &[&str]) -> Vec<String> {
    let mut a = vec!["+short", "+time=2", "+tries=1"];
    a.extend_from_slice(args);
    String::from_utf8_lossy(&place.run("dig", &a).stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn queries(agent: &Agent, result: &str) -> f64 {
    metric_sum(
        &agent.metrics_text(),
        "egress_dns_queries_total",
        &[("result", result)],
    )
}

#[test]
fn forged_upstream_replies_are_ignored_and_teach_nothing() {
    let (w, upstream, extra) = dns_world(1, "");
    upstream.set_ips("api.partner.example", &["198.18.0.11"], 60);
    // Before the real answer: one reply for another question, one with
    // another id, both giving 198.18.0.12.
    upstream.set_spoof("api.partner.example", "evil.partner.example", "198.18.0.12");
    w.write_se("partner.yaml", PARTNER);
    let _e1 = w.ext_server(1, 8080, "ext1");
    let _e2 = w.ext_server(2, 8080, "ext2");
    let agent = w.start_agent("REGISTRY_ONLY", &extra);
    assert_eq!(
        dig_short(&w.pod(), &["api.partner.example"]),
        ["198.18.0.11"]
    );
    // Learned: the real answer's address only.
    assert!(w.pod().connect(sa("198.18.0.11:8080")).ok);
    assert_eq!(w.pod().connect(sa("198.18.0.12:8080")).errno, libc::EPERM);
    assert_eq!(queries(&agent, "reply_mismatch"), 2.0);
}

#[test]
fn only_workloads_are_answered() {
    let (w, upstream, extra) = dns_world(1, "");
    upstream.set_ips("api.partner.example", &["198.18.0.11"], 60);
    w.write_se("partner.yaml", PARTNER);
    let agent = w.start_agent("REGISTRY_ONLY", &extra);
    // The node itself (no workload) asks the proxy directly.
    let node = Place {
        netns: w.net.node.path(),
        cgroup: None,
    };
    let out = dig_full(&node, &[&format!("@{NODE_V4}"), "api.partner.example"]);
    assert!(out.contains("status: REFUSED"), "{out}");
    assert_eq!(upstream.queries_for("api.partner.example", None), 0);
    assert_eq!(queries(&agent, "refused_source"), 1.0);
    // A workload is answered.
    assert_eq!(
        dig_short(&w.pod(), &["api.partner.example"]),
        ["198.18.0.11"]
    );
}

#[test]
fn refuse_unregistered_answers_nxdomain_without_asking_upstream() {
    let (w, upstream, extra) = dns_world(1, "  refuseUnregistered: true\n");
    upstream.set_ips("api.partner.example", &["198.18.0.11"], 60);
    upstream.set_ips("x1.tunnel.attacker.example", &["198.18.0.12"], 60);
    w.write_se("partner.yaml", PARTNER);
    let agent = w.start_agent("REGISTRY_ONLY", &extra);
    let out = dig_full(&w.pod(), &["x1.tunnel.attacker.example"]);
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    assert_eq!(
        upstream.queries_for("x1.tunnel.attacker.example", None),
        0,
        "the name left the node"
    );
    assert_eq!(queries(&agent, "nxdomain_unregistered"), 1.0);
    // Names in the view still resolve upstream.
    assert_eq!(
        dig_short(&w.pod(), &["api.partner.example"]),
        ["198.18.0.11"]
    );
    assert_eq!(upstream.queries_for("api.partner.example", None), 1);
}

/// Opens `n` TCP connections to the proxy and sends `prefix` on each (nothing,
/// or half a message), holds them `hold` seconds, and reports how many the
/// server closed within 0.5 s and how many by the end.
const FLOOD: &str = r#"
import json, socket, sys, time
n, hold, prefix = int(sys.argv[1]), float(sys.argv[2]), bytes.fromhex(sys.argv[3])
socks = []
for _ in range(n):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(('198.18.0.1', 53))
        if prefix:
            s.send(prefix)
        s.setblocking(False)
        socks.append(s)
    except OSError:
        pass
def closed():
    c = 0
    for s in socks:
        try:
            if s.recv(1) == b'':
                c += 1
        except BlockingIOError:
            pass
        except OSError:
            c += 1
    return c
start = time.time()
early = None
while time.time() - start < hold:
    if early is None and time.time() - start > 0.5:
        early = closed()
    time.sleep(0.05)
print(json.dumps({'opened': len(socks), 'closed_early': early, 'closed': closed()}), flush=True)
"#;

fn flood(place: &Place, n: usize, hold: f64, prefix_hex: &str) -> std::process::Child {
    place
        .command("python3")
        .args(["-c", FLOOD, &n.to_string(), &hold.to_string(), prefix_hex])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the flood")
}

fn flood_result(child: std::process::Child) -> serde_json::Value {
    let out = child.wait_with_output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "flood output {:?}: {e}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Pod 1's lookups, over UDP and TCP, each answered within a second.
fn assert_answered(w: &World) {
    for tcp in [false, true] {
        let started = Instant::now();
        let mut args = vec!["legacy.internal"];
        if tcp {
            args.push("+tcp");
        }
        let got = dig_short(&w.pod_n(1), &args);
        assert_eq!(got, ["240.240.1.1"], "tcp={tcp}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "tcp={tcp}: {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn stalled_and_flooding_tcp_clients_of_one_pod_do_not_starve_another() {
    let (w, _upstream, extra) = dns_world(
        2,
        "  tcpReadTimeout: 1s\n  tcpPerSource: 8\n  tcpTotal: 64\n",
    );
    w.write_se("legacy.yaml", LEGACY);
    let agent = w.start_agent("REGISTRY_ONLY", &extra);
    let pid = agent.child.as_ref().unwrap().id();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let baseline = fds();
    // Pod 0: 300 connections, each sending half a length prefix, then silence.
    let attack = flood(&w.pod(), 300, 3.0, "00");
    std::thread::sleep(Duration::from_millis(300));
    assert_answered(&w);
    assert!(
        fds() <= baseline + 8 + 4,
        "{} fds (baseline {baseline})",
        fds()
    );
    let r = flood_result(attack);
    let opened = r["opened"].as_u64().unwrap();
    assert!(opened >= 290, "{r}");
    // All but the 8 admitted were closed at once; those 8 at their timeout.
    assert!(r["closed_early"].as_u64().unwrap() >= opened - 8, "{r}");
    assert_eq!(r["closed"].as_u64().unwrap(), opened, "{r}");
    assert!(queries(&agent, "tcp_over_limit") >= (opened - 8) as f64);
}

#[test]
fn out_of_descriptors_the_proxy_backs_off_and_recovers() {
    let (w, _upstream, extra) = dns_world(
        2,
        "  tcpReadTimeout: 2s\n  tcpPerSource: 10000\n  tcpTotal: 10000\n",
    );
    w.write_se("legacy.yaml", LEGACY);
    let agent = w.start_agent("REGISTRY_ONLY", &extra);
    let pid = agent.child.as_ref().unwrap().id();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    // Leave the agent 40 descriptors: pod 0's connections exhaust them.
    let limit = open + 40;
    let status = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let cpu = || -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        // utime + stime, in clock ticks (100 per second).
        (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
    };
    let attack = flood(&w.pod(), 200, 2.0, "00");
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu();
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu() - before;
    // Accept fails with EMFILE while the descriptors are held: the proxy backs
    // off instead of spinning on the listener.
    assert!(spent < 0.3, "{spent:.2} s of CPU in 1 s");
    assert!(queries(&agent, "accept_error") >= 1.0);
    // UDP answers from the VIP table need no new descriptor.
    assert_eq!(
        dig_short(&w.pod_n(1), &["legacy.internal"]),
        ["240.240.1.1"]
    );
    let _ = flood_result(attack);
    // The descriptors are back after the stalled clients time out: TCP works.
    let start = Instant::now();
    loop {
        let got = dig_short(&w.pod_n(1), &["legacy.internal", "+tcp"]);
        if got == ["240.240.1.1"] {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "TCP never recovered: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends UDP queries for `slowN.example` (which upstream never answers) as fast
/// as it can for `secs` seconds (at most 300 000), from two sockets.
const UDP_FLOOD: &str = r#"
import socket, struct, sys, time
secs = float(sys.argv[1])
def q(i):
    name = b''.join(bytes([len(p)]) + p for p in (b'slow%d' % i, b'example')) + b'\0'
    return struct.pack('>HHHHHH', i & 0xffff, 0x0100, 1, 0, 0, 0) + name + struct.pack('>HH', 1, 1)
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
for s in socks:
    s.setblocking(False)
end, n = time.time() + secs, 0
while time.time() < end and n < 300000:
    try:
        socks[n % 2].sendto(q(n), ('198.18.0.1', 53))
    except (BlockingIOError, PermissionError):
        # PermissionError: over the pod's DNS rate, dropped in the kernel.
        pass
    n += 1
print(n, flush=True)
"#;

#[test]
fn a_udp_flood_of_one_pod_leaves_another_pods_lookups_answered() {
    // The pod's rate: well within what the proxy (a debug build, on two
    // CPUs shared with the flood) answers, so nothing overflows its socket.
    let (w, upstream, extra) = dns_world(2, "  queriesPerSecond: 300\n");
    upstream.set_silent("slow");
    upstream.set_ips("ok1.example", &["198.18.0.11"], 60);
    w.write_se("legacy.yaml", LEGACY);
    let agent = w.start_agent("REGISTRY_ONLY", &extra);
    let pid = agent.child.as_ref().unwrap().id();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let baseline = fds();
    let flood = w
        .pod()
        .command("python3")
        .args(["-c", UDP_FLOOD, "4"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // During the flood, pod 1 is answered: locally (a VIP) and upstream.
    for _ in 0..5 {
        for (name, want) in [
            ("legacy.internal", "240.240.1.1"),
            ("ok1.example", "198.18.0.11"),
        ] {
            let started = Instant::now();
            assert_eq!(
                dig_short(&w.pod_n(1), &[name]),
                [want],
                "{name} during the flood"
            );
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{name}: {:?}",
                started.elapsed()
            );
        }
        // Upstream sockets in flight stay bounded by the caps.
        assert!(
            fds() <= baseline + 64 + 16,
            "{} descriptors (baseline {baseline})",
            fds()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let sent: u64 = String::from_utf8_lossy(&flood.wait_with_output().unwrap().stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(sent > 10_000, "the flood sent {sent}");
    // The flood was held back in the kernel (its rate) and at the proxy (its
    // share of upstream slots).
    let metrics = agent.metrics_text();
    assert!(
        metric_sum(
            &metrics,
            "egress_kernel_events_total",
            &[("counter", "dns_rate_limited")]
        ) > 0.0
    );
    assert!(queries(&agent, "udp_over_limit") > 0.0);
}
