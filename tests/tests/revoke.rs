//! Revocation: when a destination leaves a workload's view, the workload's
//! established TCP connections and connected UDP sockets to it are destroyed
//! within 100 ms; others stay. Seen from the pod (the blocked recv() fails),
//! from the receiving side (the server's namespace counts the RST) and on the
//! record (one access-log line and one count each).

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use egress_tests::attack::NftCounter;
use egress_tests::server::UdpServer;
use egress_tests::*;

const UDP: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: udp, namespace: shop}
spec:
  hosts: [udp.internal]
  addresses: [198.18.0.13]
  location: MESH_EXTERNAL
  resolution: NONE
  ports: [{number: 5353, name: udp, protocol: UDP}]
"#;

const KEEP: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: keep, namespace: shop}
spec:
  hosts: [keep.internal]
  addresses: [198.18.0.12]
  location: MESH_EXTERNAL
  resolution: NONE
  ports: [{number: 8080, name: tcp, protocol: TCP}]
"#;

/// Holds a TCP connection to the VIP, one to the kept address and a connected
/// UDP socket, says "ready", then reports when each one fails (wall-clock
/// seconds and errno) or that it is still up after `hold` seconds.
const CLIENT: &str = r#"
import json, select, socket, sys, time
hold = float(sys.argv[1])
vip = socket.create_connection(('240.240.1.1', 80), timeout=5)
keep = socket.create_connection(('198.18.0.12', 8080), timeout=5)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect(('198.18.0.13', 5353))
u.send(b'hi\n')
print(json.dumps({'ready': True}), flush=True)
names = {vip: 'tcp', keep: 'keep', u: 'udp'}
out = {}
end = time.time() + hold
while names and time.time() < end:
    r, _, _ = select.select(list(names), [], [], 0.05)
    for s in r:
        try:
            data = s.recv(100)
            if s is u:
                continue
            out[names.pop(s)] = {'time': time.time(), 'errno': 0}
        except OSError as e:
            out[names.pop(s)] = {'time': time.time(), 'errno': e.errno}
for s, n in names.items():
    out[n] = 'up'
print(json.dumps(out), flush=True)
"#;

struct Client {
    child: Child,
    out: BufReader<ChildStdout>,
}

fn start_client(w: &World, hold_secs: u32) -> Client {
    start_script(w, CLIENT, &[&hold_secs.to_string()])
}

/// Runs a Python client in the pod and waits until it says "ready".
fn start_script(w: &World, script: &str, args: &[&str]) -> Client {
    let mut child = w
        .pod()
        .command("python3")
        .args(["-c", script])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the client");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.contains("ready"), "client: {line:?}");
    Client { child, out }
}

