//! `cargo xtask bench [--quick]`: egress against no enforcement, iptables,
//! nftables and a userspace proxy, side by side in one run, on a world it builds
//! (a client pod namespace and cgroup, a server namespace over veth, a loopback
//! variant). Repeated trials in random order; medians of per-trial ratios to "none".
//! The full run writes BENCHMARKS.md and bench/*.svg; --quick is a smoke run for CI
//! that writes to target/bench-quick/.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use egress_tests::dns::DnsServer;
use egress_tests::{Agent, Cgroup, Net, Place, cgroup2_root, unique};
use serde_json::{Value, json};

use crate::{run, workspace_root};

/// What one bench run measures, and how much.
#[derive(Clone, Debug)]
struct Plan {
    reps: usize,
    scales: Vec<usize>,
    conn_count: u64,
    seq_count: u64,
    deny_count: u64,
    bulk_bytes: u64,
    bulk_secs: u64,
    update_scales: Vec<usize>,
    update_samples: usize,
    load_scales: Vec<usize>,
    dns_count: u64,
    /// Kubernetes mode: ServiceEntries and pods through the API server.
    k8s_entries: usize,
    k8s_pods: usize,
    k8s_samples: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                reps: 1,
                scales: vec![10, 1000],
                conn_count: 2000,
                seq_count: 500,
                deny_count: 200,
                bulk_bytes: 512 << 20,
                bulk_secs: 3,
                update_scales: vec![10, 1000],
                update_samples: 5,
                load_scales: vec![1000],
                dns_count: 2000,
                k8s_entries: 500,
                k8s_pods: 20,
                k8s_samples: 10,
            }
        } else {
            Self {
                reps: 5,
                scales: vec![10, 1000, 10_000, 100_000],
                conn_count: 20_000,
                seq_count: 5000,
                deny_count: 2000,
                bulk_bytes: 4 << 30,
                bulk_secs: 5,
                update_scales: vec![10, 10_000],
                update_samples: 20,
                load_scales: vec![10_000, 100_000],
                dns_count: 20_000,
                k8s_entries: 10_000,
                k8s_pods: 250,
                k8s_samples: 100,
            }
        }
    }
}

/// The mechanisms compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mech {
    None,
    Egress,
    /// egress without the TC traffic counters (connect-time enforcement only).
    EgressNoCounters,
    Iptables,
    Nftables,
    Proxy,
    /// Client and server over loopback in one namespace, no enforcement.
    LoopNone,
    /// The same with egress rewriting a VIP to the loopback server.
    LoopEgress,
}

impl Mech {
    fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Egress => "egress",
            Self::EgressNoCounters => "egress (no counters)",
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
            Self::Proxy => "haproxy",
            Self::LoopNone => "loopback none",
            Self::LoopEgress => "loopback egress",
        }
    }
}

struct Bins {
    agent: PathBuf,
    bench: PathBuf,
}

fn build_release() -> Result<Bins> {
    let root = workspace_root();
    run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "--package",
        "egress-agent",
        "--package",
        "egress-tests",
        "--bins",
    ]))?;
    let dir = root.join("target/release");
    Ok(Bins {
        agent: dir.join("egress-agent"),
        bench: dir.join("egress-bench"),
    })
}

const VIP: &str = "240.240.200.1";
const SERVER: &str = "198.18.0.11";
const DNS_HOST: &str = "198.18.0.12";

/// One measurement world: fresh namespaces, the pod cgroup, servers.
struct World {
    net: Net,
    pod: Cgroup,
    root: Cgroup,
    dir: PathBuf,
    children: Vec<Child>,
}

impl World {
    fn new(bins: &Bins, loopback: bool) -> Result<Self> {
        let net = Net::new(2);
        let root = Cgroup::new(cgroup2_root().join(unique("egress-bench-")));
        let pod = root.child("pod");
        let dir = std::env::temp_dir().join(unique("egress-bench-"));
        std::fs::create_dir_all(dir.join("serviceentries"))?;
        let mut w = Self {
            net,
            pod,
            root,
            dir,
            children: Vec::new(),
        };
        let (ns, host) = if loopback {
            (w.net.pod().path(), "127.0.0.1")
        } else {
            (w.net.ext(1).path(), "[::]")
        };
        for (mode, port) in [("echo-server", 7000), ("bulk-server", 7001)] {
            let child = Place {
                netns: ns.clone(),
                cgroup: None,
            }
            .command(&bins.bench)
            .args([mode, &format!("{host}:{port}")])
            .envs(pin(SERVER_CPU))
            .stdout(Stdio::null())
            .spawn()?;
            w.children.push(child);
        }
        let target = if loopback { "127.0.0.1" } else { SERVER };
        w.wait_listening(&ns, &format!("{target}:7000").parse()?)?;
        Ok(w)
    }

    /// Waits until `addr` accepts connections, from inside `ns`.
    fn wait_listening(&self, ns: &Path, addr: &SocketAddr) -> Result<()> {
        let (ns, addr) = (ns.to_owned(), *addr);
        let ok = std::thread::spawn(move || {
            egress_tests::enter_netns(&ns);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        })
        .join()
        .unwrap();
        if !ok {
            bail!("{addr} never listened");
        }
        Ok(())
    }

