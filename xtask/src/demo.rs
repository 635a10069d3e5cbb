//! `cargo xtask demo`: builds a sandbox (a pod network namespace and cgroup, three
//! external hosts with real servers), runs `egress-agent` on the example
//! configuration in `config/`, and shows connections being rewritten, allowed and
//! refused, with the agent's log and metrics. Everything is removed at the end.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use egress_tests::dns::DnsServer;
use egress_tests::server::Server;
use egress_tests::{Agent, Cgroup, Net, Place, ProbeResult, ext_v4, metric_sum};

use crate::{cargo_build, workspace_root};

pub fn demo(hold: bool) -> Result<()> {
    crate::setup::setup(true)?;
    let bins = cargo_build()?;
    // SAFETY: single-threaded at this point; the variables are read by the demo's
    // own helpers.
    unsafe {
        std::env::set_var("EGRESS_AGENT_BIN", &bins.agent);
        std::env::set_var("EGRESS_PROBE_BIN", &bins.probe);
    }

    let root = workspace_root();
    let example = root.join("config");
    let text = std::fs::read_to_string(example.join("agent.yaml"))?;
    let cgroup_line = text
        .lines()
        .find(|l| l.starts_with("cgroupPath:"))
        .context("config/agent.yaml has no cgroupPath")?;
    let example_cgroup = cgroup_line.trim_start_matches("cgroupPath:").trim();
    let cgroup_name = Path::new(example_cgroup)
        .file_name()
        .context("cgroupPath has no name")?;

    println!("== egress demo ==");
    println!(
        "building a sandbox: node 198.18.0.1 (runs the agent), pod 198.18.0.2, external hosts \
         198.18.0.11-14 (14 is the upstream DNS server) in network namespaces"
    );
    let net = Net::new(4);
    let upstream = DnsServer::start(net.ext(4), sa("198.18.0.14:53"));
    upstream.set_ips("api.payments.example", &["198.18.0.14"], 30);
    upstream.set_ips("storage.googleapis.example", &["198.18.0.12"], 30);
    upstream.set_ips("www.example.org", &["198.18.0.13"], 30);
    let attach = Cgroup::new(egress_tests::cgroup2_root().join(cgroup_name));
    let pod = attach.child("pod");
    let servers = [
        Server::start(
            net.ext(1),
            sa("[::]:8080"),
            "legacy-monitoring-1 (198.18.0.11:8080)",
        ),
        Server::start(
            net.ext(2),
            sa("[::]:8080"),
            "legacy-monitoring-2 (198.18.0.12:8080)",
        ),
        Server::start(net.ext(3), sa("[::]:443"), "partner 198.18.0.13:443"),
        Server::start(net.ext(3), sa("[::]:22"), "ssh on 198.18.0.13"),
        Server::start(
            net.ext(4),
            sa("[::]:8080"),
            "payments-api (198.18.0.14:8080)",
        ),
        Server::start(net.ext(2), sa("[::]:443"), "storage (198.18.0.12:443)"),
    ];

    // The example config, pointed at this machine's cgroup2 mount and a free port.
    let dir = tempdir()?;
    let metrics_port = egress_tests::free_port();
    let config_text = text
        .replace(
            cgroup_line,
            &format!("cgroupPath: {}", attach.path.display()),
        )
        .replace(
            "metricsAddress: 127.0.0.1:9464",
            &format!("metricsAddress: 127.0.0.1:{metrics_port}"),
        );
    // The sandbox goes with the demo: so do the programs (fail static is for
    // nodes, not for a demo interrupted with Ctrl-C).
    let config_text = format!("{config_text}\nonExit: uninstall\n");
    std::fs::write(dir.join("agent.yaml"), config_text)?;
    copy_dir(&example.join("serviceentries"), &dir.join("serviceentries"))?;
    println!(
        "starting: egress-agent run --config config/agent.yaml (policy REGISTRY_ONLY, attached at {})",
        attach.path.display()
    );
    // The agent runs in the sandbox's "node" namespace, as on a Kubernetes node.
    let agent = Agent::start(
        &dir.join("agent.yaml"),
        sa(&format!("127.0.0.1:{metrics_port}")),
        Some(&net.node.path()),
    );
    let place = Place {
        netns: net.pod().path(),
        cgroup: Some(pod.path.clone()),
    };
    // Ping sockets are open to every group, as container runtimes set it: what
    // refuses them below is the agent, not the kernel.
    egress_tests::attack::allow_ping_group(net.pod());
    let stranger_cgroup = egress_tests::Cgroup::new(attach.path.join("stranger"));
    let stranger = Place {
        netns: net.pod().path(),
        cgroup: Some(stranger_cgroup.path.clone()),
    };

    println!();
    println!("-- from the pod (namespace shop, workload frontend) --");
    for _ in 0..2 {
        show_curl(
            &place,
            "rewritten",
            "http://240.240.10.10/",
            "VIP of legacy-monitoring.internal",
        );
    }
    show_curl(
        &place,
        "rewritten",
        "http://[2001:2::10]/",
        "IPv6 VIP of the same service",
    );
    show_probe(
        &place,
        "240.240.10.10:80",
        "plain socket: getpeername() shows the VIP",
    );
    show_probe(
        &place,
        "198.18.0.11:8080",
        "an endpoint's own address is no registry address: refused",
    );
    show_probe(
        &place,
        "198.18.0.13:443",
        "partners.example 198.18.0.13/32, NONE: as-is",
    );
    show_probe(
        &place,
        "198.18.0.13:22",
        "not in the registry: REGISTRY_ONLY refuses",
    );
    show_probe(
        &place,
        &format!("{}:8080", ext_v4(3)),
        "not in the registry either",
    );
    println!();
    println!("-- DNS from the pod: captured by the agent's proxy on the node --");
    show_dig(
        &place,
        "api.payments.example",
        "a DNS-resolution host: answered with its VIP, locally",
    );
    show_curl(
        &place,
        "rewritten",
        "http://api.payments.example/",
        "by name: VIP → the address the agent resolved",
    );
    show_probe(
        &place,
        "198.18.0.12:443",
        "*.googleapis.example (NONE) before any lookup: unknown",
    );
    show_dig(
        &place,
        "storage.googleapis.example",
        "forwarded upstream; learned for this pod, port 443",
    );
    show_probe(
        &place,
        "198.18.0.12:443",
        "the learned address, right after the lookup",
    );
    show_dig(
        &place,
        "www.example.org",
        "not in the registry: still resolves",
    );
    show_probe(
        &place,
        "198.18.0.13:443",
        "partners.example: allowed whatever the name",
    );
    println!();
    println!("-- an attacker in the pod (uid 65534, a default container's capabilities) --");
    for (args, what) in [
        (&["raw", "198.18.0.13"][..], "a raw socket: never created"),
        (
            &["ping", "198.18.0.13"],
            "an ICMP ping socket: never created",
        ),
        (
            &["lsrr-opt", "198.18.0.14", "198.18.0.13", "9999"],
            "a source route via an allowed hop: refused",
        ),
    ] {
        let a = egress_tests::attack::attack(
            &place,
            egress_tests::attack::Privilege::ContainerDefault,
            args,
        );
        let result = if a.ok {
            "sent".to_owned()
        } else {
            format!("{} failed: {}", a.step, a.error)
        };
        println!("  [attack   ] {:<40} {result}   ({what})", args.join(" "));
    }
    println!();
    println!("-- a cgroup under the attach point that is no workload (yet) --");
    show_probe(
        &stranger,
        "198.18.0.13:22",
        "the unknown-workload default: REGISTRY_ONLY, empty view",
    );
    show_probe(&stranger, "240.240.10.10:80", "no VIP in an empty view");

    std::thread::sleep(Duration::from_millis(1200));
    println!();
    println!("-- what the servers saw --");
    for s in &servers {
        println!("  {:<45} {} connection(s)", s.name, s.hit_count());
    }
    println!();
    println!("-- access log (one JSON line per refusal) --");
    for line in agent.log_text().lines().filter(|l| l.starts_with('{')) {
        println!("  {line}");
    }
    println!();
    println!("-- metrics (http://127.0.0.1:{metrics_port}/metrics) --");
    let metrics = agent.metrics_text();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("egress_connections_total{"))
    {
        println!("  {}", shorten(line));
    }
    println!();
    println!("-- traffic counted on the pod's veth (payload bytes), per destination service --");
    for line in metrics.lines().filter(|l| {
        l.starts_with("egress_sent_bytes_total{") || l.starts_with("egress_received_bytes_total{")
    }) {
        println!("  {}", shorten(line));
    }
    let denied = metric_sum(
        &metrics,
        "egress_connections_total",
        &[("decision", "denied")],
    );
    let rewritten = metric_sum(
        &metrics,
        "egress_connections_total",
        &[("decision", "rewritten")],
    );
    println!();
    println!("summary: {rewritten} rewritten, {denied} denied");
    if hold {
        println!(
            "holding: the sandbox and agent stay up until Ctrl-C (pod netns: {})",
            net.pod().name
        );
        wait_for_ctrl_c();
    }
    drop(agent);
    drop(servers);
    drop(upstream);
    drop(pod);
    drop(attach);
    drop(net);
    std::fs::remove_dir_all(&dir).ok();
    println!("sandbox removed");
    if denied < 2.0 || rewritten < 3.0 {
        bail!("the demo did not see the expected rewrites and refusals");
    }
    Ok(())
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn show_curl(place: &Place, expect: &str, url: &str, what: &str) {
    let out = place.run("curl", &["-sS", "-m", "3", url]);
    let result = if out.status.success() {
        format!("-> {}", String::from_utf8_lossy(&out.stdout).trim())
    } else {
        format!("-> failed: {}", String::from_utf8_lossy(&out.stderr).trim())
    };
    println!("  [{expect:<9}] curl {url:<28} {result}   ({what})");
}

