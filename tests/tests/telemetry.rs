//! UDP enforcement, per-destination traffic counters (TC), Prometheus metrics, the
//! access log of refusals, audit mode and its rate limit — on the real kernel.

use std::time::{Duration, Instant};

use egress_tests::server::{Server, UdpServer};
use egress_tests::*;

fn server(w: &World, i: usize, port: u16) -> Server {
    w.ext_server(i, port, &format!("ext{i}"))
}

/// The default workload, with its veth so traffic is counted, and an access log
/// file in the test directory.
fn workload(extra: &str) -> String {
    format!(
        "workloads:\n  - {{cgroup: pod, namespace: shop, name: web, ip: {POD_V4}, interface: vpod0{extra}}}\n\
         accessLog: {{path: access.log}}\n"
    )
}

fn access_log(w: &World) -> Vec<serde_json::Value> {
    std::fs::read_to_string(w.dir.path().join("access.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// Polls until `f` is true (telemetry is folded in every 500 ms).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

const UDP_SE: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: syslog, namespace: shop}
spec:
  hosts: [syslog.internal]
  addresses: [240.240.9.9]
  resolution: STATIC
  ports: [{number: 514, name: syslog, protocol: UDP, targetPort: 5514}]
  endpoints: [{address: 198.18.0.11}]
"#;

#[test]
fn udp_vip_is_rewritten_and_replies_come_from_the_vip() {
    let w = World::new(1);
    w.write_se("syslog.yaml", UDP_SE);
    let udp = UdpServer::start(w.net.ext(1), sa("[::]:5514"), "ext1");
    let _agent = w.start_agent("REGISTRY_ONLY", &workload(""));
    // Unconnected: sendto the VIP, recvfrom reports the VIP.
    let r = w.pod().probe(&["udp", "240.240.9.9:514"]);
    assert!(r.ok, "{r:?}");
    assert_eq!(r.reply, "echo from ext1\n");
    assert_eq!(r.peer.as_deref(), Some("240.240.9.9:514"));
    // Connected: connect to the VIP, getpeername reports it, replies arrive.
    let r = w.pod().probe(&["udp", "240.240.9.9:514", "connect"]);
    assert!(r.ok, "{r:?}");
    assert_eq!(r.reply, "echo from ext1\n");
    assert_eq!(r.peer.as_deref(), Some("240.240.9.9:514"));
    assert_eq!(udp.hit_count(), 2);
    // The TCP port of the same number is not registered.
    assert_eq!(w.pod().connect(sa("240.240.9.9:514")).errno, EPERM);
}

#[test]
fn udp_to_an_unregistered_destination_is_refused() {
    let w = World::new(3);
    w.write_se("syslog.yaml", UDP_SE);
    let udp = UdpServer::start(w.net.ext(3), sa("[::]:5000"), "ext3");
    let agent = w.start_agent("REGISTRY_ONLY", &workload(""));
    let r = w.pod().probe(&["udp", "198.18.0.13:5000"]);
    assert_eq!(r.errno, EPERM, "sendto: {r:?}");
    let r = w.pod().probe(&["udp", "198.18.0.13:5000", "connect"]);
    assert_eq!(r.errno, EPERM, "connect: {r:?}");
    // IPv6 too.
    let r = w.pod().probe(&["udp", "[2001:db8::13]:5000"]);
    assert_eq!(r.errno, EPERM, "sendto v6: {r:?}");
    assert_eq!(udp.hit_count(), 0);
    let denied = [
        ("transport", "udp"),
        ("decision", "denied"),
        ("destination_port", "5000"),
    ];
    eventually("udp denials counted", || {
        metric_sum(&agent.metrics_text(), "egress_connections_total", &denied) == 3.0
    });
    // The access log says udp.
    eventually("access log", || access_log(&w).len() == 3);
    assert!(access_log(&w).iter().all(|l| l["transport"] == "udp"));
}

#[test]
fn udp_passes_when_udp_enforcement_is_off() {
    let w = World::new(3);
    let udp = UdpServer::start(w.net.ext(3), sa("[::]:5000"), "ext3");
    let _agent = w.start_agent(
        "REGISTRY_ONLY",
        &format!("{}udpEnforcement: false\n", workload("")),
    );
    let r = w.pod().probe(&["udp", "198.18.0.13:5000"]);
    assert!(r.ok && r.reply == "echo from ext3\n", "{r:?}");
    assert_eq!(udp.hit_count(), 1);
    // TCP is still enforced.
    assert_eq!(w.pod().connect(sa("198.18.0.13:5000")).errno, EPERM);
}

#[test]
fn bytes_of_a_known_transfer_are_counted_per_destination_service() {
    let w = World::new(1);
    w.write_se(
        "bulk.yaml",
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bulk, namespace: shop}
spec:
  hosts: [bulk.internal]
  addresses: [240.240.7.7]
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  endpoints: [{address: 198.18.0.11}]
"#,
    );
    let _e1 = server(&w, 1, 8080);
    let agent = w.start_agent("REGISTRY_ONLY", &workload(""));
    const SIZE: f64 = 50.0 * 1024.0 * 1024.0;
    let out = w.pod().run(
        "curl",
        &[
            "-sS",
            "-m",
            "30",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{size_header} %{size_request}",
            "http://240.240.7.7/bytes/52428800",
        ],
    );
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sizes: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(sizes[0], SIZE, "curl got the whole body");
    let moved_in = sizes[0] + sizes[1];
    let moved_out = sizes[2];

    let labels = [
        ("source_workload", "web"),
        ("source_namespace", "shop"),
        ("destination_service", "bulk.internal"),
        ("destination_service_namespace", "shop"),
        ("transport", "tcp"),
    ];
    let start = Instant::now();
    while metric_sum(
        &agent.metrics_text(),
        "egress_received_bytes_total",
        &labels,
    ) < moved_in * 0.99
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "received bytes never counted:\n{}\n{}",
            agent.metrics_text(),
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(700));
    let m = agent.metrics_text();
    let received = metric_sum(&m, "egress_received_bytes_total", &labels);
    let sent = metric_sum(&m, "egress_sent_bytes_total", &labels);
    assert!(
        (received - moved_in).abs() <= moved_in * 0.01,
        "received {received}, moved {moved_in}"
    );
    assert!(
        (sent - moved_out).abs() <= moved_out * 0.01 + 1.0,
        "sent {sent}, moved {moved_out}"
    );
    assert!(metric_sum(&m, "egress_received_packets_total", &labels) > 0.0);
    // The same numbers in Istio's families.
    let istio = [
        ("reporter", "source"),
        ("source_workload", "web"),
        ("source_workload_namespace", "shop"),
        ("destination_service", "bulk.internal"),
        ("destination_service_name", "bulk.internal"),
        ("destination_service_namespace", "shop"),
    ];
    assert_eq!(
        metric_sum(&m, "istio_tcp_received_bytes_total", &istio),
        received
    );
    assert_eq!(metric_sum(&m, "istio_tcp_sent_bytes_total", &istio), sent);
    assert_eq!(
        metric_sum(&m, "istio_tcp_connections_opened_total", &istio),
        1.0
    );
    assert_eq!(metric_sum(&m, "egress_traffic_interfaces", &[]), 1.0);
    // Health endpoints.
    assert_eq!(agent.get("/healthz").map(|(c, _)| c), Some(200));
    assert_eq!(agent.get("/readyz").map(|(c, _)| c), Some(200));
}