    fn pod(&self) -> Place {
        Place {
            netns: self.net.pod().path(),
            cgroup: Some(self.pod.path.clone()),
        }
    }

    fn pod_outside_cgroup(&self) -> Place {
        Place {
            netns: self.net.pod().path(),
            cgroup: None,
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const CLIENT_CPU: usize = 0;
const SERVER_CPU: usize = 1;

/// Whether the bench client and servers are pinned to their CPUs (the default;
/// `EGRESS_BENCH_PIN=0` lets the scheduler place them).
fn pinned() -> bool {
    std::env::var("EGRESS_BENCH_PIN").as_deref() != Ok("0")
}

/// The environment that pins a bench process to `cpu`.
fn pin(cpu: usize) -> Option<(&'static str, String)> {
    pinned().then(|| ("EGRESS_BENCH_CPU", cpu.to_string()))
}

/// Runs the bench client somewhere and parses its JSON.
fn client(bins: &Bins, place: &Place, args: &[&str]) -> Result<Value> {
    let out = place
        .command(&bins.bench)
        .args(args)
        .envs(pin(CLIENT_CPU))
        .output()
        .context("running egress-bench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).with_context(|| {
        format!(
            "egress-bench {args:?}: {text:?} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// ServiceEntries: `n` unrelated services plus the target VIP (echo on 80, bulk
/// on 81). One multi-document file.
fn write_registry(dir: &Path, n: usize, target_backend: &str) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(
        dir.join("serviceentries/bench.yaml"),
    )?);
    for i in 0..n {
        writeln!(
            f,
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc{i}, namespace: bench}}\n\
             spec: {{hosts: [svc{i}.bench.example], addresses: [10.{}.{}.{}], resolution: STATIC, \
             ports: [{{number: 80, name: tcp, protocol: TCP, targetPort: 7000}}], endpoints: [{{address: 192.0.2.{}}}]}}\n---",
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255,
            i % 250 + 1
        )?;
    }
    writeln!(
        f,
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: target, namespace: bench}}\n\
         spec: {{hosts: [target.bench.example], addresses: [{VIP}], resolution: STATIC, \
         ports: [{{number: 80, name: echo, protocol: TCP, targetPort: 7000}}, {{number: 81, name: bulk, protocol: TCP, targetPort: 7001}}], \
         endpoints: [{{address: {target_backend}}}]}}"
    )?;
    Ok(())
}

fn agent_config(w: &World, mode: &str, extra: &str, counters: bool) -> Result<PathBuf> {
    let interface = if counters { ", interface: vpod0" } else { "" };
    let path = w.dir.join("agent.yaml");
    std::fs::write(
        &path,
        format!(
            "outboundTrafficPolicy: {{mode: {mode}}}\ncgroupPath: {}\nserviceEntryDir: serviceentries\n\
             metricsAddress: 127.0.0.1:9464\ninstance: {}\nstateDir: state\naccessLog: {{path: access.log}}\n\
             workloads:\n  - {{cgroup: pod, namespace: bench, name: client, ip: 198.18.0.2{interface}}}\n{extra}",
            w.root.path.display(),
            w.root.path.file_name().unwrap().to_string_lossy()
        ),
    )?;
    Ok(path)
}

/// A started agent and how long it took to be ready, with its memory.
struct Started {
    /// Kept so the agent runs as long as this lives (stopped on drop).
    _agent: Agent,
    ready_secs: f64,
    rss_mib: f64,
    hwm_mib: f64,
}

fn start_agent(w: &World, mode: &str, extra: &str, counters: bool) -> Result<Started> {
    let config = agent_config(w, mode, extra, counters)?;
    let t = Instant::now();
    let agent = Agent::start(&config, "127.0.0.1:9464".parse()?, Some(&w.net.node.path()));
    let ready_secs = t.elapsed().as_secs_f64();
    let (rss, hwm) = (status_kib(&agent, "VmRSS:"), status_kib(&agent, "VmHWM:"));
    Ok(Started {
        _agent: agent,
        ready_secs,
        rss_mib: rss / 1024.0,
        hwm_mib: hwm / 1024.0,
    })
}

