//! Reloading the agent's own configuration: SIGHUP and an edit of the file apply
//! it as a diff (policy, workloads, audit, DNS settings) while enforcing; a file
//! that does not parse keeps the running configuration.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use egress_tests::*;

fn reloads(agent: &Agent, result: &str) -> f64 {
    metric_sum(
        &agent.metrics_text(),
        "egress_config_reloads_total",
        &[("result", result)],
    )
}

/// Waits until `cond` holds (5 s at most); returns whether it did.
fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn set_mode(w: &World, from: &str, to: &str) {
    let text = std::fs::read_to_string(w.config_path()).unwrap();
    assert!(text.contains(from));
    std::fs::write(w.config_path(), text.replace(from, to)).unwrap();
}

#[test]
fn sighup_applies_a_policy_switch_and_revokes_what_it_now_refuses() {
    let w = World::new(3);
    w.write_se("legacy.yaml", &legacy_se_one_endpoint());
    let _ext1 = w.ext_server(1, 8080, "ext1");
    let _ext3 = w.ext_server(3, 22, "ext3");
    let agent = w.start_agent("ALLOW_ANY", "");
    // Under ALLOW_ANY the unregistered host is reachable; a connection to it
    // stays open.
    let mut held = w
        .pod()
        .command("python3")
        .args([
            "-c",
            "import socket,sys\ns=socket.create_connection(('198.18.0.13',22),timeout=5)\n\
             print('ready',flush=True)\ns.settimeout(4)\n\
             try:\n  print('eof' if s.recv(10)==b'' else 'data',flush=True)\n\
             except OSError as e:\n  print('errno',e.errno,flush=True)\n",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(held.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");

    set_mode(&w, "{mode: ALLOW_ANY}", "{mode: REGISTRY_ONLY}");
    let pid = agent.child.as_ref().unwrap().id() as i32;
    // SAFETY: signalling the agent this test started.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    assert!(
        wait_for(|| w.pod().connect(sa("198.18.0.13:22")).errno == libc::EPERM),
        "the switch to REGISTRY_ONLY was not applied"
    );
    // The established connection is revoked with it.
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), format!("errno {}", libc::ECONNABORTED));
    held.wait().unwrap();
    // The registry still works, the agent still runs (SIGHUP used to kill it).
    assert!(w.pod().connect(sa("240.240.1.1:80")).ok);
    assert!(
        agent
            .log_text()
            .contains("SIGHUP: reloading the configuration")
    );
    assert!(reloads(&agent, "ok") >= 1.0);
    assert_eq!(
        metric_sum(
            &agent.metrics_text(),
            "egress_revoked_connections_total",
            &[]
        ),
        1.0
    );
}

#[test]
fn an_edit_is_applied_and_a_broken_file_keeps_the_running_configuration() {
    let w = World::new(3);
    w.write_se("legacy.yaml", &legacy_se_one_endpoint());
    let _ext3 = w.ext_server(3, 22, "ext3");
    let agent = w.start_agent("REGISTRY_ONLY", "");
    assert_eq!(w.pod().connect(sa("198.18.0.13:22")).errno, libc::EPERM);

    // A file that does not parse: nothing changes, the reason is logged.
    let good = std::fs::read_to_string(w.config_path()).unwrap();
    std::fs::write(
        w.config_path(),
        format!("{good}\noutboundTrafficPolicy: [oops\n"),
    )
    .unwrap();
    assert!(wait_for(|| reloads(&agent, "error") >= 1.0));
    assert!(
        agent
            .log_text()
            .contains("configuration reload failed, the running configuration stays")
    );
    assert_eq!(w.pod().connect(sa("198.18.0.13:22")).errno, libc::EPERM);
    // An unknown field is an error too, not silently ignored.
    std::fs::write(
        w.config_path(),
        format!("{good}outbondTrafficPolicy: {{mode: ALLOW_ANY}}\n"),
    )
    .unwrap();
    assert!(wait_for(|| reloads(&agent, "error") >= 2.0));
    assert_eq!(w.pod().connect(sa("198.18.0.13:22")).errno, libc::EPERM);

    // The fixed file, now with the workload in audit mode: applied on the edit
    // alone (no signal).
    std::fs::write(
        w.config_path(),
        good.replace("ip: 198.18.0.2,", "ip: 198.18.0.2, audit: true,"),
    )
    .unwrap();
    assert!(
        wait_for(|| w.pod().connect(sa("198.18.0.13:22")).ok),
        "audit mode was not applied"
    );
    assert!(reloads(&agent, "ok") >= 1.0);
    // A setting that needs a restart is said so, and kept.
    let text = std::fs::read_to_string(w.config_path()).unwrap();
    std::fs::write(w.config_path(), format!("{text}failOpen: true\n")).unwrap();
    assert!(wait_for(|| agent.log_text().contains("field=\"failOpen\"")
        || agent.log_text().contains("field=failOpen")));
}

#[test]
fn a_typo_in_a_live_service_entry_keeps_its_last_good_version() {
    let w = World::new(3);
    w.write_se("legacy.yaml", &legacy_se_one_endpoint());
    let _ext1 = w.ext_server(1, 8080, "ext1");
    let agent = w.start_agent("REGISTRY_ONLY", "");
    assert!(w.pod().connect(sa("240.240.1.1:80")).ok);
    // An unknown field (a typo) in the live entry.
    w.write_se(
        "legacy.yaml",
        &legacy_se_one_endpoint().replace("resolution: STATIC", "resolutoin: STATIC"),
    );
    let stale = || {
        metric_sum(
            &agent.metrics_text(),
            "egress_config_resources",
            &[("state", "stale")],
        )
    };
    assert!(wait_for(|| stale() == 1.0), "not reported stale");
    let log = agent.log_text();
    assert!(
        log.contains("legacy.yaml") && log.contains("resolutoin") && log.contains("legacy"),
        "file, field and resource not named:\n{log}"
    );
    // Still in force.
    assert!(w.pod().connect(sa("240.240.1.1:80")).ok);
    // Fixed: no longer stale.
    w.write_se("legacy.yaml", &legacy_se_one_endpoint());
    assert!(wait_for(|| stale() == 0.0));
    assert!(w.pod().connect(sa("240.240.1.1:80")).ok);
}