fn show_dig(place: &Place, name: &str, what: &str) {
    let out = place.run("dig", &["+short", "+time=2", "+tries=1", name]);
    let answer = String::from_utf8_lossy(&out.stdout)
        .trim()
        .replace('\n', " ");
    println!("  [dns      ] dig {name:<32} -> {answer}   ({what})");
}

fn show_probe(place: &Place, addr: &str, what: &str) {
    let r: ProbeResult = place.connect(sa(addr));
    let result = if r.ok {
        format!(
            "-> connected, peer {}, reply {:?}",
            r.peer.as_deref().unwrap_or("?"),
            r.reply.trim()
        )
    } else {
        format!("-> {} (errno {})", r.error, r.errno)
    };
    println!("  [socket   ] connect {addr:<25} {result}   ({what})");
}

fn shorten(line: &str) -> String {
    const KEEP: &[&str] = &[
        "source_workload",
        "destination_service=",
        "destination_port",
        "decision",
        "reason",
        "match",
    ];
    let Some((labels, value)) = line.rsplit_once(' ') else {
        return line.to_owned();
    };
    let Some((family, inner)) = labels.split_once('{') else {
        return line.to_owned();
    };
    let inner = inner.trim_end_matches('}');
    let kept: Vec<&str> = inner
        .split(',')
        .filter(|kv| KEEP.iter().any(|k| kv.starts_with(k)))
        .collect();
    format!("{family}{{{}}} {value}", kept.join(","))
}

fn tempdir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("egress-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()))?;
        } else {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

fn wait_for_ctrl_c() {
    // A shell `read` would need a tty; wait for SIGINT by sleeping in sigwait.
    let _ = Command::new("sh")
        .args(["-c", "trap 'exit 0' INT TERM; while :; do sleep 1; done"])
        .status();
}
