//! Nothing to bypass (THREAT-MODEL.md), tried from inside a REGISTRY_ONLY pod as an
//! attacker would: a default container (uid 65534, Docker's capabilities with
//! NET_RAW) or root in the pod. Every test watches the receiving side (a packet
//! counter at the external host's interface, or its server) and the record (the
//! access log and the counters), not only the errno. `attack_tools.rs` shows each
//! attempt does reach the wire when nothing enforces.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use egress_tests::attack::*;
use egress_tests::server::{Server, UdpServer};
use egress_tests::*;

/// The pod as a workload with its interface known (the interface check on).
const POD: &str = "workloads:\n  - {cgroup: pod, namespace: shop, name: web, ip: 198.18.0.2, ips: [\"2001:db8::2\"], interface: vpod0}\n";

/// ext1 (198.18.0.11) is registered for UDP 9999 and TCP 8080 (NONE addresses:
/// reached as-is); ext2 (198.18.0.12) and ext3 are not.
const ALLOWED: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext1, namespace: shop}
spec:
  hosts: [ext1.internal]
  addresses: [198.18.0.11, "2001:db8::11"]
  location: MESH_EXTERNAL
  resolution: NONE
  ports:
  - {number: 9999, name: udp, protocol: UDP}
  - {number: 8080, name: tcp, protocol: TCP}
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A counter of everything from the pod (v4 and v6) arriving at ext `i`'s eth0.
fn counter(w: &World, i: usize) -> PacketCounter {
    PacketCounter::with_sources(w.net.ext(i), "eth0", &[ip(POD_V4), ip(POD_V6)])
}

/// The access-log lines (JSON) of the agent that contain every needle.
fn log_lines(agent: &Agent, needles: &[&str]) -> Vec<String> {
    agent
        .log_text()
        .lines()
        .filter(|l| l.starts_with('{') && needles.iter().all(|n| l.contains(n)))
        .map(str::to_owned)
        .collect()
}

/// Waits until exactly-or-more `want` access-log lines with the needles are
/// there, then returns them (a moment later, so one too many shows).
fn wait_lines(agent: &Agent, needles: &[&str], want: usize) -> Vec<String> {
    let start = Instant::now();
    while log_lines(agent, needles).len() < want && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    log_lines(agent, needles)
}

/// Waits until the metric reaches `want` (the agent folds kernel counters in
/// every 500 ms), then returns it one poll later.
fn wait_metric(agent: &Agent, labels: &[(&str, &str)], want: f64) -> f64 {
    let family = "egress_connections_total";
    let start = Instant::now();
    while metric_sum(&agent.metrics_text(), family, labels) < want
        && start.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(600));
    metric_sum(&agent.metrics_text(), family, labels)
}

/// The counter still sees the pod's allowed traffic: a zero above meant
/// something.
fn assert_counter_works(w: &World, c: &PacketCounter) {
    let before = c.packets();
    let a = attack(
        &w.pod(),
        Privilege::ContainerDefault,
        &["udp", "198.18.0.11", "9999"],
    );
    assert!(a.ok, "control: {a:?}");
    assert!(
        c.wait_packets(before + 1, Duration::from_secs(3)) > before,
        "the counter saw the allowed control datagram"
    );
}

