//! connect()-time enforcement of STATIC and NONE ServiceEntries on the real kernel:
//! real namespaces, cgroups, servers, clients (curl and plain sockets) and the real
//! agent binary.

use std::time::{Duration, Instant};

use egress_tests::bpf::{self, attached_count};
use egress_tests::server::Server;
use egress_tests::*;

fn server(w: &World, i: usize, port: u16) -> Server {
    w.ext_server(i, port, &format!("ext{i}:{port}"))
}

const LEGACY: &str = LEGACY_SE;

/// Waits until the sum of matching samples reaches `want` (the agent folds kernel
/// counters in every 500 ms), then returns it.
fn wait_metric(agent: &Agent, family: &str, labels: &[(&str, &str)], want: f64) -> f64 {
    let start = Instant::now();
    loop {
        let v = metric_sum(&agent.metrics_text(), family, labels);
        if v >= want || start.elapsed() > Duration::from_secs(5) {
            // One more poll period: a counter that moved too far shows it.
            std::thread::sleep(Duration::from_millis(600));
            return metric_sum(&agent.metrics_text(), family, labels);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn curl_to_vip_reaches_an_endpoint_and_gets_its_body() {
    let w = World::new(1);
    w.write_se(
        "legacy.yaml",
        &LEGACY.replace("  - address: 198.18.0.12\n", ""),
    );
    let ext1 = server(&w, 1, 8080);
    let _agent = w.start_agent("REGISTRY_ONLY", "");
    let out = w
        .pod()
        .run("curl", &["-sS", "-m", "5", "http://240.240.1.1/"]);
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from ext1:8080\n"
    );
    let hits = ext1.hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].peer.ip().to_canonical().to_string(), POD_V4);
    assert!(hits[0].first_line.starts_with("GET / HTTP/1.1"), "{hits:?}");
}

#[test]
fn two_endpoints_both_receive_connections() {
    let w = World::new(2);
    w.write_se("legacy.yaml", LEGACY);
    let (ext1, ext2) = (server(&w, 1, 8080), server(&w, 2, 8080));
    let _agent = w.start_agent("REGISTRY_ONLY", "");
    let out = w.pod().run(
        probe_bin().to_str().unwrap(),
        &["many", "240.240.1.1:80", "40"],
    );
    let results: Vec<ProbeResult> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 40);
    assert!(results.iter().all(|r| r.ok), "{results:?}");
    let (n1, n2) = (ext1.hit_count(), ext2.hit_count());
    assert_eq!(n1 + n2, 40);
    // Random choice: P(one side gets nothing) = 2^-39.
    assert!(n1 > 0 && n2 > 0, "ext1={n1} ext2={n2}");
}

#[test]
fn endpoint_port_map_and_target_port_choose_the_backend_port() {
    let w = World::new(2);
    w.write_se(
        "db.yaml",
        r#"
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: db, namespace: shop}
spec:
  hosts: [db.internal]
  addresses: [240.240.5.5]
  resolution: STATIC
  ports: [{number: 5432, name: pg, protocol: TCP, targetPort: 6432}]
  endpoints:
  - {address: 198.18.0.11, ports: {pg: 7432}}
  - {address: 198.18.0.12}
"#,
    );
    // Each backend listens only on the port the mapping must choose for it.
    let (ext1, ext2) = (server(&w, 1, 7432), server(&w, 2, 6432));
    let _agent = w.start_agent("REGISTRY_ONLY", "");
    for _ in 0..20 {
        let r = w.pod().connect(sa("240.240.5.5:5432"));
        assert!(r.ok, "{r:?}");
    }
    assert_eq!(ext1.hit_count() + ext2.hit_count(), 20);
    assert!(ext1.hit_count() > 0 && ext2.hit_count() > 0);
    // An endpoint's own address is not a registry address (SPEC §7.3, as Istio's
    // listeners behave): under REGISTRY_ONLY a direct connect() is refused, on
    // its port as on any other, and the endpoint sees nothing.
    let before = ext1.hit_count();
    for addr in ["198.18.0.11:7432", "198.18.0.11:6432"] {
        let r = w.pod().connect(sa(addr));
        assert_eq!(r.errno, EPERM, "{addr}: {r:?}");
    }
    assert_eq!(ext1.hit_count(), before);
}

