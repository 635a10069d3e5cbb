//! The agent's own lifecycle under load (fail static): `kill -9`, SIGTERM and an
//! upgrade to different programs, each followed by a start that adopts the pinned
//! dataplane, while a pod connects at more than 1 000 connections a second to a
//! registered VIP and an unregistered address in turn. Counted where it counts:
//! the servers behind the VIP and a SYN counter in the unregistered host's
//! namespace.

use std::net::IpAddr;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use egress_tests::attack::SynCounter;
use egress_tests::server::Server;
use egress_tests::*;

const LEGACY: &str = LEGACY_SE;

const RATE: u32 = 1500;
const LOAD_MS: u64 = 5000;

/// The variant build of the programs (`upgrade-probe` feature).
const UPGRADE_OBJECT: &str = env!("EGRESS_UPGRADE_OBJECT");

fn start_load(w: &World) -> Child {
    w.pod()
        .command(probe_bin())
        .args([
            "mix",
            "240.240.1.1:80",
            "198.18.0.13:22",
            &LOAD_MS.to_string(),
            &RATE.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the load")
}

fn finish_load(child: Child) -> serde_json::Value {
    let out = child.wait_with_output().expect("load output");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("load summary {text:?}: {e}"))
}

fn hits(servers: &[&Server]) -> usize {
    servers.iter().map(|s| s.hit_count()).sum()
}

/// Waits until the servers have counted `want` connections in all.
fn wait_hits(servers: &[&Server], want: usize, timeout: Duration) -> usize {
    let start = Instant::now();
    loop {
        let n = hits(servers);
        if n >= want || start.elapsed() > timeout {
            return n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stop {
    Kill9,
    Sigterm,
    /// The agent is replaced by one running other programs (SIGTERM, then a
    /// start with `EGRESS_BPF_OBJECT`).
    Upgrade,
}

fn restart_under_load(how: Stop) {
    let w = World::new(3);
    w.write_se("legacy.yaml", LEGACY);
    let ext1 = w.ext_server(1, 8080, "ext1");
    let ext2 = w.ext_server(2, 8080, "ext2");
    let _ext3 = w.ext_server(3, 22, "ext3");
    let unregistered: IpAddr = "198.18.0.13".parse().unwrap();
    let syns = SynCounter::new(w.net.ext(3), "eth0", unregistered);
    let mut agent = w.start_agent("REGISTRY_ONLY", "");
    let servers = [&ext1, &ext2];

    let load = start_load(&w);
    // The load runs with the agent up for a while...
    assert!(wait_hits(&servers, 300, Duration::from_secs(5)) >= 300);
    let sig = match how {
        Stop::Kill9 => libc::SIGKILL,
        Stop::Sigterm | Stop::Upgrade => libc::SIGTERM,
    };
    agent.signal_and_wait(sig);
    // ...then with no agent at all: the pinned programs alone.
    let at_stop = hits(&servers);
    assert!(
        wait_hits(&servers, at_stop + 300, Duration::from_secs(5)) >= at_stop + 300,
        "registered connections stopped with the agent"
    );
    let env: Vec<(&str, &str)> = match how {
        Stop::Upgrade => vec![("EGRESS_BPF_OBJECT", UPGRADE_OBJECT)],
        _ => vec![],
    };
    let started = Instant::now();
    let agent = Agent::start_with_env(
        &w.config_path(),
        agent.metrics,
        agent.netns.as_deref(),
        &env,
    );
    let restart = started.elapsed();
    let summary = finish_load(load);
    eprintln!("{how:?}: restart {restart:?}; load {summary}");

    let reg = &summary["registered"];
    let unreg = &summary["unregistered"];
    let attempts = summary["attempts"].as_u64().unwrap();
    assert!(
        summary["rate"].as_f64().unwrap() >= 1000.0,
        "load below 1000 connections/s: {summary}"
    );
    // 0 registered connections refused or failed, across the whole lifecycle.
    assert_eq!(reg["refused"], 0, "{summary}");
    assert_eq!(reg["other"], 0, "{summary}");
    assert_eq!(reg["ok"].as_u64().unwrap(), attempts.div_ceil(2));
    // 0 unregistered connections through: every one refused at connect(), and
    // not one SYN reached the unregistered host.
    assert_eq!(unreg["ok"], 0, "{summary}");
    assert_eq!(
        unreg["refused"].as_u64().unwrap(),
        attempts / 2,
        "{summary}"
    );
    assert_eq!(syns.syns(), 0, "SYNs reached the unregistered host");
    // The servers saw exactly the registered connections.
    let want = reg["ok"].as_u64().unwrap() as usize;
    assert_eq!(wait_hits(&servers, want, Duration::from_secs(5)), want);

    // The new agent adopted what was pinned, switched the links in place, and
    // kept the entries (nothing rewritten).
    let log = agent.wait_log("adopted the pinned dataplane", Duration::from_secs(2));
    assert!(log.contains("adopted the pinned dataplane"), "{log}");
    assert!(log.contains("links_created=0"), "{log}");
    let probe = || {
        metric_sum(
            &agent.metrics_text(),
            "egress_kernel_events_total",
            &[("counter", "upgrade_probe")],
        )
    };
    if how == Stop::Upgrade {
        assert!(!log.contains("programs_changed=0"), "{log}");
        // The variant's services map has another shape: it was migrated (a
        // new map filled, then the programs switched) under the same load.
        assert!(log.contains("migrated_maps=EGRESS_SERVICES"), "{log}");
        // The new programs are the ones running: the probe counter moves.
        assert!(w.pod().connect(sa("240.240.1.1:80")).ok);
        let start = Instant::now();
        while probe() < 1.0 && start.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(probe() >= 1.0, "the upgraded program does not run");
    } else {
        assert!(log.contains("programs_changed=0"), "{log}");
        assert!(log.contains("migrated_maps= "), "{log}");
        assert!(
            !log.contains("dataplane synced"),
            "an unchanged registry rewrote entries:\n{log}"
        );
        assert_eq!(probe(), 0.0);
    }
}

#[test]
fn kill_9_then_restart_under_load_keeps_every_verdict() {
    restart_under_load(Stop::Kill9);
}

#[test]
fn sigterm_then_restart_under_load_keeps_every_verdict() {
    restart_under_load(Stop::Sigterm);
}

#[test]
fn upgrade_to_other_programs_under_load_keeps_every_verdict() {
    restart_under_load(Stop::Upgrade);
}

/// The control: an agent that uninstalls on exit (the old behaviour) leaves a gap
/// that the same load sees, so the assertions above can fail.
#[test]
fn without_fail_static_the_same_load_sees_the_gap() {
    let w = World::new(3);
    w.write_se("legacy.yaml", LEGACY);
    let ext1 = w.ext_server(1, 8080, "ext1");
    let ext2 = w.ext_server(2, 8080, "ext2");
    let _ext3 = w.ext_server(3, 22, "ext3");
    let syns = SynCounter::new(w.net.ext(3), "eth0", "198.18.0.13".parse().unwrap());
    let mut agent = w.start_agent("REGISTRY_ONLY", "onExit: uninstall\n");
    let load = start_load(&w);
    assert!(wait_hits(&[&ext1, &ext2], 300, Duration::from_secs(5)) >= 300);
    agent.signal_and_wait(libc::SIGTERM);
    // Unregistered SYNs reach the host while nothing enforces.
    let start = Instant::now();
    while syns.syns() == 0 && start.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _agent = Agent::start(&w.config_path(), agent.metrics, agent.netns.as_deref());
    let summary = finish_load(load);
    assert!(syns.syns() > 0, "{summary}");
    assert!(
        summary["unregistered"]["ok"].as_u64().unwrap() > 0,
        "{summary}"
    );
    assert!(
        summary["registered"]["other"].as_u64().unwrap() > 0,
        "{summary}"
    );
}

/// Sends `rate` DNS queries a second for `secs` seconds (one UDP socket, 1 s
/// timeout each) for `legacy.internal` and reports, per query, the send time
/// (wall clock) and whether the VIP came back.
const DNS_LOAD: &str = r#"
import json, random, socket, struct, sys, time
rate, secs = float(sys.argv[1]), float(sys.argv[2])
def query(qid):
    name = b''.join(bytes([len(p)]) + p for p in b'legacy.internal'.split(b'.')) + b'\0'
    return struct.pack('>HHHHHH', qid, 0x0100, 1, 0, 0, 0) + name + struct.pack('>HH', 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
s.connect(('198.18.0.1', 53))
start, n, answered, lost = time.time(), 0, 0, []
while time.time() - start < secs:
    due = start + n / rate
    if due > time.time():
        time.sleep(due - time.time())
    qid = random.randrange(65536)
    sent = time.time()
    s.send(query(qid))
    ok = False
    try:
        while True:
            r = s.recv(512)
            if struct.unpack('>H', r[:2])[0] == qid:
                ok = bytes([240, 240, 1, 1]) in r
                break
    except OSError:
        pass
    n += 1
    if ok:
        answered += 1
    else:
        lost.append(sent)
print(json.dumps({'sent': n, 'answered': answered, 'lost': lost}), flush=True)
"#;

fn dns_extra() -> String {
    format!(
        "dns:\n  listen: [\"{NODE_V4}:53\"]\n  upstream: [\"{}:53\"]\n  upstreamTimeout: 300ms\n",
        ext_v4(3)
    )
}

fn start_dns_load(w: &World, secs: u32) -> Child {
    w.pod()
        .command("python3")
        .args(["-c", DNS_LOAD, "100", &secs.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the DNS load")
}

/// A second agent for the same instance beside the first (its own metrics
/// port), as a rolling update with surge starts it.
fn second_agent(w: &World, first: &Agent) -> Agent {
    let text = std::fs::read_to_string(w.config_path()).unwrap();
    let port = free_port();
    let config = w.dir.path().join("agent-next.yaml");
    std::fs::write(
        &config,
        text.replace("127.0.0.1:9464", &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    Agent::start(
        &config,
        sa(&format!("127.0.0.1:{port}")),
        first.netns.as_deref(),
    )
}

#[test]
fn planned_restart_loses_no_dns_query() {
    let w = World::new(3);
    w.write_se("legacy.yaml", LEGACY);
    let mut old = w.start_agent("REGISTRY_ONLY", &dns_extra());
    let load = start_dns_load(&w, 4);
    std::thread::sleep(Duration::from_millis(500));
    // The new agent starts beside the old one (SO_REUSEPORT), then the old one
    // is told to stop: it leaves the group and answers what it holds.
    let new = second_agent(&w, &old);
    assert!(old.signal_and_wait(libc::SIGTERM).success());
    let out = load.wait_with_output().unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("planned restart: {r}");
    assert!(r["sent"].as_u64().unwrap() >= 300, "{r}");
    assert_eq!(r["lost"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(r["answered"], r["sent"]);
    // The new agent answers alone now.
    assert!(new.log_text().contains("adopted the pinned dataplane"));
}

#[test]
fn after_a_crash_dns_answers_resume_within_the_restart_time() {
    let w = World::new(3);
    w.write_se("legacy.yaml", LEGACY);
    let mut agent = w.start_agent("REGISTRY_ONLY", &dns_extra());
    let load = start_dns_load(&w, 5);
    std::thread::sleep(Duration::from_millis(500));
    let killed = now_secs();
    agent.signal_and_wait(libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(300));
    let restart = now_secs();
    let _agent = Agent::start(&w.config_path(), agent.metrics, agent.netns.as_deref());
    let ready = now_secs();
    let out = load.wait_with_output().unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let lost: Vec<f64> = r["lost"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_f64().unwrap())
        .collect();
    eprintln!(
        "crash: killed at 0, restart at {:.3}, ready at {:.3}; lost {:?}",
        restart - killed,
        ready - killed,
        lost.iter().map(|t| t - killed).collect::<Vec<_>>()
    );
    // Queries sent while no agent ran were lost (UDP: one socket, 1 s each)...
    assert!(!lost.is_empty(), "{r}");
    // ...none sent after the new agent was ready.
    assert!(
        lost.iter().all(|t| *t < ready),
        "a query sent after the restart was lost: {r}"
    );
    assert!(r["answered"].as_u64().unwrap() > 0);
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn dns_learned_addresses_survive_a_restart() {
    let w = World::new(3);
    let upstream =
        egress_tests::dns::DnsServer::start(w.net.ext(3), std::net::SocketAddr::new(ext_v4(3), 53));
    upstream.set_ips("api.partner.example", &["198.18.0.11"], 300);
    w.write_se(
        "partner.yaml",
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: partner, namespace: shop}
spec:
  hosts: [api.partner.example]
  location: MESH_EXTERNAL
  resolution: NONE
  ports: [{number: 8080, name: tcp, protocol: TCP}]
"#,
    );
    let _e1 = w.ext_server(1, 8080, "ext1");
    let mut agent = w.start_agent(
        "REGISTRY_ONLY",
        &format!("{}  learnedMinTtl: 300s\n", dns_extra()),
    );
    assert_eq!(w.pod().connect(sa("198.18.0.11:8080")).errno, libc::EPERM);
    let out = w.pod().run(
        "dig",
        &["+short", "+time=2", "+tries=1", "api.partner.example"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "198.18.0.11");
    assert!(w.pod().connect(sa("198.18.0.11:8080")).ok);
    agent.signal_and_wait(libc::SIGKILL);
    // No agent: the pinned learned entry still allows it.
    assert!(w.pod().connect(sa("198.18.0.11:8080")).ok);
    let agent = Agent::start(&w.config_path(), agent.metrics, agent.netns.as_deref());
    // The new agent adopted it: still allowed with no new lookup.
    assert!(w.pod().connect(sa("198.18.0.11:8080")).ok);
    assert_eq!(upstream.queries_for("api.partner.example", None), 1);
    let start = Instant::now();
    let learned = || metric_sum(&agent.metrics_text(), "egress_dns_learned_entries", &[]);
    while learned() < 1.0 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(learned(), 1.0);
}

#[test]
fn a_pin_dir_off_bpffs_is_an_error_that_says_so() {
    let w = World::new(1);
    w.write_se("legacy.yaml", LEGACY);
    let config = w.dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "cgroupPath: {}\nserviceEntryDir: serviceentries\npinDir: pins\nstateDir: state\nrunDir: run\n",
            w.root.path.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(agent_bin())
        .args(["run", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    // Relative to the config file, like stateDir and runDir.
    let pins = w.dir.path().join("pins");
    assert!(err.contains(&pins.display().to_string()), "{err}");
    assert!(err.contains("not on a bpf filesystem"), "{err}");
    // Nothing was attached.
    assert_eq!(
        egress_tests::bpf::attached_count(&w.root.path, egress_tests::bpf::CGROUP_INET4_CONNECT),
        0
    );
}