/// A `/proc/<pid>/status` figure of a running agent, in KiB (0 if unknown).
fn status_kib(agent: &Agent, key: &str) -> f64 {
    let pid = agent.child.as_ref().map(|c| c.id()).unwrap_or(0);
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// Loads rules into the pod namespace with a tool reading a file on stdin.
fn load_rules(w: &World, tool: &str, args: &[&str], text: &str) -> Result<()> {
    let mut child = w
        .pod_outside_cgroup()
        .command(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {tool}"))?;
    child.stdin.take().unwrap().write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{tool} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn iptables_rules(n: usize) -> String {
    let mut s = String::from("*nat\n:OUTPUT ACCEPT [0:0]\n");
    for i in 0..n {
        s.push_str(&format!(
            "-A OUTPUT -d 10.{}.{}.{}/32 -p tcp --dport 80 -j DNAT --to-destination 192.0.2.{}:7000\n",
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255,
            i % 250 + 1
        ));
    }
    s.push_str(&format!(
        "-A OUTPUT -d {VIP}/32 -p tcp --dport 80 -j DNAT --to-destination {SERVER}:7000\n\
         -A OUTPUT -d {VIP}/32 -p tcp --dport 81 -j DNAT --to-destination {SERVER}:7001\nCOMMIT\n\
         *filter\n:OUTPUT ACCEPT [0:0]\n\
         -A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
         -A OUTPUT -d {SERVER}/32 -p tcp -m multiport --dports 7000,7001 -j ACCEPT\n\
         -A OUTPUT -p tcp -j REJECT --reject-with tcp-reset\nCOMMIT\n"
    ));
    s
}

fn nft_rules(n: usize) -> String {
    let mut vips = Vec::with_capacity(n + 2);
    let mut allowed = Vec::with_capacity(n + 2);
    for i in 0..n {
        vips.push(format!(
            "10.{}.{}.{} . 80 : 192.0.2.{} . 7000",
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255,
            i % 250 + 1
        ));
    }
    for b in 1..=250 {
        allowed.push(format!("192.0.2.{b} . 7000"));
    }
    vips.push(format!("{VIP} . 80 : {SERVER} . 7000"));
    vips.push(format!("{VIP} . 81 : {SERVER} . 7001"));
    allowed.push(format!("{SERVER} . 7000"));
    allowed.push(format!("{SERVER} . 7001"));
    format!(
        "table ip egress {{\n\
         map vips {{ type ipv4_addr . inet_service : ipv4_addr . inet_service; elements = {{ {} }} }}\n\
         set allowed {{ type ipv4_addr . inet_service; elements = {{ {} }} }}\n\
         chain nat_out {{ type nat hook output priority -100; dnat ip to ip daddr . tcp dport map @vips; }}\n\
         chain filter_out {{ type filter hook output priority 0; ct state established,related accept; \
         ip daddr . tcp dport @allowed accept; meta l4proto tcp reject with tcp reset; }}\n}}\n",
        vips.join(", "),
        allowed.join(", ")
    )
}

fn haproxy_config(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("haproxy.cfg");
    std::fs::write(
        &path,
        format!(
            "global\n  maxconn 8000\n  nbthread 2\ndefaults\n  mode tcp\n  timeout connect 5s\n  \
             timeout client 60s\n  timeout server 60s\n\
             frontend echo\n  bind 127.0.0.1:8000\n  default_backend echo\nbackend echo\n  server s1 {SERVER}:7000\n\
             frontend bulk\n  bind 127.0.0.1:8001\n  default_backend bulk\nbackend bulk\n  server s1 {SERVER}:7001\n"
        ),
    )?;
    Ok(path)
}

/// Netfilter DNAT happens after the route lookup of connect(): the VIP range
/// needs a route (on the test segment only) for iptables and nftables to work at
/// all. egress needs none: the socket is rewritten before routing.
fn vip_route(w: &World) -> Result<()> {
    w.net
        .pod()
        .ip(&["route", "add", "240.240.0.0/16", "dev", "eth0"]);
    Ok(())
}

/// Where the client connects under each mechanism.
struct Target {
    echo: String,
    bulk: String,
    /// A destination the mechanism refuses (none for the proxy).
    deny: Option<String>,
    _agent: Option<Started>,
}

fn activate(w: &mut World, m: Mech, n: usize) -> Result<Target> {
    let direct = Target {
        echo: format!("{SERVER}:7000"),
        bulk: format!("{SERVER}:7001"),
        deny: None,
        _agent: None,
    };
    Ok(match m {
        Mech::None => direct,
        Mech::LoopNone => Target {
            echo: "127.0.0.1:7000".into(),
            bulk: "127.0.0.1:7001".into(),
            ..direct
        },
        Mech::Egress | Mech::EgressNoCounters | Mech::LoopEgress => {
            let backend = if m == Mech::LoopEgress {
                "127.0.0.1"
            } else {
                SERVER
            };
            write_registry(&w.dir, n, backend)?;
            // Loopback is excluded by default; the VIP is not, so the rewrite to
            // the loopback server still happens.
            let started = start_agent(w, "REGISTRY_ONLY", "", m != Mech::EgressNoCounters)?;
            Target {
                echo: format!("{VIP}:80"),
                bulk: format!("{VIP}:81"),
                deny: Some(format!("{SERVER}:7999")),
                _agent: Some(started),
            }
        }
        Mech::Iptables => {
            vip_route(w)?;
            load_rules(w, "iptables-restore", &[], &iptables_rules(n))?;
            Target {
                echo: format!("{VIP}:80"),
                bulk: format!("{VIP}:81"),
                deny: Some(format!("{SERVER}:7999")),
                _agent: None,
            }
        }
        Mech::Nftables => {
            vip_route(w)?;
            load_rules(w, "nft", &["-f", "-"], &nft_rules(n))?;
            Target {
                echo: format!("{VIP}:80"),
                bulk: format!("{VIP}:81"),
                deny: Some(format!("{SERVER}:7999")),
                _agent: None,
            }
        }
        Mech::Proxy => {
            let cfg = haproxy_config(&w.dir)?;
            let child = w
                .pod_outside_cgroup()
                .command("haproxy")
                .args(["-f", cfg.to_str().unwrap(), "-db"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting haproxy")?;
            w.children.push(child);
            w.wait_listening(&w.net.pod().path(), &"127.0.0.1:8000".parse()?)?;
            Target {
                echo: "127.0.0.1:8000".into(),
                bulk: "127.0.0.1:8001".into(),
                deny: None,
                _agent: None,
            }
        }
    })
}

/// One trial's numbers.
type Row = BTreeMap<String, f64>;

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(f64::NAN)
}

fn trial(bins: &Bins, plan: &Plan, m: Mech, n: usize) -> Result<Row> {
    let loopback = matches!(m, Mech::LoopNone | Mech::LoopEgress);
    let mut w = World::new(bins, loopback)?;
    let target = activate(&mut w, m, n)?;
    let pod = w.pod();
    let mut row = Row::new();
    let par = client(
        bins,
        &pod,
        &[
            "conn",
            &target.echo,
            &plan.conn_count.to_string(),
            "32",
            "20",
        ],
    )?;
    if num(&par, "errors") > 0.0 {
        bail!(
            "{} n={n}: {} failed connections: {par}",
            m.name(),
            par["errors"]
        );
    }
    row.insert("rate".into(), num(&par, "rate"));
    row.insert(
        "cpu_us_per_conn".into(),
        num(&par, "client_cpu_us_per_conn"),
    );
    let seq = client(
        bins,
        &pod,
        &["conn", &target.echo, &plan.seq_count.to_string(), "1", "20"],
    )?;
    row.insert("p50_us".into(), num(&seq, "connect_p50_us"));
    row.insert("p99_us".into(), num(&seq, "connect_p99_us"));
    if let Some(deny) = &target.deny {
        let d = client(bins, &pod, &["deny", deny, &plan.deny_count.to_string()])?;
        if num(&d, "connected") > 0.0 {
            bail!("{} n={n}: a refused destination connected: {d}", m.name());
        }
        row.insert("deny_p50_us".into(), num(&d, "denied_p50_us"));
    }
    if n <= 10 {
        let b = client(
            bins,
            &pod,
            &[
                "bulk",
                &target.bulk,
                &plan.bulk_bytes.to_string(),
                &plan.bulk_secs.to_string(),
            ],
        )?;
        row.insert("gbit".into(), num(&b, "gbit_per_s"));
    }
    if let Some(a) = &target._agent {
        row.insert("agent_ready_s".into(), a.ready_secs);
        row.insert("agent_rss_mib".into(), a.rss_mib);
    }
    Ok(row)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[(((v.len() - 1) as f64) * p).round() as usize]
}

/// Policy update latency: with `n` services loaded, the time from writing a new
/// ServiceEntry file to the first successful connect through its VIP.
fn update_latency(bins: &Bins, plan: &Plan, n: usize) -> Result<(Vec<f64>, Started)> {
    let w = World::new(bins, false)?;
    write_registry(&w.dir, n, SERVER)?;
    let started = start_agent(&w, "ALLOW_ANY", "", true)?;
    let mut samples = Vec::new();
    for k in 0..plan.update_samples {
        let vip = format!("240.240.201.{}", k + 1);
        let waiter = w
            .pod()
            .command(&bins.bench)
            .args(["wait", &format!("{vip}:80"), "10000"])
            .stdout(Stdio::piped())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(150));
        let t0 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as f64;
        std::fs::write(
            w.dir.join(format!("serviceentries/new{k}.yaml")),
            format!(
                "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: new{k}, namespace: bench}}\n\
                 spec: {{hosts: [new{k}.bench.example], addresses: [{vip}], resolution: STATIC, \
                 ports: [{{number: 80, name: tcp, protocol: TCP, targetPort: 7000}}], endpoints: [{{address: {SERVER}}}]}}\n"
            ),
        )?;
        let out = waiter.wait_with_output()?;
        let v: Value = serde_json::from_slice(&out.stdout)?;
        if v["ok"] != true {
            bail!("update n={n}: the new VIP never worked: {v}");
        }
        samples.push((num(&v, "t_ns") - t0) / 1e6);
    }
    Ok((samples, started))
}

/// Namespaces the bench's pods are spread over, and how many of them have a
/// ServiceEntry of their own.
const K8S_NAMESPACES: usize = 25;
const K8S_OWN_ENTRIES: usize = 5;

/// Kubernetes mode against the test API server (the wire protocol kube-rs
/// speaks to a real one): `k8s_entries` ServiceEntries and `k8s_pods` pods on
/// the node; time to ready, memory, a pod's event to its kernel map entry, and
/// a ServiceEntry's creation to the first connect through its VIP.
fn kubernetes_bench(bins: &Bins, plan: &Plan) -> Result<Value> {
    use egress_tests::apiserver::ApiServer;
    use egress_tests::kubelet::{self, Kubelet};
    let w = World::new(bins, false)?;
    let kubelet = Kubelet::new();
    let api = ApiServer::start();
    let node = "bench-node";
    api.apply(kubelet::namespace("bench", json!({})));
    let se = |name: &str, vip: &str, backend: &str| {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
               "metadata": {"name": name, "namespace": "bench"},
               "spec": {"hosts": [format!("{name}.bench.example")], "addresses": [vip],
                        "resolution": "STATIC",
                        "ports": [{"number": 80, "name": "tcp", "protocol": "TCP", "targetPort": 7000}],
                        "endpoints": [{"address": backend}]}})
    };
    for i in 0..plan.k8s_entries {
        let vip = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        api.apply(se(
            &format!("svc{i}"),
            &vip,
            &format!("192.0.2.{}", i % 250 + 1),
        ));
    }
    // The pods of the node: the client (in the bench pod's namespace) and
    // others that only hold cgroups.
    let client_uid = kubelet::uid();
    let client_cg = kubelet.start_pod(&client_uid, "Burstable");
    api.apply(kubelet::pod(
        "bench",
        "client",
        &client_uid,
        node,
        "198.18.0.2",
        "Burstable",
        json!({}),
        false,
    ));
    // The other pods spread over K8S_NAMESPACES namespaces; the first
    // K8S_OWN_ENTRIES of them also have a ServiceEntry of their own (exportTo
    // "."), so they see more than the others: that many more views.
    for n in 0..K8S_NAMESPACES {
        api.apply(kubelet::namespace(&format!("team-{n}"), json!({})));
    }
    for n in 0..K8S_OWN_ENTRIES {
        let mut own = se(
            &format!("own{n}"),
            &format!("10.250.0.{}", n + 1),
            "192.0.2.1",
        );
        own["metadata"]["namespace"] = json!(format!("team-{n}"));
        own["spec"]["exportTo"] = json!(["."]);
        api.apply(own);
    }
    for i in 1..plan.k8s_pods {
        let uid = kubelet::uid();
        kubelet.start_pod(&uid, "BestEffort");
        api.apply(kubelet::pod(
            &format!("team-{}", i % K8S_NAMESPACES),
            &format!("pod{i}"),
            &uid,
            node,
            "",
            "BestEffort",
            json!({}),
            false,
        ));
    }
    let kubeconfig = w.dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let port = egress_tests::free_port();
    let instance = kubelet
        .root
        .path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let config = w.dir.join("agent-k8s.yaml");
    std::fs::write(
        &config,
        format!(
            "outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}\nmetricsAddress: 127.0.0.1:{port}\n\
             instance: {instance}\nstateDir: state\naccessLog: {{path: access.log}}\nkubernetes:\n  \
             nodeName: {node}\n  kubeconfig: {}\n  cgroupRoot: {}\n  cgroupDriver: systemd\n",
            kubeconfig.display(),
            kubelet.root.path.display()
        ),
    )?;
    let t = Instant::now();
    let agent = Agent::start(&config, format!("127.0.0.1:{port}").parse()?, None);
    let ready_s = t.elapsed().as_secs_f64();
    let map = egress_tests::bpf::PinnedMap::open(
        &Path::new("/sys/fs/bpf/egress")
            .join(&instance)
            .join("EGRESS_WORKLOADS"),
    )
    .context("the workloads map is pinned")?;
    let entry = |cg: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(cg)
            .ok()
            .and_then(|m| map.lookup(&m.ino().to_ne_bytes(), 16))
            .is_some()
    };
    if !entry(&client_cg.pod) {
        bail!("kubernetes: the client pod is not enforced once ready");
    }
    // A pod's event to its entry in the kernel.
    let mut pod_ms = Vec::new();
    for k in 0..plan.k8s_samples {
        let uid = kubelet::uid();
        let cg = kubelet.start_pod(&uid, "Burstable");
        let t0 = Instant::now();
        api.apply(kubelet::pod(
            "bench",
            &format!("new{k}"),
            &uid,
            node,
            "",
            "Burstable",
            json!({}),
            false,
        ));
        while !entry(&cg.pod) {
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("kubernetes: pod new{k} never enforced");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        pod_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        api.delete("Pod", Some("bench"), &format!("new{k}"));
        kubelet.stop_pod(&cg);
    }
    // A ServiceEntry's creation to the first connect through its VIP.
    let place = client_cg.place(w.net.pod().path());
    let mut se_ms = Vec::new();
    for k in 0..plan.update_samples {
        let vip = format!("240.240.202.{}", k + 1);
        let waiter = place
            .command(&bins.bench)
            .args(["wait", &format!("{vip}:80"), "10000"])
            .stdout(Stdio::piped())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(150));
        let t0 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as f64;
        api.apply(se(&format!("new{k}"), &vip, SERVER));
        let out = waiter.wait_with_output()?;
        let v: Value = serde_json::from_slice(&out.stdout)?;
        if v["ok"] != true {
            bail!("kubernetes: the new VIP never worked: {v}");
        }
        se_ms.push((num(&v, "t_ns") - t0) / 1e6);
    }
    let mib = |key: &str| status_kib(&agent, key) / 1024.0;
    let out = json!({
        "entries": plan.k8s_entries, "pods": plan.k8s_pods, "namespaces": K8S_NAMESPACES + 1,
        "own_entries": K8S_OWN_ENTRIES, "ready_s": ready_s,
        "rss_mib": mib("VmRSS:"), "hwm_mib": mib("VmHWM:"),
        "pod_event_p50_ms": percentile(&mut pod_ms, 0.5), "pod_event_p99_ms": percentile(&mut pod_ms, 0.99),
        "pod_event_samples": pod_ms,
        "se_change_p50_ms": percentile(&mut se_ms, 0.5), "se_change_p99_ms": percentile(&mut se_ms, 0.99),
        "se_change_samples": se_ms,
    });
    eprintln!("bench:   {out}");
    // Its log, for a look at where the time goes.
    let _ = std::fs::copy(
        &agent.log,
        workspace_root().join("target/bench-kubernetes-agent.log"),
    );
    drop(agent);
    Ok(out)
}