#[test]
fn getpeername_reports_the_vip_not_the_backend() {
    let w = World::new(1);
    w.write_se(
        "legacy.yaml",
        &LEGACY.replace("  - address: 198.18.0.12\n", ""),
    );
    let _ext1 = server(&w, 1, 8080);
    let _agent = w.start_agent("REGISTRY_ONLY", "");
    let r = w.pod().connect(sa("240.240.1.1:80"));
    assert!(r.ok, "{r:?}");
    assert_eq!(r.peer.as_deref(), Some("240.240.1.1:80"));
    assert_eq!(r.reply, "hello from ext1:8080\n");
    // curl reports the peer from getpeername() too.
    let out = w.pod().run(
        "curl",
        &[
            "-sS",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{remote_ip}:%{remote_port}",
            "http://240.240.1.1/",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "240.240.1.1:80");
}

#[test]
fn registry_only_refuses_an_unregistered_ip_with_eperm_logs_and_counts_it() {
    let w = World::new(3);
    w.write_se("legacy.yaml", LEGACY);
    let ext3 = server(&w, 3, 22);
    let agent = w.start_agent("REGISTRY_ONLY", "");
    let denied = [
        ("source_workload", "web"),
        ("source_namespace", "shop"),
        ("destination_service", "BlackHoleCluster"),
        ("destination_port", "22"),
        ("decision", "denied"),
        ("reason", "registry_only"),
    ];
    let before = metric_sum(&agent.metrics_text(), "egress_connections_total", &denied);

    let (pid, r) = w.pod().probe_pid(&["connect", "198.18.0.13:22"]);
    assert!(!r.ok);
    assert_eq!(r.errno, EPERM, "{r:?}");
    assert_eq!(
        ext3.hit_count(),
        0,
        "the server must never see the connection"
    );

    let after = wait_metric(&agent, "egress_connections_total", &denied, before + 1.0);
    assert_eq!(after, before + 1.0, "exactly one denial counted");

    // One line in the access log (its sink: standard output here), and only
    // there: not repeated in the agent's own log.
    let needle = format!("\"pid\":{pid},");
    let log = agent.wait_log(&needle, Duration::from_secs(5));
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&needle)).collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        !log.contains(&format!("pid={pid}")),
        "also in the agent log:\n{log}"
    );
    for field in [
        "\"verdict\":\"denied\"",
        "\"process\":\"egress-probe\"",
        "\"namespace\":\"shop\"",
        "\"workload\":\"web\"",
        "\"destination\":\"198.18.0.13\"",
        "\"port\":22",
        "\"reason\":\"registry_only\"",
    ] {
        assert!(
            lines[0].contains(field),
            "{field} missing from {}",
            lines[0]
        );
    }
}

#[test]
fn allow_any_passes_an_unregistered_ip_untouched() {
    let w = World::new(3);
    w.write_se("legacy.yaml", LEGACY);
    let ext3 = server(&w, 3, 22);
    let agent = w.start_agent("ALLOW_ANY", "");
    let r = w.pod().connect(sa("198.18.0.13:22"));
    assert!(r.ok, "{r:?}");
    assert_eq!(r.peer.as_deref(), Some("198.18.0.13:22"));
    assert_eq!(r.reply, "hello from ext3:22\n");
    assert_eq!(ext3.hit_count(), 1);
    let passed = [
        ("destination_service", "PassthroughCluster"),
        ("decision", "allowed"),
        ("reason", "allow_any"),
        ("policy_mode", "ALLOW_ANY"),
    ];
    assert_eq!(
        wait_metric(&agent, "egress_connections_total", &passed, 1.0),
        1.0
    );
}