/// Class: sockets the connect/sendmsg hooks never see (raw, ping, UDP-Lite).
#[test]
fn sockets_the_connect_layer_cannot_judge_are_never_created() {
    let w = World::new(1);
    w.write_se("ext1.yaml", ALLOWED);
    allow_ping_group(w.net.pod());
    let c1 = counter(&w, 1);
    let agent = w.start_agent("REGISTRY_ONLY", POD);
    let attempts: &[(&[&str], &str)] = &[
        (&["raw", "198.18.0.11"], "raw"),
        (&["raw", "2001:db8::11"], "raw"),
        (&["rawip", "198.18.0.11"], "raw"),
        (&["ping", "198.18.0.11"], "icmp"),
        (&["ping", "2001:db8::11"], "icmp"),
        (&["udplite", "198.18.0.11", "9999"], "udplite"),
        (&["udplite", "2001:db8::11", "9999"], "udplite"),
    ];
    for (args, _) in attempts {
        let a = attack(&w.pod(), Privilege::ContainerDefault, args);
        assert_eq!(
            (a.ok, a.step.as_str(), a.errno),
            (false, "socket", libc::EPERM),
            "{args:?}: {a:?}"
        );
    }
    // Root in the pod is refused the same way.
    let a = attack(&w.pod(), Privilege::Root, &["raw", "198.18.0.11"]);
    assert_eq!((a.step.as_str(), a.errno), ("socket", libc::EPERM), "{a:?}");
    assert_eq!(c1.packets(), 0, "nothing from the pod reached ext1");
    for (transport, n) in [("raw", 4), ("icmp", 2), ("udplite", 2)] {
        let needle = format!("\"transport\":\"{transport}\"");
        let lines = wait_lines(
            &agent,
            &[
                "\"layer\":\"socket\"",
                "\"reason\":\"socket_type\"",
                &needle,
            ],
            n,
        );
        assert_eq!(lines.len(), n, "{transport}: {lines:?}");
        assert!(lines.iter().all(|l| l.contains("\"workload\":\"web\"") && l.contains("\"verdict\":\"denied\"")));
        let labels = [
            ("reason", "socket_type"),
            ("transport", transport),
            ("decision", "denied"),
        ];
        assert_eq!(
            wait_metric(&agent, &labels, n as f64),
            n as f64,
            "{transport}"
        );
    }
    // SCTP and DCCP are not built into this kernel: the attempt fails before any
    // hook (the classification is unit-tested in egress-common).
    for proto in ["sctp", "dccp"] {
        let a = attack(
            &w.pod(),
            Privilege::ContainerDefault,
            &[proto, "198.18.0.11", "9999"],
        );
        assert!(!a.ok && a.step == "socket", "{proto}: {a:?}");
    }
    // TCP, MPTCP and UDP are judged by the connect layer, not refused here.
    let _server = Server::start(w.net.ext(1), sa("[::]:8080"), "ext1");
    for args in [
        ["tcp", "198.18.0.11", "8080"],
        ["mptcp", "198.18.0.11", "8080"],
    ] {
        let a = attack(&w.pod(), Privilege::ContainerDefault, &args);
        assert!(a.ok && a.reply == "hello from ext1\n", "{args:?}: {a:?}");
    }
    let a = attack(
        &w.pod(),
        Privilege::ContainerDefault,
        &["mptcp", "198.18.0.12", "8080"],
    );
    assert_eq!(
        (a.step.as_str(), a.errno),
        ("connect", libc::EPERM),
        "{a:?}"
    );
    assert_counter_works(&w, &c1);
}

/// Class: sockets the connect/sendmsg hooks never see (AF_PACKET).
#[test]
fn af_packet_frames_never_leave_the_pod() {
    let w = World::new(2);
    w.write_se("ext1.yaml", ALLOWED);
    let (c1, c2) = (counter(&w, 1), counter(&w, 2));
    let agent = w.start_agent("REGISTRY_ONLY", POD);
    let mac = mac_of(w.net.ext(2), "eth0");
    for dst_mac in [mac.as_str(), "ff:ff:ff:ff:ff:ff"] {
        let a = attack(
            &w.pod(),
            Privilege::ContainerDefault,
            &["packet", "eth0", dst_mac, "198.18.0.12"],
        );
        // Refused at socket() where the kernel runs per-cgroup BPF LSM programs;
        // otherwise the frame is sent and dropped on the pod's interface.
        assert!(
            a.step == "done" || (a.step == "socket" && a.errno == libc::EPERM),
            "{a:?}"
        );
    }
    // Even a frame for a registered address: what an AF_PACKET socket sends is
    // not judged by the connect layer, only by the interface.
    let mac1 = mac_of(w.net.ext(1), "eth0");
    let a = attack(
        &w.pod(),
        Privilege::ContainerDefault,
        &["packet", "eth0", &mac1, "198.18.0.12"],
    );
    assert!(a.step == "done" || a.errno == libc::EPERM, "{a:?}");
    let lines = wait_lines(
        &agent,
        &["\"destination\":\"198.18.0.12\"", "\"verdict\":\"denied\""],
        3,
    );
    assert!(
        lines.len() == 3 || log_lines(&agent, &["\"transport\":\"packet\""]).len() == 3,
        "one refusal per frame: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.contains("\"layer\":\"interface_packet\"")
                // Refused as sent to a host that is not where the address is
                // reached, or as an unregistered destination.
                && (l.contains("\"reason\":\"packet_check\"")
                    || l.contains("\"reason\":\"spoofed\""))),
        "{lines:?}"
    );
    assert_eq!(
        (c1.packets(), c2.packets()),
        (0, 0),
        "no frame reached ext1 or ext2"
    );
    assert_counter_works(&w, &c1);
}