/// DNS proxy latency and rate: direct to the upstream vs through the proxy, for a
/// VIP answer and a forwarded name.
fn dns_bench(bins: &Bins, plan: &Plan) -> Result<BTreeMap<String, Value>> {
    let w = World::new(bins, false)?;
    let upstream = DnsServer::start(w.net.ext(2), format!("{DNS_HOST}:53").parse()?);
    upstream.set_ips("fwd.bench.example", &[SERVER], 300);
    upstream.set_ips("vip.bench.example", &[SERVER], 300);
    std::fs::write(
        w.dir.join("serviceentries/vip.yaml"),
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: vip, namespace: bench}}\n\
             spec: {{hosts: [vip.bench.example], resolution: STATIC, ports: [{{number: 80, name: tcp, protocol: TCP}}], \
             endpoints: [{{address: {SERVER}}}]}}\n"
        ),
    )?;
    let extra = format!(
        "dns:\n  listen: [\"198.18.0.1:53\"]\n  upstream: [\"{DNS_HOST}:53\"]\n  queriesPerSecond: 0\nresolver:\n  upstream: [\"{DNS_HOST}:53\"]\n"
    );
    // No interface line here: "direct" queries the upstream from the pod's
    // namespace, outside the workload's cgroup, which that line would hold to
    // the pod's view.
    let _agent = start_agent(&w, "REGISTRY_ONLY", &extra, false)?;
    let server = format!("{DNS_HOST}:53");
    let count = plan.dns_count.to_string();
    let mut out = BTreeMap::new();
    for (name, place, qname) in [
        ("direct", w.pod_outside_cgroup(), "fwd.bench.example"),
        ("proxy_vip", w.pod(), "vip.bench.example"),
        ("proxy_forwarded", w.pod(), "fwd.bench.example"),
    ] {
        let lat = client(bins, &place, &["dns", &server, qname, &count, "1"])?;
        let rate = client(bins, &place, &["dns", &server, qname, &count, "8"])?;
        if num(&lat, "errors") > 0.0 || num(&rate, "errors") > 0.0 {
            bail!("dns {name}: errors: {lat} {rate}");
        }
        out.insert(
            name.to_owned(),
            json!({"p50_us": lat["p50_us"], "p99_us": lat["p99_us"], "qps": rate["qps"]}),
        );
    }
    Ok(out)
}