#[test]
fn outside_the_attach_point_is_untouched_and_strangers_under_it_get_the_default() {
    let w = World::new(3);
    w.write_se("legacy.yaml", LEGACY);
    let ext3 = server(&w, 3, 22);
    let _ext1 = server(&w, 1, 8080);
    let agent = w.start_agent("REGISTRY_ONLY", "");
    // Same netns, but the test's own cgroup (outside the attach point).
    let r = w.pod_netns_only().connect(sa("198.18.0.13:22"));
    assert!(r.ok, "{r:?}");
    assert_eq!(ext3.hit_count(), 1);
    // A cgroup under the attach point that is no workload gets the unknown-workload
    // default: the mesh policy over an empty view. Not "untouched".
    let other = w.root.child("not-a-workload");
    let place = Place {
        netns: w.net.pod().path(),
        cgroup: Some(other.path.clone()),
    };
    let r = place.connect(sa("198.18.0.13:22"));
    assert_eq!(r.errno, EPERM, "{r:?}");
    // An empty view has no VIPs either.
    let r = place.connect(sa("240.240.1.1:80"));
    assert_eq!(r.errno, EPERM, "{r:?}");
    assert_eq!(ext3.hit_count(), 1, "the stranger reached nothing");
    let log = agent.wait_log("\"workload\":\"unknown\"", Duration::from_secs(5));
    assert!(
        log.lines().any(|l| l.contains("\"workload\":\"unknown\"")
            && l.contains("\"destination\":\"198.18.0.13\"")),
        "{log}"
    );
    // The workload itself is enforced.
    assert_eq!(w.pod().connect(sa("198.18.0.13:22")).errno, EPERM);
}

#[test]
fn unknown_workloads_untouched_leaves_strangers_alone() {
    let w = World::new(3);
    w.write_se("legacy.yaml", LEGACY);
    let ext3 = server(&w, 3, 22);
    let _agent = w.start_agent("REGISTRY_ONLY", "unknownWorkloads: untouched\n");
    let other = w.root.child("not-a-workload");
    let place = Place {
        netns: w.net.pod().path(),
        cgroup: Some(other.path.clone()),
    };
    let r = place.connect(sa("198.18.0.13:22"));
    assert!(r.ok, "{r:?}");
    assert_eq!(ext3.hit_count(), 1);
    // Nor is its VIP traffic rewritten: there is no route to 240.240.0.0/16.
    let r = place.connect(sa("240.240.1.1:80"));
    assert_eq!(r.errno, libc::ENETUNREACH, "{r:?}");
    assert_eq!(w.pod().connect(sa("198.18.0.13:22")).errno, EPERM);
    assert_eq!(ext3.hit_count(), 1);
}

#[test]
fn ipv6_vip_and_v4_mapped_destination_take_the_same_path() {
    let w = World::new(2);
    w.write_se(
        "legacy.yaml",
        &LEGACY.replace("  - address: 198.18.0.12\n", ""),
    );
    w.write_se(
        "v6.yaml",
        r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: v6, namespace: shop}
spec:
  hosts: [v6.internal]
  addresses: ["2001:2::1"]
  resolution: STATIC
  ports: [{number: 443, name: tls, protocol: TLS}]
  endpoints: [{address: "2001:db8::12", ports: {tls: 8443}}]
"#,
    );
    let _ext1 = server(&w, 1, 8080);
    let ext2 = server(&w, 2, 8443);
    let _agent = w.start_agent("REGISTRY_ONLY", "");

    let r = w.pod().connect(sa("[2001:2::1]:443"));
    assert!(r.ok, "{r:?}");
    assert_eq!(r.reply, "hello from ext2:8443\n");
    assert_eq!(r.peer.as_deref(), Some("[2001:2::1]:443"));
    assert_eq!(ext2.hits()[0].peer.ip().to_string(), POD_V6);

    // An AF_INET6 socket to the v4-mapped VIP is rewritten like an AF_INET one.
    let r = w.pod().connect(sa("[::ffff:240.240.1.1]:80"));
    assert!(r.ok, "{r:?}");
    assert_eq!(r.reply, "hello from ext1:8080\n");
    assert_eq!(r.peer.as_deref(), Some("[::ffff:240.240.1.1]:80"));

    // Unregistered IPv6 and v4-mapped destinations are refused alike.
    assert_eq!(w.pod().connect(sa("[2001:db8::11]:22")).errno, EPERM);
    assert_eq!(w.pod().connect(sa("[::ffff:198.18.0.11]:22")).errno, EPERM);
}

