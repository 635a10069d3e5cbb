//! BENCHMARKS.md and the plots, from a bench run's results.json. Numbers are what
//! was measured; targets are checked, never written in.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde_json::{Value, json};

use crate::bench::median;

struct Trials<'a> {
    t: &'a [Value],
}

impl<'a> Trials<'a> {
    fn reps(&self) -> usize {
        self.t
            .iter()
            .filter_map(|x| x["rep"].as_u64())
            .max()
            .map_or(0, |m| m as usize + 1)
    }

    fn value(&self, rep: usize, mech: &str, n: u64, key: &str) -> Option<f64> {
        self.t
            .iter()
            .find(|x| x["rep"] == rep as u64 && x["mechanism"] == mech && x["n"] == n)
            .and_then(|x| x["values"][key].as_f64())
    }

    fn med(&self, mech: &str, n: u64, key: &str) -> f64 {
        median(
            (0..self.reps())
                .filter_map(|r| self.value(r, mech, n, key))
                .collect(),
        )
    }

    /// Median over repetitions of value / base value in the same repetition.
    fn ratio(&self, mech: &str, n: u64, base: &str, key: &str) -> f64 {
        median(
            (0..self.reps())
                .filter_map(|r| Some(self.value(r, mech, n, key)? / self.value(r, base, 0, key)?))
                .collect(),
        )
    }

    fn configs(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .t
            .iter()
            .map(|x| {
                (
                    x["mechanism"].as_str().unwrap_or("").to_owned(),
                    x["n"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        let order = |m: &str| match m {
            "none" => 0,
            "egress" => 1,
            "egress (no counters)" => 2,
            "iptables" => 3,
            "nftables" => 4,
            "haproxy" => 5,
            "loopback none" => 6,
            _ => 7,
        };
        v.sort_by(|(a, n), (b, m)| (order(a), n, a).cmp(&(order(b), m, b)));
        v.dedup();
        v
    }
}

fn f(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "–".into()
    }
}

fn base_of(mech: &str) -> &'static str {
    if mech.starts_with("loopback") {
        "loopback none"
    } else {
        "none"
    }
}

/// Folds ratios into the worst one; a size without a measurement makes the
/// result unknown (NaN), so a target is never reported met on missing data.
fn worst(a: f64, b: f64, pick: fn(f64, f64) -> f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        pick(a, b)
    }
}

/// The report.
/// What each program does, for the profile table.
fn program_role(name: &str) -> &'static str {
    match name {
        n if n.starts_with("egress_connect") => {
            "connect layer: classify, rewrite or refuse a connect()"
        }
        n if n.starts_with("egress_sendmsg") => {
            "connect layer: an unconnected UDP send (DNS capture)"
        }
        n if n.starts_with("egress_recvmsg") => "connect layer: UDP replies from the address asked",
        n if n.starts_with("egress_getpeer") => "connect layer: getpeername() shows the VIP",
        n if n.starts_with("egress_sock_cre") => {
            "second line: tag the socket, refuse kinds that cannot be judged"
        }
        n if n.starts_with("egress_setsocko") => "second line: refuse source-route options",
        n if n.starts_with("egress_sock_ops") => "second line: mark accepted sockets",
        n if n.starts_with("egress_skb_egre") => "second line: every packet of a workload socket",
        n if n.starts_with("egress_tc_sent") => {
            "second line + counters: every packet the pod emits"
        }
        n if n.starts_with("egress_tc_recei") => {
            "counters + inbound flows: every packet to the pod"
        }
        n if n.starts_with("egress_socket_c") => "second line: other socket families (BPF LSM)",
        _ => "",
    }
}