/// The `allowSockets` switch: re-allows exactly the kind it names.
#[test]
fn allow_sockets_reopens_ping_where_configured_and_nothing_else() {
    let w = World::new(1);
    w.write_se("ext1.yaml", ALLOWED);
    allow_ping_group(w.net.pod());
    let c1 = counter(&w, 1);
    let pod = POD.replace(
        "interface: vpod0}",
        "interface: vpod0, allowSockets: [icmp]}",
    );
    let agent = w.start_agent("REGISTRY_ONLY", &pod);
    let a = attack(
        &w.pod(),
        Privilege::ContainerDefault,
        &["ping", "198.18.0.11"],
    );
    assert!(a.ok, "{a:?}");
    assert!(
        c1.wait_packets(1, Duration::from_secs(3)) >= 1,
        "the echo request arrived"
    );
    let a = attack(
        &w.pod(),
        Privilege::ContainerDefault,
        &["raw", "198.18.0.11"],
    );
    assert_eq!((a.step.as_str(), a.errno), ("socket", libc::EPERM), "{a:?}");
    assert_eq!(wait_lines(&agent, &["\"transport\":\"raw\""], 1).len(), 1);
    assert!(log_lines(&agent, &["\"transport\":\"icmp\""]).is_empty());
}

/// Class: first hop ≠ destination (LSRR/SSRR, IPv6 routing header; option and
/// control message).
#[test]
fn source_routes_never_leave() {
    let w = World::new(2);
    w.write_se("ext1.yaml", ALLOWED);
    let (c1, c2) = (counter(&w, 1), counter(&w, 2));
    let agent = w.start_agent("REGISTRY_ONLY", POD);
    // The hooks would see ext1 (allowed); the route puts ext2 on the wire.
    // (The IPv6 one is a segment routing header, type 4: the kernel takes it
    // from an unprivileged setsockopt.)
    for args in [
        &["lsrr-opt", "198.18.0.11", "198.18.0.12", "9999"][..],
        &["ssrr-opt", "198.18.0.11", "198.18.0.12", "9999"],
        &["rthdr-opt", "2001:db8::11", "2001:db8::12", "9999", "4"],
    ] {
        let a = attack(&w.pod(), Privilege::ContainerDefault, args);
        assert_eq!(
            (a.ok, a.step.as_str(), a.errno),
            (false, "setsockopt", libc::EPERM),
            "{args:?}: {a:?}"
        );
    }
    assert_eq!(
        wait_lines(
            &agent,
            &["\"layer\":\"setsockopt\"", "\"transport\":\"ip_options\""],
            2
        )
        .len(),
        2
    );
    assert_eq!(
        wait_lines(
            &agent,
            &["\"layer\":\"setsockopt\"", "\"transport\":\"ipv6_rthdr\""],
            1
        )
        .len(),
        1
    );
    // Per message (IP_RETOPTS control data): only the packet shows the route.
    let a = attack(
        &w.pod(),
        Privilege::ContainerDefault,
        &["lsrr-cmsg", "198.18.0.11", "198.18.0.12", "9999"],
    );
    assert!(!a.ok, "{a:?}");
    let lines = wait_lines(
        &agent,
        &["\"layer\":\"socket_packet\"", "\"reason\":\"source_route\""],
        1,
    );
    assert_eq!(lines.len(), 1, "{lines:?}\n{}", agent.log_text());
    assert_eq!(
        (c1.packets(), c2.packets()),
        (0, 0),
        "no source-routed packet left the pod"
    );
    let labels = [("reason", "source_route")];
    assert_eq!(wait_metric(&agent, &labels, 4.0), 4.0);
    assert_counter_works(&w, &c1);
}