#[test]
fn a_child_cgroup_of_the_pod_is_still_enforced() {
    let w = World::new(3);
    w.write_se(
        "legacy.yaml",
        &LEGACY.replace("  - address: 198.18.0.12\n", ""),
    );
    let _ext1 = server(&w, 1, 8080);
    let ext3 = server(&w, 3, 22);
    let _agent = w.start_agent("REGISTRY_ONLY", "");
    // Created after the agent started: nothing tells the agent about it.
    let nested = w.pod.child("nested");
    let deeper = nested.child("deeper");
    let place = Place {
        netns: w.net.pod().path(),
        cgroup: Some(deeper.path.clone()),
    };
    assert_eq!(place.connect(sa("198.18.0.13:22")).errno, EPERM);
    assert_eq!(ext3.hit_count(), 0);
    let r = place.connect(sa("240.240.1.1:80"));
    assert!(r.ok && r.reply == "hello from ext1:8080\n", "{r:?}");
}

#[test]
fn none_resolution_addresses_and_cidrs_are_allowed_as_is() {
    let w = World::new(3);
    w.write_se(
        "partners.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: partners, namespace: shop}
spec:
  hosts: [partners.example]
  addresses: [198.18.0.12/31]
  resolution: NONE
  ports: [{number: 9000, name: api, protocol: TCP}]
"#,
    );
    let (e1, e2, e3) = (
        server(&w, 1, 9000),
        server(&w, 2, 9000),
        server(&w, 3, 9000),
    );
    let _agent = w.start_agent("REGISTRY_ONLY", "");
    for (i, want) in [(2, "ext2:9000"), (3, "ext3:9000")] {
        let r = w.pod().connect(sa(&format!("198.18.0.{}:9000", 10 + i)));
        assert!(r.ok, "{r:?}");
        assert_eq!(r.reply, format!("hello from {want}\n"));
        assert_eq!(
            r.peer,
            Some(format!("198.18.0.{}:9000", 10 + i)),
            "not rewritten"
        );
    }
    assert_eq!(
        w.pod().connect(sa("198.18.0.11:9000")).errno,
        EPERM,
        "outside the /31"
    );
    assert_eq!((e1.hit_count(), e2.hit_count(), e3.hit_count()), (0, 1, 1));
}

#[test]
fn a_bad_resource_is_rejected_alone_with_file_resource_field_and_reason() {
    let w = World::new(1);
    w.write_se(
        "mixed.yaml",
        &format!(
            "{LEGACY}---\n{}",
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: broken, namespace: shop}
spec:
  hosts: [broken.internal]
  addresses: [240.240.9.9]
  resolution: STATIC
  ports: [{number: 80, name: Not_A_Label, protocol: TCP}]
  endpoints: [{address: 198.18.0.11}]
"#
        )
        .replace("  - address: 198.18.0.12\n", ""),
    );
    let _ext1 = server(&w, 1, 8080);
    let agent = w.start_agent("REGISTRY_ONLY", "");
    let log = agent.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("ServiceEntry shop/broken"))
        .unwrap_or_else(|| panic!("no rejection logged:\n{log}"));
    for needle in [
        "mixed.yaml",
        "spec.ports[0].name",
        "invalid port name",
        "SE-P6",
    ] {
        assert!(line.contains(needle), "{needle} missing from {line}");
    }
    let rejected = [
        ("kind", "ServiceEntry"),
        ("namespace", "shop"),
        ("name", "broken"),
    ];
    assert_eq!(
        metric_sum(
            &agent.metrics_text(),
            "egress_config_rejected_total",
            &rejected
        ),
        1.0
    );
    // The good entry in the same file works; the broken one's VIP is unknown.
    assert!(w.pod().connect(sa("240.240.1.1:80")).ok);
    assert_eq!(w.pod().connect(sa("240.240.9.9:80")).errno, EPERM);
}