fn machine() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let sh = |p: &str, a: &[&str]| crate::sh_output(p, a).unwrap_or_default().trim().to_owned();
    m.insert("kernel".into(), sh("uname", &["-r"]));
    m.insert("cpus".into(), sh("nproc", &[]));
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    m.insert(
        "cpu".into(),
        cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("")
            .trim()
            .to_owned(),
    );
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    m.insert(
        "memory".into(),
        mem.lines()
            .next()
            .unwrap_or("")
            .replace("MemTotal:", "")
            .trim()
            .to_owned(),
    );
    m.insert(
        "os".into(),
        sh("sh", &["-c", ". /etc/os-release; echo $PRETTY_NAME"]),
    );
    m.insert("iptables".into(), sh("iptables", &["-V"]));
    m.insert("nft".into(), sh("nft", &["-v"]));
    m.insert("haproxy".into(), sh("sh", &["-c", "haproxy -v | head -1"]));
    m
}

pub fn bench(quick: bool) -> Result<()> {
    crate::setup::setup(true)?;
    clean_up_on_interrupt();
    let bins = build_release()?;
    // SAFETY: single-threaded here; read by the harness's Agent.
    unsafe { std::env::set_var("EGRESS_AGENT_BIN", &bins.agent) };
    let plan = Plan::new(quick);
    // One section alone, printed, nothing written (for work on that section).
    if std::env::var("EGRESS_BENCH_ONLY").as_deref() == Ok("kubernetes") {
        let k = kubernetes_bench(&bins, &plan)?;
        println!("{}", serde_json::to_string_pretty(&k)?);
        return Ok(());
    }
    let out_dir = if quick {
        workspace_root().join("target/bench-quick")
    } else {
        workspace_root().join("bench")
    };
    std::fs::create_dir_all(&out_dir)?;
    let started = Instant::now();

    // 1–3. Connection setup, registry scale, throughput: every configuration in
    // every repetition, in random order.
    let mut configs: Vec<(Mech, usize)> = vec![
        (Mech::None, 0),
        (Mech::Proxy, 0),
        (Mech::LoopNone, 0),
        (Mech::LoopEgress, 10),
        (Mech::EgressNoCounters, 10),
    ];
    for &n in &plan.scales {
        for m in [Mech::Egress, Mech::Iptables, Mech::Nftables] {
            configs.push((m, n));
        }
    }
    let mut trials: Vec<(usize, Mech, usize, Row)> = Vec::new();
    for rep in 0..plan.reps {
        let mut order = configs.clone();
        shuffle(&mut order, rep as u64 + 1);
        for (m, n) in order {
            eprintln!("bench: rep {} {} n={n}", rep + 1, m.name());
            let row = trial(&bins, &plan, m, n).with_context(|| format!("{} n={n}", m.name()))?;
            eprintln!("bench:   {row:?}");
            trials.push((rep, m, n, row));
        }
    }

    // 4. Update latency, load time, memory.
    let mut updates = BTreeMap::new();
    for &n in &plan.update_scales {
        eprintln!("bench: update latency n={n}");
        let (mut s, a) = update_latency(&bins, &plan, n)?;
        updates.insert(
            n,
            json!({"p50_ms": percentile(&mut s, 0.5), "p99_ms": percentile(&mut s, 0.99), "max_ms": percentile(&mut s, 1.0),
                   "samples": s, "ready_s": a.ready_secs, "rss_mib": a.rss_mib}),
        );
    }
    let mut loads = BTreeMap::new();
    for &n in &plan.load_scales {
        eprintln!("bench: full load n={n}");
        let w = World::new(&bins, false)?;
        write_registry(&w.dir, n, SERVER)?;
        let a = start_agent(&w, "REGISTRY_ONLY", "", true)?;
        // The enforcement works once ready.
        let r = client(
            &bins,
            &w.pod(),
            &["conn", &format!("{VIP}:80"), "100", "1", "10"],
        )?;
        if num(&r, "errors") > 0.0 || num(&r, "connections") < 100.0 {
            bail!("n={n}: VIP not working after load: {r}");
        }
        loads.insert(
            n,
            json!({"ready_s": a.ready_secs, "rss_mib": a.rss_mib, "hwm_mib": a.hwm_mib}),
        );
    }

    // 5. DNS proxy.
    eprintln!("bench: dns");
    let dns = dns_bench(&bins, &plan)?;

    // 6. Kubernetes mode.
    eprintln!("bench: kubernetes");
    let kubernetes = kubernetes_bench(&bins, &plan)?;

    // 7. Per-program cost of every layer.
    eprintln!("bench: per-program profile");
    let profile = profile(&bins, &plan)?;
    let previous = if quick { None } else { previous_ratios() };

    let results = json!({
        "quick": quick,
        "pinned": pinned(),
        "machine": machine(),
        "plan": format!("{plan:?}"),
        "plan_summary": plan_summary(&plan),
        "seconds": started.elapsed().as_secs_f64(),
        "trials": trials.iter().map(|(rep, m, n, row)| json!({"rep": rep, "mechanism": m.name(), "n": n, "values": row})).collect::<Vec<_>>(),
        "updates": updates,
        "loads": loads,
        "dns": dns,
        "kubernetes": kubernetes,
        "profile": profile,
        "previous": previous,
    });
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let report = crate::report::render(&results, &plan_summary(&plan))?;
    crate::report::plots(&results, &out_dir)?;
    let report_path = if quick {
        out_dir.join("BENCHMARKS.md")
    } else {
        workspace_root().join("BENCHMARKS.md")
    };
    std::fs::write(&report_path, report)?;
    println!(
        "bench: done in {:.0} s; report {}, plots and results.json in {}",
        started.elapsed().as_secs_f64(),
        report_path.display(),
        out_dir.display()
    );
    Ok(())
}