fn profile_section(o: &mut String, p: &Value) {
    let Some(per_conn) = p["per_connection"].as_object() else {
        return;
    };
    let _ = writeln!(
        o,
        "\n## Cost of each kernel layer\n\nThe kernel's own accounting (`kernel.bpf_stats_enabled`, \
         which adds a clock read of its own to every run) during {} sequential-ish short \
         connections to the VIP (8 in flight) and then one bulk transfer of {:.0} MiB, egress \
         with the interface line and counters. *ns/conn* is what the program costs a short \
         connection; *ns/MiB* what it costs a long transfer.\n\n\
         | program | role | runs/conn | ns/run | ns/conn | runs/MiB | ns/MiB |\n|---|---|---:|---:|---:|---:|---:|",
        p["connections"].as_f64().unwrap_or(0.0),
        p["bulk_bytes"].as_f64().unwrap_or(0.0) / (1u64 << 20) as f64
    );
    let mut total_conn = 0.0;
    let mut second_conn = 0.0;
    let mut names: Vec<&String> = per_conn.keys().collect();
    if let Some(b) = p["per_mib"].as_object() {
        names.extend(b.keys().filter(|k| !per_conn.contains_key(*k)));
    }
    names.sort();
    for name in names {
        let c = &p["per_connection"][name];
        let b = &p["per_mib"][name];
        let ns_conn = c["ns_per_unit"].as_f64().unwrap_or(0.0);
        total_conn += ns_conn;
        if program_role(name).starts_with("second line") {
            second_conn += ns_conn;
        }
        let _ = writeln!(
            o,
            "| {name} | {} | {} | {} | {} | {} | {} |",
            program_role(name),
            f(c["runs_per_unit"].as_f64().unwrap_or(f64::NAN), 1),
            f(
                c["ns_per_run"]
                    .as_f64()
                    .or(b["ns_per_run"].as_f64())
                    .unwrap_or(f64::NAN),
                0
            ),
            f(ns_conn, 0),
            f(b["runs_per_unit"].as_f64().unwrap_or(f64::NAN), 1),
            f(b["ns_per_unit"].as_f64().unwrap_or(f64::NAN), 0),
        );
    }
    let _ = writeln!(
        o,
        "\nAll programs: {} ns per short connection, of which the second line (socket tag, \
         socket and interface checks) {} ns.",
        f(total_conn, 0),
        f(second_conn, 0)
    );
}

/// egress' ratios to **none** per size (rate, p99, throughput) of a results file.
pub fn egress_ratios(results: &Value) -> Value {
    let t = Trials {
        t: results["trials"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]),
    };
    let mut out = serde_json::Map::new();
    for (m, n) in t.configs() {
        if m != "egress" && m != "egress (no counters)" {
            continue;
        }
        out.insert(
            format!("{m}|{n}"),
            json!({"rate": t.ratio(&m, n, "none", "rate"), "p99_us": t.ratio(&m, n, "none", "p99_us"),
                   "gbit": t.ratio(&m, n, "none", "gbit")}),
        );
    }
    out.into()
}