const CONNECT_TYPES: [u32; 4] = [
    bpf::CGROUP_INET4_CONNECT,
    bpf::CGROUP_INET6_CONNECT,
    bpf::CGROUP_INET4_GETPEERNAME,
    bpf::CGROUP_INET6_GETPEERNAME,
];

/// Nothing enforces any more: the unregistered host is reachable and the VIP is
/// a plain unroutable address.
fn assert_unenforced(w: &World) {
    for t in CONNECT_TYPES {
        assert_eq!(
            attached_count(&w.root.path, t),
            0,
            "attach type {t} still attached"
        );
    }
    assert!(w.pod().connect(sa("198.18.0.13:22")).ok);
    assert_eq!(
        w.pod().connect(sa("240.240.1.1:80")).errno,
        libc::ENETUNREACH
    );
}

#[test]
fn sigterm_leaves_enforcement_in_force_until_uninstall() {
    let w = World::new(3);
    w.write_se("legacy.yaml", LEGACY);
    let _ext1 = server(&w, 1, 8080);
    let _ext2 = server(&w, 2, 8080);
    let _ext3 = server(&w, 3, 22);
    let mut agent = w.start_agent("REGISTRY_ONLY", "");
    for t in CONNECT_TYPES {
        assert_eq!(attached_count(&w.root.path, t), 1, "attach type {t}");
    }
    assert_eq!(w.pod().connect(sa("198.18.0.13:22")).errno, EPERM);
    let status = agent.signal_and_wait(libc::SIGTERM);
    assert!(
        status.success(),
        "agent exit: {status}\n{}",
        agent.log_text()
    );
    assert!(agent.log_text().contains("enforcement stays in force"));
    // No agent runs: the pinned programs still refuse and rewrite.
    for t in CONNECT_TYPES {
        assert_eq!(attached_count(&w.root.path, t), 1, "attach type {t}");
    }
    assert_eq!(w.pod().connect(sa("198.18.0.13:22")).errno, EPERM);
    let c = w.pod().connect(sa("240.240.1.1:80"));
    assert!(c.ok, "VIP still rewritten: {c:?}");
    // inspect says nobody owns the pins.
    let out = w.agent_cli(&["inspect", "--config", w.config_path().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("no agent is running"), "{text}");
    agent.uninstall();
    assert_unenforced(&w);
    assert!(
        !std::path::Path::new("/sys/fs/bpf/egress")
            .join(w.root.path.file_name().unwrap())
            .exists()
    );
}

#[test]
fn on_exit_uninstall_detaches_every_program() {
    let w = World::new(3);
    w.write_se("legacy.yaml", LEGACY);
    let _ext3 = server(&w, 3, 22);
    let mut agent = w.start_agent("REGISTRY_ONLY", "onExit: uninstall\n");
    assert_eq!(w.pod().connect(sa("198.18.0.13:22")).errno, EPERM);
    let status = agent.signal_and_wait(libc::SIGTERM);
    assert!(status.success(), "agent exit: {status}");
    assert_unenforced(&w);
    assert!(agent.log_text().contains("programs detached, pins removed"));
}