/// The cost of every egress program, from the kernel's own accounting: short
/// connections to the VIP (runs per connection, ns per run), then one bulk
/// transfer (the per-packet programs on a long connection). In a trial of its
/// own, since the accounting costs a clock read per program run.
fn profile(bins: &Bins, plan: &Plan) -> Result<Value> {
    let mut w = World::new(bins, false)?;
    let target = activate(&mut w, Mech::Egress, 10)?;
    let pod = w.pod();
    let _stats = crate::bpfstats::Enabled::new()?;
    let before = crate::bpfstats::snapshot()?;
    let conns = client(
        bins,
        &pod,
        &["conn", &target.echo, &plan.seq_count.to_string(), "8", "20"],
    )?;
    let mid = crate::bpfstats::snapshot()?;
    let bulk = client(
        bins,
        &pod,
        &[
            "bulk",
            &target.bulk,
            &(plan.bulk_bytes / 4).to_string(),
            &plan.bulk_secs.to_string(),
        ],
    )?;
    let after = crate::bpfstats::snapshot()?;
    let n = num(&conns, "connections").max(1.0);
    let bytes = num(&bulk, "bytes").max(1.0);
    let per = |d: BTreeMap<String, (u64, f64)>, per_unit: f64| -> Value {
        d.into_iter()
            .map(|(name, (runs, ns))| {
                (
                    name,
                    json!({"runs": runs, "ns_per_run": ns, "runs_per_unit": runs as f64 / per_unit,
                           "ns_per_unit": ns * runs as f64 / per_unit}),
                )
            })
            .collect::<serde_json::Map<String, Value>>()
            .into()
    };
    Ok(json!({
        "connections": n,
        "bulk_bytes": bytes,
        "per_connection": per(crate::bpfstats::delta(&before, &mid), n),
        "per_mib": per(crate::bpfstats::delta(&mid, &after), bytes / (1 << 20) as f64),
    }))
}