fn previous_section(o: &mut String, results: &Value) {
    let Some(prev) = results["previous"]["ratios"].as_object() else {
        return;
    };
    let now = egress_ratios(results);
    let source = results["previous"]["source"]
        .as_str()
        .unwrap_or("the bench/results.json this run replaced");
    let _ = writeln!(
        o,
        "\n## Against the previous run\n\negress' ratios to **none** in this run and in an earlier \
         run on the same machine kind ({source}).\n\n\
         | mechanism | n | rate now | rate before | p99 now | p99 before | throughput now | throughput before |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut keys: Vec<&String> = prev.keys().collect();
    keys.sort_by_key(|k| {
        let (m, n) = k.split_once('|').unwrap_or((k, "0"));
        (m.to_owned(), n.parse::<u64>().unwrap_or(0))
    });
    for k in keys {
        let (m, n) = k.split_once('|').unwrap_or((k, ""));
        let a = &now[k.as_str()];
        let b = &prev[k.as_str()];
        let v = |x: &Value, key: &str| f(x[key].as_f64().unwrap_or(f64::NAN), 2);
        let _ = writeln!(
            o,
            "| {m} | {n} | {} | {} | {} | {} | {} | {} |",
            v(a, "rate"),
            v(b, "rate"),
            v(a, "p99_us"),
            v(b, "p99_us"),
            v(a, "gbit"),
            v(b, "gbit")
        );
    }
}

pub fn render(results: &Value, plan: &str) -> Result<String> {
    let t = Trials {
        t: results["trials"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]),
    };
    let mut o = String::new();
    let quick = results["quick"] == true;
    let _ = writeln!(o, "# Benchmarks\n");
    if quick {
        let _ = writeln!(
            o,
            "**Quick smoke run** (`cargo xtask bench --quick`): too short for conclusions.\n"
        );
    }
    let _ = writeln!(
        o,
        "egress against no enforcement, iptables, nftables and a userspace proxy (HAProxy), \
         measured side by side in one run by `cargo xtask bench` (this file, `bench/results.json` \
         and `bench/*.svg` are its output; nothing here is written by hand except the analysis \
         at the end).\n"
    );
    let _ = writeln!(o, "## Machine\n\n| | |\n|---|---|");
    if let Some(m) = results["machine"].as_object() {
        for (k, v) in m {
            let _ = writeln!(o, "| {k} | {} |", v.as_str().unwrap_or(""));
        }
    }
    let placement = if results["pinned"] == true {
        "Placement: the client runs on CPU 0 and the servers on CPU 1 (`sched_setaffinity`); \
         the kernel work of the client's connections (both ends of the veth path) runs on the \
         client's CPU, so the rate is bound by that CPU and its ratio to **none** is the ratio \
         of CPU cost per connection. The agent and HAProxy are not pinned."
    } else {
        "Placement: processes are not pinned (`EGRESS_BENCH_PIN=0`); the scheduler places \
         client, servers, agent and proxy on the two CPUs."
    };
    let _ = writeln!(
        o,
        "\n## Method\n\n- World: a client \"pod\" network namespace in its own cgroup, a server \
         namespace, both on a bridge in a \"node\" namespace (veth pairs, 198.18.0.0/24); the \
         loopback variant has client and server in the pod namespace on 127.0.0.1.\n\
         - Mechanisms: **none** (client → server directly); **egress** (the agent, REGISTRY_ONLY, \
         client → VIP rewritten to the server, with the interface line and traffic counters on the pod veth; **egress (no counters)**: no `interface` configured, so neither); **iptables** \
         (nat OUTPUT DNAT rules, the matching rule after *n* unrelated ones, filter OUTPUT \
         allow-list then REJECT with TCP reset); **nftables** (a DNAT map of *n*+2 elements and an \
         allow set, then reject); **haproxy** (TCP proxy in the pod namespace on 127.0.0.1, the \
         sidecar model without the redirect).\n\
         - *n* is the number of unrelated registered services (egress: ServiceEntries with a VIP \
         and an endpoint; iptables: rules before the match; nftables: map elements).\n\
         - Client: `egress-bench` (Rust): connect, 64-byte request, 64-byte reply, server closes. \
         Rate with 32 connections in flight; connect latency (time in `connect()`) from \
         sequential connections; \"denied\" is the time until a refused `connect()` returns.\n\
         - {placement}\n\
         - Every configuration runs in every repetition, in a random order, each in freshly built \
         namespaces; the tables show medians over repetitions of per-repetition values and of \
         ratios to **none** measured in the same repetition.\n- Plan: {plan}\n\
         - Reproduce: `cargo xtask bench` (full, writes this file) or `cargo xtask bench --quick`.\n"
    );

    let _ = writeln!(o, "## Connection setup\n");
    let _ = writeln!(
        o,
        "| mechanism | n | conn/s | ×none | connect p50 µs | ×none | connect p99 µs | ×none | denied p50 µs | client CPU µs/conn ×none |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (m, n) in t.configs() {
        let b = base_of(&m);
        let _ = writeln!(
            o,
            "| {m} | {n} | {} | {} | {} | {} | {} | {} | {} | {} |",
            f(t.med(&m, n, "rate"), 0),
            f(t.ratio(&m, n, b, "rate"), 2),
            f(t.med(&m, n, "p50_us"), 1),
            f(t.ratio(&m, n, b, "p50_us"), 2),
            f(t.med(&m, n, "p99_us"), 1),
            f(t.ratio(&m, n, b, "p99_us"), 2),
            f(t.med(&m, n, "deny_p50_us"), 1),
            f(t.ratio(&m, n, b, "cpu_us_per_conn"), 2),
        );
    }
    let _ = writeln!(
        o,
        "\nLoopback rows are relative to **loopback none**. ![connection rate](bench/rate.svg) ![p99](bench/p99.svg)\n"
    );

    let _ = writeln!(
        o,
        "## Throughput (one long TCP transfer)\n\n| mechanism | Gbit/s | ×none |\n|---|---:|---:|"
    );
    for (m, n) in t.configs() {
        let g = t.med(&m, n, "gbit");
        if g.is_finite() {
            let _ = writeln!(
                o,
                "| {m} (n={n}) | {} | {} |",
                f(g, 1),
                f(t.ratio(&m, n, base_of(&m), "gbit"), 3)
            );
        }
    }
    let _ = writeln!(o, "\n![throughput](bench/throughput.svg)\n");

    let _ = writeln!(
        o,
        "## Policy update latency\n\nFrom writing a new ServiceEntry file to the first successful \
         connect through its VIP, with *n* entries loaded.\n\n| n | p50 ms | p99 ms | max ms | agent ready s | RSS MiB |\n|---:|---:|---:|---:|---:|---:|"
    );
    if let Some(u) = results["updates"].as_object() {
        for (n, v) in u {
            let _ = writeln!(
                o,
                "| {n} | {} | {} | {} | {} | {} |",
                f(v["p50_ms"].as_f64().unwrap_or(f64::NAN), 1),
                f(v["p99_ms"].as_f64().unwrap_or(f64::NAN), 1),
                f(v["max_ms"].as_f64().unwrap_or(f64::NAN), 1),
                f(v["ready_s"].as_f64().unwrap_or(f64::NAN), 2),
                f(v["rss_mib"].as_f64().unwrap_or(f64::NAN), 0),
            );
        }
    }
    let _ = writeln!(
        o,
        "\n## Full load\n\nAgent start to ready (maps filled, programs attached), and its memory.\n\n| n | ready s | RSS MiB | peak RSS MiB |\n|---:|---:|---:|---:|"
    );
    if let Some(l) = results["loads"].as_object() {
        for (n, v) in l {
            let _ = writeln!(
                o,
                "| {n} | {} | {} | {} |",
                f(v["ready_s"].as_f64().unwrap_or(f64::NAN), 2),
                f(v["rss_mib"].as_f64().unwrap_or(f64::NAN), 0),
                f(v["hwm_mib"].as_f64().unwrap_or(f64::NAN), 0),
            );
        }
    }
    let dns = &results["dns"];
    let g = |case: &str, k: &str| dns[case][k].as_f64().unwrap_or(f64::NAN);
    let _ = writeln!(
        o,
        "\n## DNS proxy\n\nUDP A queries from the pod. *direct*: to the upstream server, not \
         captured (a process outside the workload cgroup). *proxy*: the same query captured into \
         the agent's proxy — a registry host answered with its VIP, or a name forwarded upstream.\n\n\
         | case | p50 µs | p99 µs | added p50 µs | added p99 µs | queries/s (8 clients) |\n|---|---:|---:|---:|---:|---:|"
    );
    for case in ["direct", "proxy_vip", "proxy_forwarded"] {
        let added = |k: &str| {
            if case == "direct" {
                f64::NAN
            } else {
                g(case, k) - g("direct", k)
            }
        };
        let _ = writeln!(
            o,
            "| {case} | {} | {} | {} | {} | {} |",
            f(g(case, "p50_us"), 1),
            f(g(case, "p99_us"), 1),
            f(added("p50_us"), 1),
            f(added("p99_us"), 1),
            f(g(case, "qps"), 0)
        );
    }

    let k = &results["kubernetes"];
    if k.is_object() {
        let g = |key: &str| k[key].as_f64().unwrap_or(f64::NAN);
        let _ = writeln!(
            o,
            "\n## Kubernetes mode\n\nThe agent watching an API server (the tests' API server: the \
             real wire protocol, lists and chunked watches, as kube-rs speaks to a kube-apiserver; \
             no kube-apiserver runs on these machines) with {} ServiceEntries and {} pods on the \
             node in {} namespaces ({} of them with a ServiceEntry of their own: namespaces that \
             see the same services share one view), cgroups laid out as the kubelet's systemd \
             driver does. *pod event*: from the \
             Pod object's creation in the API server to its workload entry in the kernel's map \
             ({} samples). *ServiceEntry*: from its creation in the API server to the first \
             successful connect through its new VIP from the pod.\n\n\
             | measure | p50 | p99 |\n|---|---:|---:|\n\
             | pod event to enforced (ms) | {} | {} |\n\
             | ServiceEntry created to enforced (ms) | {} | {} |\n\n\
             Start to ready (initial lists applied): {} s; agent memory: RSS {} MiB, peak {} MiB.",
            f(g("entries"), 0),
            f(g("pods"), 0),
            f(g("namespaces"), 0),
            f(g("own_entries"), 0),
            k["pod_event_samples"].as_array().map_or(0, Vec::len),
            f(g("pod_event_p50_ms"), 2),
            f(g("pod_event_p99_ms"), 2),
            f(g("se_change_p50_ms"), 1),
            f(g("se_change_p99_ms"), 1),
            f(g("ready_s"), 2),
            f(g("rss_mib"), 0),
            f(g("hwm_mib"), 0),
        );
    }

    profile_section(&mut o, &results["profile"]);
    previous_section(&mut o, results);

    // Targets.
    let _ = writeln!(o, "\n## Targets\n\n| target | measured | |\n|---|---|---|");
    let sizes: Vec<u64> = t
        .configs()
        .iter()
        .filter(|(m, _)| m == "egress")
        .map(|(_, n)| *n)
        .collect();
    // No egress row at all: nothing was measured, so no target can be met.
    let start = |x: f64| if sizes.is_empty() { f64::NAN } else { x };
    let worst_rate = sizes
        .iter()
        .map(|n| t.ratio("egress", *n, "none", "rate"))
        .fold(start(f64::INFINITY), |a, b| worst(a, b, f64::min));
    let worst_p99 = sizes
        .iter()
        .map(|n| t.ratio("egress", *n, "none", "p99_us"))
        .fold(start(f64::NEG_INFINITY), |a, b| worst(a, b, f64::max));
    let thr = sizes
        .iter()
        .map(|n| t.ratio("egress", *n, "none", "gbit"))
        .find(|x| x.is_finite())
        .unwrap_or(f64::NAN);
    let upd = results["updates"]["10000"]["p99_ms"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let load = &results["loads"]["100000"];
    let vip_added = g("proxy_vip", "p99_us") - g("direct", "p99_us");
    let check = |ok: bool, miss: String| {
        if ok {
            "met".to_owned()
        } else if miss.contains('–') {
            "**not measured**".to_owned()
        } else {
            format!("**missed** {miss}")
        }
    };
    let rows = [
        (
            "connect rate ≥ 0.95 × none at every size",
            format!("worst {} (sizes {:?})", f(worst_rate, 3), sizes),
            check(
                worst_rate >= 0.95,
                format!("by {}", f(0.95 - worst_rate, 3)),
            ),
        ),
        (
            "connect p99 ≤ 1.10 × none at every size",
            format!("worst {}", f(worst_p99, 3)),
            check(worst_p99 <= 1.10, format!("by {}", f(worst_p99 - 1.10, 3))),
        ),
        (
            "throughput ≥ 0.98 × none (with counters)",
            f(thr, 3),
            check(thr >= 0.98, format!("by {}", f(0.98 - thr, 3))),
        ),
        (
            "update p99 ≤ 100 ms at 10 000 entries",
            format!("{} ms", f(upd, 1)),
            check(upd <= 100.0, format!("by {} ms", f(upd - 100.0, 1))),
        ),
        (
            "100 000 entries loaded in ≤ 5 s",
            format!("{} s", f(load["ready_s"].as_f64().unwrap_or(f64::NAN), 2)),
            check(
                load["ready_s"].as_f64().is_some_and(|x| x <= 5.0),
                format!(
                    "by {} s",
                    f(load["ready_s"].as_f64().unwrap_or(f64::NAN) - 5.0, 2)
                ),
            ),
        ),
        (
            "… with ≤ 200 MiB RSS (once loaded)",
            format!(
                "{} MiB (peak while loading {} MiB)",
                f(load["rss_mib"].as_f64().unwrap_or(f64::NAN), 0),
                f(load["hwm_mib"].as_f64().unwrap_or(f64::NAN), 0)
            ),
            check(
                load["rss_mib"].as_f64().is_some_and(|x| x <= 200.0),
                format!(
                    "by {} MiB",
                    f(load["rss_mib"].as_f64().unwrap_or(f64::NAN) - 200.0, 0)
                ),
            ),
        ),
        (
            "DNS proxy p99 added latency ≤ 200 µs (VIP answers)",
            format!("{} µs", f(vip_added, 1)),
            check(
                vip_added <= 200.0,
                format!("by {} µs", f(vip_added - 200.0, 1)),
            ),
        ),
    ];
    for (a, b, c) in rows {
        let _ = writeln!(o, "| {a} | {b} | {c} |");
    }
    let analysis = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/ANALYSIS.md");
    if let Ok(text) = std::fs::read_to_string(&analysis)
        && !quick
    {
        let _ = writeln!(o, "\n{text}");
    }
    Ok(o)
}

/// rate.svg, p99.svg and throughput.svg in `dir`.
pub fn plots(results: &Value, dir: &Path) -> Result<()> {
    use plotters::prelude::*;
    let t = Trials {
        t: results["trials"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]),
    };
    let series = |key: &str| -> BTreeMap<&'static str, Vec<(f64, f64)>> {
        let mut out = BTreeMap::new();
        for m in ["egress", "iptables", "nftables"] {
            let pts: Vec<(f64, f64)> = t
                .configs()
                .iter()
                .filter(|(x, _)| x == m)
                .map(|(_, n)| ((*n as f64).max(1.0).log10(), t.ratio(m, *n, "none", key)))
                .filter(|(_, y)| y.is_finite())
                .collect();
            out.insert(m, pts);
        }
        out
    };
    for (file, key, title, top) in [
        (
            "rate.svg",
            "rate",
            "connection rate × none (higher is better)",
            1.2,
        ),
        (
            "p99.svg",
            "p99_us",
            "connect p99 latency × none (lower is better)",
            0.0,
        ),
    ] {
        let data = series(key);
        let ymax = if top > 0.0 {
            top
        } else {
            data.values().flatten().map(|p| p.1).fold(1.5, f64::max) * 1.1
        };
        let path = dir.join(file);
        let root = SVGBackend::new(&path, (720, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0.5f64..5.5f64, 0f64..ymax)?;
        chart
            .configure_mesh()
            .x_desc("registered services (log10)")
            .y_desc("× none")
            .draw()?;
        let colors = [RED, BLUE, GREEN];
        for ((name, pts), color) in data.into_iter().zip(colors) {
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
        }
        let hap = t.ratio("haproxy", 0, "none", key);
        if hap.is_finite() {
            chart
                .draw_series(LineSeries::new(
                    vec![(0.5, hap), (5.5, hap)],
                    BLACK.stroke_width(1),
                ))?
                .label("haproxy")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK));
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()?;
        root.present()?;
    }
    // Throughput bars.
    let bars: Vec<(String, f64)> = t
        .configs()
        .iter()
        .filter_map(|(m, n)| {
            let g = t.med(m, *n, "gbit");
            g.is_finite().then(|| (format!("{m} n={n}"), g))
        })
        .collect();
    let path = dir.join("throughput.svg");
    let root = SVGBackend::new(&path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let ymax = bars.iter().map(|b| b.1).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption("one long TCP transfer (Gbit/s)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0f64..bars.len() as f64, 0f64..ymax)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("Gbit/s")
        .draw()?;
    for (i, (name, g)) in bars.iter().enumerate() {
        let x = i as f64;
        chart.draw_series(std::iter::once(Rectangle::new(
            [(x + 0.15, 0.0), (x + 0.85, *g)],
            BLUE.mix(0.6).filled(),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("{name}: {g:.1}"),
            (x + 0.1, *g + ymax * 0.02),
            ("sans-serif", 11),
        )))?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn trial(rep: u64, mech: &str, n: u64, p99: f64) -> Value {
        json!({"rep": rep, "mechanism": mech, "n": n, "values": {"p99_us": p99}})
    }

    #[test]
    fn ratio_is_the_median_of_per_repetition_ratios() {
        // The base is noisy across repetitions; each ratio uses its own repetition.
        let trials = vec![
            trial(0, "none", 0, 40.0),
            trial(0, "egress", 10, 42.0),
            trial(1, "none", 0, 50.0),
            trial(1, "egress", 10, 50.0),
            trial(2, "none", 0, 30.0),
            trial(2, "egress", 10, 36.0),
        ];
        let t = Trials { t: &trials };
        assert_eq!(t.reps(), 3);
        assert!((t.ratio("egress", 10, "none", "p99_us") - 1.05).abs() < 1e-9);
        assert_eq!(t.med("none", 0, "p99_us"), 40.0);
        assert!(t.ratio("egress", 1000, "none", "p99_us").is_nan());
    }

    #[test]
    fn configs_are_ordered_by_mechanism_then_size_without_duplicates() {
        let trials = vec![
            trial(0, "nftables", 10, 1.0),
            trial(0, "egress", 1000, 1.0),
            trial(1, "egress", 10, 1.0),
            trial(0, "egress", 10, 1.0),
            trial(0, "none", 0, 1.0),
        ];
        let names: Vec<(String, u64)> = Trials { t: &trials }.configs();
        assert_eq!(
            names,
            vec![
                ("none".into(), 0),
                ("egress".into(), 10),
                ("egress".into(), 1000),
                ("nftables".into(), 10)
            ]
        );
    }

    fn target_line<'a>(report: &'a str, target: &str) -> &'a str {
        report
            .lines()
            .find(|l| l.starts_with(&format!("| {target}")))
            .unwrap_or_else(|| panic!("no target line {target:?} in:\n{report}"))
    }

    #[test]
    fn targets_report_what_was_measured_and_by_how_much_a_target_is_missed() {
        let row = |rep: u64, mech: &str, n: u64, rate: f64, p99: f64| {
            json!({"rep": rep, "mechanism": mech, "n": n,
                   "values": {"rate": rate, "p99_us": p99, "gbit": 10.0}})
        };
        let results = json!({
            "quick": false,
            "trials": [
                row(0, "none", 0, 1000.0, 40.0),
                row(0, "egress", 10, 990.0, 42.0),
                row(0, "egress", 1000, 900.0, 46.0),
            ],
            "updates": {"10000": {"p99_ms": 120.0}},
            "loads": {"100000": {"ready_s": 2.0, "rss_mib": 150.0, "hwm_mib": 180.0}},
            "dns": {},
        });
        let report = render(&results, "plan").unwrap();
        let rate = target_line(&report, "connect rate");
        assert!(
            rate.contains("worst 0.900") && rate.contains("**missed** by 0.050"),
            "{rate}"
        );
        let p99 = target_line(&report, "connect p99");
        assert!(
            p99.contains("worst 1.150") && p99.contains("**missed** by 0.050"),
            "{p99}"
        );
        assert!(target_line(&report, "throughput").ends_with("| met |"));
        let upd = target_line(&report, "update p99");
        assert!(
            upd.contains("120.0 ms") && upd.contains("**missed** by 20.0 ms"),
            "{upd}"
        );
        assert!(target_line(&report, "100 000 entries").ends_with("| met |"));
        // No DNS measurement: unknown, never "met".
        assert!(target_line(&report, "DNS proxy").ends_with("| **not measured** |"));
    }

    #[test]
    fn no_measurement_meets_no_target() {
        let report = render(&json!({"trials": []}), "plan").unwrap();
        for target in ["connect rate", "connect p99", "throughput", "update p99"] {
            let line = target_line(&report, target);
            assert!(line.ends_with("| **not measured** |"), "{line}");
        }
    }

    #[test]
    fn loopback_rows_compare_to_loopback_none() {
        assert_eq!(base_of("loopback egress"), "loopback none");
        assert_eq!(base_of("iptables"), "none");
        assert_eq!(f(f64::NAN, 2), "–");
        assert_eq!(f(1.2345, 2), "1.23");
    }
}