/// Class: sockets attributed to the wrong cgroup (process moved, socket passed).
#[test]
fn a_socket_keeps_the_identity_of_the_cgroup_it_was_created_in() {
    let w = World::new(3);
    w.write_se("ext1.yaml", ALLOWED);
    let ext3 = Server::start(w.net.ext(3), sa("[::]:22"), "ext3");
    let agent = w.start_agent("REGISTRY_ONLY", POD);
    // Created in the pod, then the process moves out of the attach point
    // altogether, then connects.
    let outside = Cgroup::new(cgroup2_root().join(unique("egress-out-")));
    let held = HeldAttack::start(&w.pod(), Privilege::Root, ip("198.18.0.13"), 22, 10);
    std::fs::write(outside.path.join("cgroup.procs"), held.pid.to_string()).unwrap();
    let a = held.release();
    assert_eq!(
        (a.step.as_str(), a.errno),
        ("connect", libc::EPERM),
        "{a:?}"
    );
    // ... or into a cgroup under the attach point that is no workload.
    let stranger = w.root.child("stranger");
    let held = HeldAttack::start(&w.pod(), Privilege::Root, ip("198.18.0.13"), 22, 10);
    std::fs::write(stranger.path.join("cgroup.procs"), held.pid.to_string()).unwrap();
    let a = held.release();
    assert_eq!(
        (a.step.as_str(), a.errno),
        ("connect", libc::EPERM),
        "{a:?}"
    );
    // Passed over a unix socket to a process outside the attach point.
    let sock = w.dir.path().join("pass.sock");
    let sock = sock.to_str().unwrap();
    let mut sender = attack_command(&w.pod(), Privilege::Root, &["passfd-send", sock])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !std::path::Path::new(sock).exists() && start.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let a = attack(
        &w.pod_netns_only(),
        Privilege::Root,
        &["passfd-recv-connect", sock, "198.18.0.13", "22"],
    );
    let _ = sender.wait();
    assert_eq!(
        (a.step.as_str(), a.errno),
        ("connect", libc::EPERM),
        "{a:?}"
    );
    assert_eq!(ext3.hit_count(), 0, "ext3 saw no connection");
    // Each refusal names the pod the socket was made in.
    let lines = wait_lines(&agent, &["\"destination\":\"198.18.0.13\""], 3);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("\"namespace\":\"shop\"") && l.contains("\"workload\":\"web\"")),
        "{lines:?}"
    );
    // A socket made outside the attach point but sending from the pod's network
    // namespace: the interface check still holds it to the pod's view.
    let a = attack(
        &w.pod_netns_only(),
        Privilege::Root,
        &["tcp", "198.18.0.13", "22"],
    );
    assert!(!a.ok, "{a:?}");
    assert_eq!(ext3.hit_count(), 0);
}