#[test]
fn one_refusal_is_exactly_one_access_log_line() {
    let w = World::new(3);
    let _e3 = server(&w, 3, 22);
    let _agent = w.start_agent("REGISTRY_ONLY", &workload(""));
    let (pid, r) = w.pod().probe_pid(&["connect", "198.18.0.13:22"]);
    assert_eq!(r.errno, EPERM);
    eventually("the access log line", || !access_log(&w).is_empty());
    std::thread::sleep(Duration::from_millis(500));
    let lines = access_log(&w);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let l = &lines[0];
    assert_eq!(l["verdict"], "denied");
    assert_eq!(l["reason"], "registry_only");
    assert_eq!(l["pid"], pid);
    assert_eq!(l["process"], "egress-probe");
    assert_eq!(l["namespace"], "shop");
    assert_eq!(l["workload"], "web");
    assert_eq!(l["destination"], "198.18.0.13");
    assert_eq!(l["port"], 22);
    assert_eq!(l["transport"], "tcp");
    assert_eq!(l["match"], "none");
    assert!(l["cgroup_id"].as_u64().unwrap() > 0);
    assert!(l["time"].as_str().unwrap().starts_with("20"), "{l}");
}

#[test]
fn audit_mode_allows_and_logs_per_workload_and_per_namespace() {
    let w = World::with_pods(3, 3);
    let e3 = server(&w, 3, 22);
    let config = "workloads:\n\
         \x20 - {cgroup: pod, namespace: shop, name: web, audit: true}\n\
         \x20 - {cgroup: pod1, namespace: team, name: batch}\n\
         \x20 - {cgroup: pod2, namespace: lab, name: dev}\n\
         auditNamespaces: [lab]\naccessLog: {path: access.log}\n";
    let agent = w.start_agent("REGISTRY_ONLY", config);
    // Audited: allowed, reaches the server, logged as audit.
    assert!(w.pod_n(0).connect(sa("198.18.0.13:22")).ok);
    assert!(w.pod_n(2).connect(sa("198.18.0.13:22")).ok);
    // Not audited: refused.
    assert_eq!(w.pod_n(1).connect(sa("198.18.0.13:22")).errno, EPERM);
    assert_eq!(e3.hit_count(), 2);
    eventually("three log lines", || access_log(&w).len() == 3);
    let mut got: Vec<(String, String)> = access_log(&w)
        .iter()
        .map(|l| {
            (
                l["workload"].as_str().unwrap().to_owned(),
                l["verdict"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("batch".to_string(), "denied".to_string()),
            ("dev".to_string(), "audit".to_string()),
            ("web".to_string(), "audit".to_string())
        ]
    );
    let audit = [("decision", "audit"), ("reason", "registry_only")];
    eventually("audit counted", || {
        metric_sum(&agent.metrics_text(), "egress_connections_total", &audit) == 2.0
    });
}

#[test]
fn a_flood_of_refusals_is_rate_limited_and_the_rest_counted() {
    let w = World::new(3);
    let agent = w.start_agent(
        "REGISTRY_ONLY",
        &workload("").replace(
            "accessLog: {path: access.log}",
            "accessLog: {path: access.log, ratePerSecond: 5, burst: 10}",
        ),
    );
    const N: usize = 400;
    let out = w.pod().run(
        probe_bin().to_str().unwrap(),
        &["many", "198.18.0.13:9", &N.to_string()],
    );
    let refused = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"errno\":1"))
        .count();
    assert_eq!(refused, N);
    let dropped_labels = [("source_workload", "web"), ("source_namespace", "shop")];
    eventually("every refusal logged or counted as dropped", || {
        let dropped = metric_sum(
            &agent.metrics_text(),
            "egress_access_log_dropped_total",
            &dropped_labels,
        );
        dropped as usize + access_log(&w).len() == N
    });
    let logged = access_log(&w).len();
    // Burst 10 per CPU plus 5/s per CPU over the flood's short run.
    assert!((10..=60).contains(&logged), "logged {logged}");
    let denied = metric_sum(
        &agent.metrics_text(),
        "egress_connections_total",
        &[("decision", "denied")],
    );
    assert_eq!(denied as usize, N, "metrics count every refusal");
}