impl Client {
    fn result(mut self) -> serde_json::Value {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        self.child.wait().unwrap();
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("client: {line:?}: {e}"))
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn world() -> World {
    let w = World::new(3);
    w.write_se("legacy.yaml", &legacy_se_one_endpoint());
    w.write_se("udp.yaml", UDP);
    w.write_se("keep.yaml", KEEP);
    w
}

#[test]
fn removed_destinations_lose_their_connections_within_100ms() {
    let w = world();
    let _ext1 = w.ext_server(1, 8080, "ext1");
    let _ext2 = w.ext_server(2, 8080, "ext2");
    let udp = UdpServer::start(w.net.ext(3), sa("0.0.0.0:5353"), "ext3");
    // RSTs the pod sends to the VIP's endpoint arrive here.
    let rsts = NftCounter::matching(
        w.net.ext(1),
        "eth0",
        "ip saddr 198.18.0.2 tcp flags & rst == rst",
    );
    let agent = w.start_agent("REGISTRY_ONLY", "");
    let client = start_client(&w, 2);
    assert_eq!(rsts.count(), 0);

    // The legacy VIP and the UDP address leave the registry.
    let changed = now();
    std::fs::remove_file(w.se_dir().join("legacy.yaml")).unwrap();
    std::fs::remove_file(w.se_dir().join("udp.yaml")).unwrap();
    let result = client.result();

    for name in ["tcp", "udp"] {
        let r = &result[name];
        assert_eq!(r["errno"], libc::ECONNABORTED, "{name}: {result}");
        let after = r["time"].as_f64().unwrap() - changed;
        eprintln!("{name} revoked {:.1} ms after the change", after * 1e3);
        assert!(
            after < 0.1,
            "{name} revoked {:.1} ms after the change",
            after * 1e3
        );
    }
    assert_eq!(result["keep"], "up", "{result}");
    // The server's side saw the connection reset.
    let start = Instant::now();
    while rsts.count() == 0 && start.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(rsts.count() >= 1);
    assert_eq!(udp.hit_count(), 1, "only the datagram before the change");

    // One access-log line and one count per revoked socket.
    let start = Instant::now();
    let revoked = || -> Vec<String> {
        agent
            .log_text()
            .lines()
            .filter(|l| l.starts_with('{') && l.contains("\"verdict\":\"revoked\""))
            .map(str::to_owned)
            .collect()
    };
    while revoked().len() < 2 && start.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let lines = revoked();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"destination\":\"240.240.1.1\"")
                && l.contains("\"port\":80")
                && l.contains("\"transport\":\"tcp\"")
                && l.contains("\"host\":\"legacy.internal\"")
                && l.contains("\"workload\":\"web\"")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"destination\":\"198.18.0.13\"")
                && l.contains("\"port\":5353")
                && l.contains("\"transport\":\"udp\""))
    );
    let metrics = agent.metrics_text();
    assert_eq!(
        metric_sum(&metrics, "egress_revoked_connections_total", &[]),
        2.0
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "egress_revoked_connections_total",
            &[("destination_service", "legacy.internal")]
        ),
        1.0
    );
}

#[test]
fn with_revocation_off_established_connections_stay() {
    let w = world();
    let _ext1 = w.ext_server(1, 8080, "ext1");
    let _ext2 = w.ext_server(2, 8080, "ext2");
    let _udp = UdpServer::start(w.net.ext(3), sa("0.0.0.0:5353"), "ext3");
    let agent = w.start_agent("REGISTRY_ONLY", "revokeEstablished: false\n");
    let client = start_client(&w, 1);
    std::fs::remove_file(w.se_dir().join("legacy.yaml")).unwrap();
    std::fs::remove_file(w.se_dir().join("udp.yaml")).unwrap();
    // The change is applied (a new connect is refused) while the old ones run.
    let start = Instant::now();
    while w.pod().connect(sa("240.240.1.1:80")).ok && start.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let result = client.result();
    assert_eq!(result["tcp"], "up", "{result}");
    assert_eq!(result["udp"], "up", "{result}");
    assert_eq!(
        metric_sum(
            &agent.metrics_text(),
            "egress_revoked_connections_total",
            &[]
        ),
        0.0
    );
}

#[test]
fn a_workload_moved_to_another_namespace_loses_what_it_no_longer_sees() {
    let w = World::new(3);
    // Exported to its own namespace only.
    w.write_se(
        "legacy.yaml",
        &legacy_se_one_endpoint().replace(
            "  hosts: [legacy.internal]",
            "  hosts: [legacy.internal]\n  exportTo: [\".\"]",
        ),
    );
    w.write_se("keep.yaml", KEEP);
    w.write_se("udp.yaml", UDP);
    let _ext1 = w.ext_server(1, 8080, "ext1");
    let _ext2 = w.ext_server(2, 8080, "ext2");
    let _udp = UdpServer::start(w.net.ext(3), sa("0.0.0.0:5353"), "ext3");
    let agent = w.start_agent("REGISTRY_ONLY", "");
    let client = start_client(&w, 2);
    // The workload's namespace changes in the agent's configuration.
    let text = std::fs::read_to_string(w.config_path()).unwrap();
    std::fs::write(
        w.config_path(),
        text.replace("namespace: shop", "namespace: team"),
    )
    .unwrap();
    let result = client.result();
    assert_eq!(result["tcp"]["errno"], libc::ECONNABORTED, "{result}");
    // Exported everywhere: still visible, still up.
    assert_eq!(result["keep"], "up", "{result}");
    assert_eq!(result["udp"], "up", "{result}");
    assert_eq!(
        metric_sum(
            &agent.metrics_text(),
            "egress_revoked_connections_total",
            &[]
        ),
        1.0
    );
}