/// The egress ratios of the run BENCHMARKS.md was last rendered from, to show
/// what changed.
fn previous_ratios() -> Option<Value> {
    let path = workspace_root().join("bench/results.json");
    let old: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    Some(json!({
        "seconds": old["seconds"],
        "source": "the bench/results.json this run replaced",
        "ratios": crate::report::egress_ratios(&old),
    }))
}

/// Renders BENCHMARKS.md and the plots again from bench/results.json.
pub fn rerender() -> Result<()> {
    let dir = workspace_root().join("bench");
    let mut results: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json"))?)?;
    // `EGRESS_BENCH_PREVIOUS=FILE`: compare with that run's results instead (e.g.
    // `git show REV:bench/results.json > FILE` for the numbers of a release).
    if let Some(prev) = std::env::var_os("EGRESS_BENCH_PREVIOUS") {
        let old: Value = serde_json::from_str(&std::fs::read_to_string(&prev)?)?;
        results["previous"] = json!({
            "seconds": old["seconds"],
            "source": std::env::var("EGRESS_BENCH_PREVIOUS_LABEL")
                .unwrap_or_else(|_| prev.to_string_lossy().into_owned()),
            "ratios": crate::report::egress_ratios(&old),
        });
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(&results)?,
        )?;
    }
    let plan = results["plan_summary"]
        .as_str()
        .or(results["plan"].as_str())
        .unwrap_or("")
        .to_owned();
    std::fs::write(
        workspace_root().join("BENCHMARKS.md"),
        crate::report::render(&results, &plan)?,
    )?;
    crate::report::plots(&results, &dir)?;
    println!("bench: BENCHMARKS.md and bench/*.svg rendered from bench/results.json");
    Ok(())
}