#[test]
fn series_of_a_workload_that_is_gone_are_removed() {
    let w = World::with_pods(2, 3);
    let _e3 = server(&w, 3, 22);
    let config = "workloads:\n  - {cgroup: pod, namespace: shop, name: web}\n  - {cgroup: pod1, namespace: team, name: batch}\n";
    let agent = w.start_agent("REGISTRY_ONLY", config);
    assert_eq!(w.pod_n(0).connect(sa("198.18.0.13:22")).errno, EPERM);
    assert_eq!(w.pod_n(1).connect(sa("198.18.0.13:22")).errno, EPERM);
    let batch = [("source_workload", "batch")];
    eventually("batch's series", || {
        metric_sum(&agent.metrics_text(), "egress_connections_total", &batch) == 1.0
    });
    // The pod goes away: its cgroup is removed.
    let Some(cg) = w.more_pods.first() else {
        unreachable!()
    };
    std::fs::remove_dir(&cg.path).unwrap();
    eventually("batch's series removed", || {
        !agent.metrics_text().contains("source_workload=\"batch\"")
    });
    // The workload that is still there keeps its series.
    assert_eq!(
        metric_sum(
            &agent.metrics_text(),
            "egress_connections_total",
            &[("source_workload", "web")]
        ),
        1.0
    );
}