/// Holds one TCP connection to `198.18.0.11:8080` and reports how it ended.
const HOLD_ONE: &str = r#"
import json, socket, time
s = socket.create_connection(('198.18.0.11', 8080), timeout=5)
print('ready', flush=True)
s.settimeout(2)
try:
    r = s.recv(10)
    print(json.dumps({'errno': 0, 'time': time.time()}), flush=True)
except socket.timeout:
    print(json.dumps({'up': True}), flush=True)
except OSError as e:
    print(json.dumps({'errno': e.errno, 'time': time.time()}), flush=True)
"#;

#[test]
fn a_host_leaving_the_view_takes_its_learned_addresses_and_their_connections() {
    let w = World::new(3);
    let upstream =
        egress_tests::dns::DnsServer::start(w.net.ext(3), std::net::SocketAddr::new(ext_v4(3), 53));
    upstream.set_ips("api.partner.example", &["198.18.0.11"], 300);
    let partner = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: partner, namespace: shop}
spec:
  hosts: [api.partner.example]
  location: MESH_EXTERNAL
  resolution: NONE
  ports: [{number: 8080, name: tcp, protocol: TCP}]
"#;
    w.write_se("partner.yaml", partner);
    let _e1 = w.ext_server(1, 8080, "ext1");
    let agent = w.start_agent(
        "REGISTRY_ONLY",
        &format!(
            "dns:\n  listen: [\"{NODE_V4}:53\"]\n  upstream: [\"{}:53\"]\n  learnedMinTtl: 300s\n",
            ext_v4(3)
        ),
    );
    let out = w.pod().run(
        "dig",
        &["+short", "+time=2", "+tries=1", "api.partner.example"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "198.18.0.11");
    let client = start_script(&w, HOLD_ONE, &[]);
    let changed = now();
    std::fs::remove_file(w.se_dir().join("partner.yaml")).unwrap();
    let r = client.result();
    assert_eq!(r["errno"], libc::ECONNABORTED, "{r}");
    assert!(r["time"].as_f64().unwrap() - changed < 0.1, "{r}");
    // The learned address no longer allows anything, though its TTL runs on.
    assert_eq!(w.pod().connect(sa("198.18.0.11:8080")).errno, libc::EPERM);
    assert_eq!(
        metric_sum(
            &agent.metrics_text(),
            "egress_revoked_connections_total",
            &[]
        ),
        1.0
    );
}

/// Connects to the VIP, then leaves the pod's network namespace for a new one
/// of its own (`unshare(CLONE_NEWNET)`), holding the socket; reports how it
/// ended.
const LEAVE_NETNS: &str = r#"
import ctypes, json, socket, time
s = socket.create_connection(('240.240.1.1', 80), timeout=5)
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x40000000) == 0, ctypes.get_errno()
print('ready', flush=True)
s.settimeout(2)
try:
    s.recv(10)
    print(json.dumps({'errno': 0}), flush=True)
except socket.timeout:
    print(json.dumps({'up': True}), flush=True)
except OSError as e:
    print(json.dumps({'errno': e.errno}), flush=True)
"#;

#[test]
fn a_holder_that_left_the_pods_network_namespace_is_still_revoked() {
    let w = world();
    let _ext1 = w.ext_server(1, 8080, "ext1");
    let _ext2 = w.ext_server(2, 8080, "ext2");
    let agent = w.start_agent("REGISTRY_ONLY", "");
    let client = start_script(&w, LEAVE_NETNS, &[]);
    std::fs::remove_file(w.se_dir().join("legacy.yaml")).unwrap();
    let r = client.result();
    assert_eq!(r["errno"], libc::ECONNABORTED, "{r}");
    assert_eq!(
        metric_sum(
            &agent.metrics_text(),
            "egress_revoked_connections_total",
            &[]
        ),
        1.0
    );
}