/// Class: unknown cgroups (a workload cgroup re-created with a new id).
#[test]
fn a_recreated_workload_cgroup_is_never_untouched() {
    let w = World::new(3);
    w.write_se(
        "legacy.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: shop}
spec:
  hosts: [legacy.internal]
  addresses: [240.240.1.1]
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  endpoints: [{address: 198.18.0.11}]
"#,
    );
    let ext1 = Server::start(w.net.ext(1), sa("[::]:8080"), "ext1");
    let ext3 = Server::start(w.net.ext(3), sa("[::]:22"), "ext3");
    let agent = w.start_agent("REGISTRY_ONLY", POD);
    assert!(w.pod().connect(sa("240.240.1.1:80")).ok);
    let old_id = std::fs::metadata(&w.pod.path)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    // As on every container start: the workload's cgroup goes and comes back
    // with a new id, and a process starts in it at once.
    std::fs::remove_dir(&w.pod.path).unwrap();
    std::fs::create_dir(&w.pod.path).unwrap();
    let created_ms = now_ms();
    let to_vip = ProbeLoop::start(&w.pod(), sa("240.240.1.1:80"), 1500);
    let to_stranger = ProbeLoop::start(&w.pod(), sa("198.18.0.13:22"), 1500);
    let vip = to_vip.results();
    let stranger = to_stranger.results();
    // Every attempt was judged: by the default (EPERM) until the agent knew the
    // new cgroup, then by the pod's view. Never untouched (an untouched VIP has no
    // route: ENETUNREACH; an untouched stranger connects).
    for r in &vip {
        assert!(r.ok || r.errno == EPERM, "{r:?}");
    }
    assert!(stranger.iter().all(|r| r.errno == EPERM), "{stranger:?}");
    assert_eq!(ext3.hit_count(), 0);
    let first_ok = vip
        .iter()
        .find(|r| r.ok)
        .expect("the view applies once the agent knows the cgroup");
    let learned_after = Duration::from_millis(first_ok.t_ms.unwrap().saturating_sub(created_ms));
    eprintln!("the re-created cgroup got its own view {learned_after:?} after its creation");
    // The agent learns it from the inotify event of its creation (measured
    // here: 2-4 ms from mkdir to the first connection through the view).
    assert!(
        learned_after <= Duration::from_millis(50),
        "learned after {learned_after:?}"
    );
    assert!(ext1.hit_count() >= 1);
    let new_id = std::fs::metadata(&w.pod.path)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    assert_ne!(old_id, new_id);
    let _ = agent;
}