fn plan_summary(p: &Plan) -> String {
    format!(
        "{} repetition(s) in random order; registry sizes {:?}; {} short connections with 32 in flight \
         for the rate, {} sequential for connect latency, {} refused connects, one transfer of up to {} MiB \
         (at most {} s); update latency over {} samples at {:?} entries; full load at {:?} entries; {} DNS queries per case.",
        p.reps,
        p.scales,
        p.conn_count,
        p.seq_count,
        p.deny_count,
        p.bulk_bytes >> 20,
        p.bulk_secs,
        p.update_samples,
        p.update_scales,
        p.load_scales,
        p.dns_count
    )
}

/// Deterministic Fisher–Yates with a small LCG: the order differs per repetition.
fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    for i in (1..v.len()).rev() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = ((x >> 33) as usize) % (i + 1);
        v.swap(i, j);
    }
}

/// On SIGINT/SIGTERM/SIGHUP: stop what this run started and remove what it created
/// (its namespaces, cgroups and work directories, all named after this process),
/// then exit. A completed run removes them itself, as each world is dropped.
fn clean_up_on_interrupt() {
    let result = ctrlc::set_handler(|| {
        eprintln!("bench: interrupted; removing what this run created");
        clean_up_after(std::process::id());
        std::process::exit(130);
    });
    if let Err(e) = result {
        eprintln!(
            "bench: cannot handle interruption ({e}); an interrupted run leaves its namespaces"
        );
    }
}

fn clean_up_after(pid: u32) {
    // The processes this run started: servers, agents, proxies, clients.
    let children = children_of(pid);
    for &c in &children {
        // SAFETY: plain kill(2) of our own child processes.
        unsafe { libc::kill(c as i32, libc::SIGTERM) };
    }
    std::thread::sleep(Duration::from_millis(300));
    for &c in &children {
        // SAFETY: as above; a child that already exited is a harmless ESRCH.
        unsafe { libc::kill(c as i32, libc::SIGKILL) };
    }
    let tag = pid % 100_000;
    if let Ok(list) = crate::sh_output("ip", &["netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if ns.starts_with(&format!("eg{tag}x")) {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }
    let prefix = format!("egress-bench-{tag}x");
    // Agents leave their programs attached (fail static): uninstall each one
    // this run configured, before its work directory goes.
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let config = e.path().join("agent.yaml");
            if e.file_name().to_string_lossy().starts_with(&prefix) && config.exists() {
                let _ = Command::new(egress_tests::agent_bin())
                    .args(["uninstall", "--config"])
                    .arg(&config)
                    .status();
            }
        }
    }
    let cgroups = cgroup2_root();
    for dir in [cgroups.as_path(), &std::env::temp_dir()] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            if !e.file_name().to_string_lossy().starts_with(&prefix) {
                continue;
            }
            if dir == cgroups {
                let _ = std::fs::write(e.path().join("cgroup.kill"), "1");
                remove_cgroup_tree(&e.path());
            } else {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Child cgroups first: a cgroup directory is removed with rmdir, never its files.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Process ids whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                // The command name may hold spaces: fields after its ')'.
                .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.to_owned()))
                .and_then(|rest| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(pid)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_non_finite() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![f64::NAN, 5.0, f64::INFINITY]), 5.0);
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn percentile_picks_the_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).rev().collect();
        assert_eq!(percentile(&mut v, 0.5), 51.0);
        assert_eq!(percentile(&mut v, 0.99), 99.0);
        assert_eq!(percentile(&mut v, 1.0), 100.0);
    }

    #[test]
    fn shuffle_is_a_permutation_that_depends_on_the_seed() {
        let base: Vec<u32> = (0..20).collect();
        let (mut a, mut b) = (base.clone(), base.clone());
        shuffle(&mut a, 1);
        shuffle(&mut b, 2);
        assert_ne!(a, b);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, base);
    }
}
