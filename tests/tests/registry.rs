//! The registry on the real kernel: exportTo and Sidecar scoping across pod
//! namespaces, automatic VIPs, hot reload under load, and the inspect/explain CLI.

use std::time::Duration;

use egress_tests::server::Server;
use egress_tests::*;

fn server(w: &World, i: usize, port: u16) -> Server {
    w.ext_server(i, port, &format!("ext{i}"))
}

fn static_se(name: &str, ns: &str, host: &str, vip: &str, endpoint: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {ns}}}
spec:
  hosts: [{host}]
  addresses: [{vip}]
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  endpoints: [{{address: {endpoint}}}]
{extra}"#
    )
}

const WORKLOADS: &str = "workloads:
  - {cgroup: pod, namespace: shop, name: web}
  - {cgroup: pod-team, namespace: team, name: batch}
  - {cgroup: pod-lab, namespace: lab, name: dev}
";

#[test]
fn export_to_and_sidecars_give_each_namespace_its_own_view() {
    let w = World::new(2);
    let (_team_cg, team) = w.extra_pod("pod-team");
    let (_lab_cg, lab) = w.extra_pod("pod-lab");
    w.write_se(
        "private.yaml",
        &static_se(
            "private",
            "shop",
            "private.shop.example",
            "240.240.3.3",
            "198.18.0.11",
            "  exportTo: [\".\"]\n",
        ),
    );
    w.write_se(
        "ops.yaml",
        &format!(
            "{}---\n{}",
            static_se(
                "mon",
                "ops",
                "mon.ops.example",
                "240.240.4.4",
                "198.18.0.12",
                ""
            ),
            static_se(
                "public",
                "ops",
                "public.ops.example",
                "240.240.5.5",
                "198.18.0.12",
                ""
            )
        ),
    );
    // team imports only the monitoring host; lab lets unknown traffic through.
    w.write_se(
        "sidecars.yaml",
        r#"apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: team}
spec:
  egress:
  - hosts: ["ops/mon.ops.example"]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: lab}
spec:
  outboundTrafficPolicy: {mode: ALLOW_ANY}
"#,
    );
    let (_e1, _e2) = (server(&w, 1, 8080), server(&w, 2, 8080));
    let _agent = w.start_agent("REGISTRY_ONLY", WORKLOADS);

    // shop sees its private entry and the public ones.
    let web = w.pod();
    assert_eq!(web.connect(sa("240.240.3.3:80")).reply, "hello from ext1\n");
    assert_eq!(web.connect(sa("240.240.4.4:80")).reply, "hello from ext2\n");
    assert_eq!(web.connect(sa("240.240.5.5:80")).reply, "hello from ext2\n");

    // team: the private entry is not exported to it, public.ops is not imported
    // by its Sidecar: both unknown, refused under REGISTRY_ONLY.
    assert_eq!(team.connect(sa("240.240.3.3:80")).errno, EPERM);
    assert_eq!(team.connect(sa("240.240.5.5:80")).errno, EPERM);
    assert_eq!(
        team.connect(sa("240.240.4.4:80")).reply,
        "hello from ext2\n"
    );

    // lab: ALLOW_ANY from its Sidecar: the private VIP passes untouched (not
    // rewritten, so unroutable), public entries still work.
    let r = lab.connect(sa("240.240.3.3:80"));
    assert_eq!(r.errno, libc::ENETUNREACH, "{r:?}");
    assert_eq!(lab.connect(sa("240.240.5.5:80")).reply, "hello from ext2\n");
}