/// Class: address forms (link-local, cloud metadata).
#[test]
fn link_local_and_cloud_metadata_follow_the_registry() {
    let w = World::new(1);
    // ext1 plays the instance-metadata service at 169.254.169.254.
    w.net
        .ext(1)
        .ip(&["addr", "add", "169.254.169.254/32", "dev", "eth0"]);
    w.net
        .pod()
        .ip(&["route", "add", "169.254.169.254/32", "dev", "eth0"]);
    let md = Server::start(w.net.ext(1), sa("0.0.0.0:80"), "metadata");
    let agent = w.start_agent("REGISTRY_ONLY", POD);
    let r = w.pod().connect(sa("169.254.169.254:80"));
    assert_eq!(r.errno, EPERM, "{r:?}");
    assert_eq!(md.hit_count(), 0);
    assert_eq!(
        wait_lines(&agent, &["\"destination\":\"169.254.169.254\""], 1).len(),
        1
    );
    // A ServiceEntry opens it, as any other destination.
    w.write_se(
        "metadata.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: metadata, namespace: shop}
spec:
  hosts: [metadata.internal]
  addresses: [169.254.169.254]
  resolution: NONE
  ports: [{number: 80, name: http, protocol: HTTP}]
"#,
    );
    let start = Instant::now();
    loop {
        let r = w.pod().connect(sa("169.254.169.254:80"));
        if r.ok {
            assert_eq!(r.reply, "hello from metadata\n");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "never opened: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The packet-level second line: whatever produced the packet (netfilter DNAT
/// in the pod, a tunnel device the pod created).
#[test]
fn a_rewritten_destination_or_a_tunnel_in_the_pod_reaches_nothing() {
    let w = World::new(2);
    w.write_se("ext1.yaml", ALLOWED);
    let (c1, c2) = (counter(&w, 1), counter(&w, 2));
    let udp2 = UdpServer::start(w.net.ext(2), sa("0.0.0.0:9999"), "ext2");
    let agent = w.start_agent("REGISTRY_ONLY", POD);
    let pod_ns = w.net.pod().path();
    let nsenter = |args: &[&str]| {
        let net = format!("--net={}", pod_ns.display());
        let mut a = vec![net.as_str()];
        a.extend_from_slice(args);
        sh("nsenter", &a)
    };
    // Root in the pod (CAP_NET_ADMIN over its own netns) rewrites the
    // destination after the connect layer judged it: nftables DNAT.
    let table = unique("egdnat");
    nsenter(&["nft", "add", "table", "ip", &table]);
    nsenter(&[
        "nft",
        "add",
        "chain",
        "ip",
        &table,
        "out",
        "{ type nat hook output priority -100; }",
    ]);
    nsenter(&[
        "nft",
        "add",
        "rule",
        "ip",
        &table,
        "out",
        "ip",
        "daddr",
        "198.18.0.11",
        "dnat",
        "to",
        "198.18.0.12",
    ]);
    let a = attack(&w.pod(), Privilege::Root, &["udp", "198.18.0.11", "9999"]);
    assert!(!a.ok || a.errno == 0, "{a:?}");
    let a = attack(&w.pod(), Privilege::Root, &["tcp", "198.18.0.11", "8080"]);
    assert!(!a.ok, "{a:?}");
    nsenter(&["nft", "delete", "table", "ip", &table]);
    // A tunnel device the pod created (VXLAN; the kernel here has no IPIP or
    // GRE): the inner packet goes to an allowed address, the outer one to ext2.
    nsenter(&[
        "ip",
        "link",
        "add",
        "vx0",
        "type",
        "vxlan",
        "id",
        "42",
        "remote",
        "198.18.0.12",
        "dstport",
        "4789",
        "dev",
        "eth0",
    ]);
    nsenter(&["ip", "addr", "add", "10.99.0.1/24", "dev", "vx0"]);
    nsenter(&["ip", "link", "set", "vx0", "up"]);
    // The inner packet carries the pod's own address: the socket line lets it
    // through to the allowed ext1; only the interface sees the outer packet.
    nsenter(&[
        "ip",
        "route",
        "add",
        "198.18.0.11/32",
        "dev",
        "vx0",
        "src",
        "198.18.0.2",
    ]);
    nsenter(&[
        "ip",
        "neigh",
        "add",
        "198.18.0.11",
        "lladdr",
        "02:00:00:00:00:01",
        "dev",
        "vx0",
    ]);
    let a = attack(&w.pod(), Privilege::Root, &["udp", "198.18.0.11", "9999"]);
    assert!(a.ok, "the inner datagram is allowed: {a:?}");
    nsenter(&["ip", "link", "del", "vx0"]);
    assert_eq!(udp2.hit_count(), 0);
    assert_eq!(
        (c1.packets(), c2.packets()),
        (0, 0),
        "nothing reached ext1 or ext2"
    );
    let lines = wait_lines(
        &agent,
        &[
            "\"reason\":\"packet_check\"",
            "\"destination\":\"198.18.0.12\"",
        ],
        3,
    );
    assert!(lines.len() >= 3, "{lines:?}");
    assert_counter_works(&w, &c1);
}

/// The second line does not break what a pod serves: replies to connections a
/// remote end opened pass.
#[test]
fn inbound_connections_to_a_workload_are_still_answered() {
    let w = World::new(2);
    let agent = w.start_agent("REGISTRY_ONLY", POD);
    // A server in the pod (its cgroup and netns); a client on ext2, which the
    // pod's registry does not know.
    let script = "import socket\ns=socket.socket(socket.AF_INET6)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
                  s.bind(('::',7000))\ns.listen(8)\nprint('ready',flush=True)\n\
                  for _ in range(2):\n  c,_=s.accept()\n  c.recv(100)\n  c.sendall(b'hello from pod\\n'*2000)\n  c.close()\n";
    let mut server = w
        .pod()
        .command("python3")
        .args(["-c", script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready");
    let client = Place {
        netns: w.net.ext(2).path(),
        cgroup: None,
    };
    for addr in ["198.18.0.2:7000", "[2001:db8::2]:7000"] {
        let r = client.connect(sa(addr));
        assert!(r.ok, "{addr}: {r:?}");
        assert_eq!(r.reply.len(), "hello from pod\n".len() * 2000, "{addr}");
    }
    let _ = server.wait();
    assert!(log_lines(&agent, &["\"verdict\":\"denied\""]).is_empty());
}

/// Class: sockets attributed to the wrong cgroup (kernel-made MPTCP subflow).
#[test]
fn an_mptcp_subflow_the_kernel_opens_is_still_the_pods() {
    let w = World::new(1);
    w.write_se(
        "ext1.yaml",
        &ALLOWED.replace(
            "{number: 8080, name: tcp, protocol: TCP}",
            "{number: 8090, name: tcp, protocol: TCP}",
        ),
    );
    let extra = ip("198.18.0.21");
    let syns = SynCounter::new(w.net.ext(1), "eth0", extra);
    let agent = w.start_agent("REGISTRY_ONLY", POD);
    let _server = MptcpAnnouncer::start(w.net.ext(1), w.net.pod(), 8090, extra);
    // The application's connection is to a registered address, and works.
    let a = attack(
        &w.pod(),
        Privilege::ContainerDefault,
        &["mptcp", "198.18.0.11", "8090"],
    );
    assert!(a.ok && a.reply == "hello from mptcp\n", "{a:?}");
    // The subflow a kernel worker opens to the announced, unregistered address
    // is judged as the pod's (not the worker's cgroup) and refused.
    let lines = wait_lines(&agent, &["\"destination\":\"198.18.0.21\""], 1);
    assert!(!lines.is_empty(), "the subflow was refused and logged");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("\"namespace\":\"shop\"") && l.contains("\"workload\":\"web\"")),
        "{lines:?}"
    );
    assert_eq!(syns.syns(), 0, "no SYN reached the announced address");
}

/// Found by an independent red-team run: a source address that is not the
/// pod's (IPV6_FREEBIND / IP_TRANSPARENT, no privilege beyond a default
/// container's) would have an allowed server — or the agent's DNS proxy — answer
/// to an unregistered host. Class: address forms.
#[test]
fn a_forged_source_address_never_leaves() {
    let w = World::new(2);
    w.write_se("ext1.yaml", ALLOWED);
    let udp1 = UdpServer::start(w.net.ext(1), sa("[::]:9999"), "ext1");
    // Anything ext2 receives that ext1 (the reflector) or the pod sent.
    let c2 = PacketCounter::with_sources(
        w.net.ext(2),
        "eth0",
        &[
            ip("198.18.0.11"),
            ip("2001:db8::11"),
            ip(POD_V4),
            ip(POD_V6),
        ],
    );
    let agent = w.start_agent("REGISTRY_ONLY", POD);
    let out = python_as(
        &w.pod(),
        Privilege::ContainerDefault,
        "import socket\n\
         for fam, opt, own, ext1 in ((socket.AF_INET6, (socket.IPPROTO_IPV6, 78), '2001:db8::12', '2001:db8::11'),\n\
                                     (socket.AF_INET, (socket.IPPROTO_IP, 19), '198.18.0.12', '198.18.0.11')):\n\
         \x20 s = socket.socket(fam, socket.SOCK_DGRAM)\n\
         \x20 s.setsockopt(opt[0], opt[1], 1)\n\
         \x20 s.bind((own, 5555))\n\
         \x20 try:\n\
         \x20   s.sendto(b'exfiltrated', (ext1, 9999)); print('sent')\n\
         \x20 except OSError as e: print('refused', e.errno)\n",
    );
    assert_eq!(out.matches("refused 1").count(), 2, "{out}");
    assert_eq!(udp1.hit_count(), 0, "ext1 got no datagram to answer");
    assert_eq!(c2.packets(), 0, "ext2 got nothing");
    let lines = wait_lines(&agent, &["\"reason\":\"spoofed\""], 2);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("\"layer\":\"socket_packet\""))
    );
}

/// Found by an independent red-team run: root in the pod routes an allowed
/// address via another host of the segment; the IP destination is allowed, the
/// frame goes elsewhere. Class: first hop ≠ destination.
#[test]
fn a_next_hop_override_reaches_nothing() {
    let w = World::new(2);
    w.write_se("ext1.yaml", ALLOWED);
    let (c1, c2) = (counter(&w, 1), counter(&w, 2));
    let udp2 = UdpServer::start(w.net.ext(2), sa("[::]:9999"), "ext2");
    let agent = w.start_agent("REGISTRY_ONLY", POD);
    w.net.pod().ip(&[
        "route",
        "add",
        "198.18.0.11/32",
        "via",
        "198.18.0.12",
        "dev",
        "eth0",
    ]);
    w.net.pod().ip(&[
        "-6",
        "route",
        "add",
        "2001:db8::11/128",
        "via",
        "2001:db8::12",
        "dev",
        "eth0",
    ]);
    for dst in ["198.18.0.11", "2001:db8::11"] {
        let a = attack(&w.pod(), Privilege::ContainerDefault, &["udp", dst, "9999"]);
        assert!(a.ok, "the send itself is allowed: {a:?}");
    }
    // Refused as sent to a host that is not where the address is reached.
    let lines = wait_lines(
        &agent,
        &[
            "\"reason\":\"packet_check\"",
            "\"layer\":\"interface_packet\"",
        ],
        2,
    );
    assert!(lines.len() >= 2, "{lines:?}");
    assert_eq!(udp2.hit_count(), 0);
    assert_eq!(
        (c1.packets(), c2.packets()),
        (0, 0),
        "neither host got a datagram"
    );
    // Without the override the allowed destination is reached.
    w.net.pod().ip(&["route", "del", "198.18.0.11/32"]);
    assert_counter_works(&w, &c1);
}

/// Found by an independent red-team run: data in link-local kinds of frames —
/// an ARP-ethertype frame of a packet socket, a neighbour solicitation with
/// large options (injected through a TUN device and forwarded by the pod) — went
/// to any host of the segment. Class: sockets the hooks never see.
#[test]
fn arp_and_neighbour_discovery_carry_no_data() {
    let w = World::new(2);
    w.write_se("ext1.yaml", ALLOWED);
    let big_arp = NftCounter::matching(w.net.ext(2), "eth0", "ether type arp meta length > 100");
    let tagged = NftCounter::matching(w.net.ext(2), "eth0", "ether type vlan");
    let big_nd = NftCounter::matching(
        w.net.ext(2),
        "eth0",
        "meta l4proto ipv6-icmp meta length > 200",
    );
    let agent = w.start_agent("REGISTRY_ONLY", POD);
    let pod = w.pod();
    let frames = LinkFrames::new(&pod, w.net.pod(), &mac_of(w.net.ext(2), "eth0"));
    let arp_out = frames.big_arp();
    assert!(
        arp_out.contains("sent") || arp_out.contains("refused"),
        "{arp_out}"
    );
    // A frame with an 802.1Q tag (the kernel takes it into the packet's
    // metadata before TC sees the frame).
    let vlan = frames.tagged_udp();
    assert!(vlan.contains("sent") || vlan.contains("refused"), "{vlan}");
    // Root in the pod: a TUN device, forwarding on, a crafted neighbour
    // solicitation with 900 bytes of options to ext2's global address.
    let out = frames.big_neighbour_solicitation();
    assert!(out.contains("injected"), "{out}");
    let lines = wait_lines(
        &agent,
        &["\"layer\":\"interface_packet\"", "\"transport\":\"icmpv6\""],
        1,
    );
    assert!(
        !lines.is_empty(),
        "the neighbour solicitation was refused and logged"
    );
    let arp = log_lines(
        &agent,
        &["\"layer\":\"interface_packet\"", "\"transport\":\"arp\""],
    );
    assert!(
        arp_out.contains("refused") || arp.len() == 1,
        "the ARP frame with data was refused and logged: {arp:?}"
    );
    assert_eq!(tagged.count(), 0, "ext2 got no tagged frame");
    assert_eq!(
        (big_arp.count(), big_nd.count()),
        (0, 0),
        "ext2 got no data frame"
    );
}