#[test]
fn hot_reload_adds_changes_and_removes_entries_without_a_wrong_verdict() {
    let w = World::new(3);
    w.write_se(
        "a.yaml",
        &static_se("a", "shop", "a.example", "240.240.6.6", "198.18.0.11", ""),
    );
    w.write_se(
        "c.yaml",
        &static_se("c", "shop", "c.example", "240.240.7.7", "198.18.0.13", ""),
    );
    let (_e1, _e2, e3) = (
        server(&w, 1, 8080),
        server(&w, 2, 8080),
        server(&w, 3, 8080),
    );
    let agent = w.start_agent("REGISTRY_ONLY", "");

    // Two clients connect back to back for the whole test: one to the entry that
    // changes, one to an entry that never does.
    let changing = ProbeLoop::start(&w.pod(), sa("240.240.6.6:80"), 9000);
    let steady = ProbeLoop::start(&w.pod(), sa("240.240.7.7:80"), 9000);
    std::thread::sleep(Duration::from_millis(1500));

    // Change a's endpoint.
    let t_change = now_ms();
    w.write_se(
        "a.yaml",
        &static_se("a", "shop", "a.example", "240.240.6.6", "198.18.0.12", ""),
    );
    std::thread::sleep(Duration::from_millis(1500));
    // Add b.
    let t_add = now_ms();
    w.write_se(
        "b.yaml",
        &static_se("b", "shop", "b.example", "240.240.8.8", "198.18.0.12", ""),
    );
    let mut b_ok_at = None;
    for _ in 0..40 {
        if w.pod().connect(sa("240.240.8.8:80")).ok {
            b_ok_at = Some(now_ms());
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    // Make c invalid: its last good version stays in force.
    w.write_se(
        "c.yaml",
        &static_se("c", "shop", "c.example", "240.240.7.7", "198.18.0.13", "")
            .replace("name: http", "name: Not_Valid"),
    );
    std::thread::sleep(Duration::from_millis(1500));
    // Remove a.
    let t_remove = now_ms();
    std::fs::remove_file(w.se_dir().join("a.yaml")).unwrap();

    let changing = changing.results();
    let steady = steady.results();

    // The unchanged entry never missed a connection, through every reload.
    assert!(steady.len() > 100, "only {} attempts", steady.len());
    let failed: Vec<_> = steady
        .iter()
        .filter(|r| r.reply != "hello from ext3\n")
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        steady.len(),
        failed.first()
    );
    assert_eq!(e3.hit_count(), steady.len());

    // The changing entry went ext1 → ext2 → refused, each exactly once, and each
    // switch within a second of the file change.
    let phase = |r: &ProbeResult| match (r.ok, r.reply.as_str(), r.errno) {
        (true, "hello from ext1\n", _) => 0,
        (true, "hello from ext2\n", _) => 1,
        (false, _, e) if e == EPERM => 2,
        _ => panic!("wrong verdict: {r:?}"),
    };
    let phases: Vec<(u64, i32)> = changing
        .iter()
        .map(|r| (r.t_ms.unwrap(), phase(r)))
        .collect();
    assert!(
        phases.windows(2).all(|p| p[0].1 <= p[1].1),
        "verdicts went back and forth"
    );
    let first = |ph: i32| phases.iter().find(|p| p.1 == ph).map(|p| p.0);
    let to_ext2 = first(1).expect("never switched to the new endpoint");
    let refused = first(2).expect("never refused after removal");
    assert!(
        to_ext2 >= t_change && to_ext2 - t_change < 1000,
        "change took {} ms",
        to_ext2 - t_change
    );
    assert!(
        refused >= t_remove && refused - t_remove < 1000,
        "removal took {} ms",
        refused - t_remove
    );
    let b_ok_at = b_ok_at.expect("the added entry never worked");
    assert!(
        b_ok_at - t_add < 1000,
        "addition took {} ms",
        b_ok_at - t_add
    );

    let metrics = agent.metrics_text();
    assert_eq!(
        metric_sum(&metrics, "egress_config_resources", &[("state", "stale")]),
        1.0
    );
    let log = agent.log_text();
    assert!(
        log.contains("its last good version stays in force"),
        "{log}"
    );
    assert!(log.contains("spec.ports[0].name"), "{log}");
}

#[test]
fn address_less_static_entry_gets_a_stable_auto_vip() {
    let w = World::new(1);
    let auto = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: auto, namespace: shop, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  hosts: [auto.internal]
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  endpoints: [{address: 198.18.0.11}]
"#;
    w.write_se("auto.yaml", auto);
    let _e1 = server(&w, 1, 8080);
    let vip_of = |w: &World| -> String {
        let out = w.agent_cli(&[
            "explain",
            "--config",
            w.config_path().to_str().unwrap(),
            "--from",
            "shop/web",
            "--to",
            "auto.internal:80",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.contains("the agent answers"))
            .unwrap_or_else(|| panic!("no DNS answer in:\n{text}"));
        line.rsplit("answers ")
            .next()
            .unwrap()
            .split(", ")
            .next()
            .unwrap()
            .to_owned()
    };
    let mut agent = w.start_agent("REGISTRY_ONLY", "");
    let vip = vip_of(&w);
    assert!(vip.starts_with("240.240."), "{vip}");
    let r = w.pod().connect(sa(&format!("{vip}:80")));
    assert_eq!(r.reply, "hello from ext1\n", "{r:?}");
    assert_eq!(r.peer.as_deref(), Some(format!("{vip}:80").as_str()));

    // A restart and a newer unrelated entry leave it where it is.
    agent.stop();
    w.write_se(
        "newer.yaml",
        &auto
            .replace("name: auto,", "name: newer,")
            .replace("auto.internal", "newer.internal")
            .replace("2024-01-01", "2024-06-01"),
    );
    let _agent = w.start_agent("REGISTRY_ONLY", "");
    assert_eq!(vip_of(&w), vip);
    assert!(w.pod().connect(sa(&format!("{vip}:80"))).ok);
}

#[test]
fn inspect_shows_the_live_maps_and_explain_agrees_with_the_kernel() {
    let w = World::new(3);
    w.write_se(
        "legacy.yaml",
        &static_se(
            "legacy",
            "shop",
            "legacy.internal",
            "240.240.1.1",
            "198.18.0.11",
            "",
        ),
    );
    let (_e1, _e3) = (server(&w, 1, 8080), server(&w, 3, 22));
    let _agent = w.start_agent("REGISTRY_ONLY", "");
    assert_eq!(w.pod().connect(sa("198.18.0.13:22")).errno, EPERM);
    std::thread::sleep(Duration::from_millis(200));

    let config = w.config_path();
    let out = w.agent_cli(&[
        "inspect",
        "--config",
        config.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snap: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let vip = snap["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["destination"] == "240.240.1.1:80/tcp")
        .unwrap_or_else(|| panic!("VIP missing: {snap}"));
    assert_eq!(vip["service"], "shop/legacy.internal");
    assert_eq!(vip["kind"], "vip");
    assert_eq!(vip["backends"], serde_json::json!(["198.18.0.11:8080"]));
    assert_eq!(snap["workloads"][0]["workload"], "shop/web");
    assert_eq!(snap["workloads"][0]["policy"], "REGISTRY_ONLY");
    let denied = snap["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["service"] == "BlackHoleCluster" && c["port"] == 22)
        .unwrap_or_else(|| panic!("no denial counted: {snap}"));
    assert_eq!(denied["count"], 1);

    // explain's verdict is what the kernel does.
    for (to, expect, observed) in [
        (
            "240.240.1.1:80",
            "rewritten to one of 198.18.0.11:8080",
            w.pod().connect(sa("240.240.1.1:80")).ok,
        ),
        // An endpoint's own address is no registry address (SPEC §7.3).
        (
            "198.18.0.11:8080",
            "DENIED",
            w.pod().connect(sa("198.18.0.11:8080")).ok,
        ),
        (
            "198.18.0.13:22",
            "DENIED",
            w.pod().connect(sa("198.18.0.13:22")).ok,
        ),
        (
            "legacy.internal:80",
            "rewritten to one of 198.18.0.11:8080",
            true,
        ),
    ] {
        let out = w.agent_cli(&[
            "explain",
            "--config",
            config.to_str().unwrap(),
            "--from",
            "shop/web",
            "--to",
            to,
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(expect), "explain {to}:\n{text}");
        assert_eq!(
            observed,
            !expect.starts_with("DENIED"),
            "kernel disagrees for {to}"
        );
    }

    // The pins go with the agent.
    drop(_agent);
    let out = w.agent_cli(&["inspect", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no running agent"));
}
