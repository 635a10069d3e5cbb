//! Kubernetes mode, end to end on the real kernel: the agent watches the test
//! API server (`egress_tests::apiserver`, the real wire protocol: lists, chunked
//! watches, bookmarks, 410 Gone), pods are network namespaces plus cgroups laid
//! out as the kubelet lays them out (systemd driver), and every check is made
//! on the kernel's maps or with real connections to real servers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use egress_tests::apiserver::ApiServer;
use egress_tests::bpf::PinnedMap;
use egress_tests::kubelet::{self, Kubelet, PodCgroups};
use egress_tests::server::Server;
use egress_tests::*;
use serde_json::json;

const NODE: &str = "node-a";

/// A ServiceEntry seen only in `shop` (exportTo "."), VIP 240.240.1.1:80 →
/// the external hosts 1 and 2 on 8080.
fn stripe_se(endpoints: &[&str]) -> serde_json::Value {
    let eps: Vec<serde_json::Value> = endpoints.iter().map(|a| json!({"address": a})).collect();
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "legacy", "namespace": "shop"},
        "spec": {"hosts": ["legacy.internal"], "addresses": ["240.240.1.1"],
                 "exportTo": ["."], "location": "MESH_INTERNAL", "resolution": "STATIC",
                 "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8080}],
                 "endpoints": eps}
    })
}

const VIP: &str = "240.240.1.1:80";
/// Host 3 is in no ServiceEntry.
const UNREGISTERED: &str = "198.18.0.13:8080";

/// One test's node: network, kubelet cgroups, API server, agent directory.
struct Node {
    net: Net,
    kubelet: Kubelet,
    api: ApiServer,
    dir: tempfile::TempDir,
    servers: Vec<Server>,
}

impl Node {
    fn new(api: ApiServer) -> Self {
        let net = Net::with_pods(3, 3);
        let servers = (1..=3)
            .map(|i| Server::start(net.ext(i), sa("0.0.0.0:8080"), &format!("ext{i}")))
            .collect();
        api.apply(kubelet::namespace("shop", json!({})));
        api.apply(kubelet::namespace("other", json!({})));
        Self {
            net,
            kubelet: Kubelet::new(),
            api,
            dir: tempfile::tempdir().unwrap(),
            servers,
        }
    }

    fn config(&self, mode: &str, extra: &str) -> (PathBuf, SocketAddr) {
        let kubeconfig = self.dir.path().join("kubeconfig");
        self.api.write_kubeconfig(&kubeconfig);
        let metrics = sa(&format!("127.0.0.1:{}", free_port()));
        let instance = self
            .kubelet
            .root
            .path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace('.', "_");
        let text = format!(
            "outboundTrafficPolicy: {{mode: {mode}}}\nmetricsAddress: {metrics}\ninstance: {instance}\n\
             stateDir: state\nkubernetes:\n  nodeName: {NODE}\n  kubeconfig: {}\n  cgroupRoot: {}\n  \
             cgroupDriver: systemd\n{extra}",
            kubeconfig.display(),
            self.kubelet.root.path.display()
        );
        let path = self.dir.path().join("agent.yaml");
        std::fs::write(&path, text).unwrap();
        (path, metrics)
    }

    /// Starts the agent in the test's network namespace (the API server
    /// listens on its loopback) and waits until it is ready.
    fn agent(&self, mode: &str, extra: &str, env: &[(&str, &str)]) -> Agent {
        let (path, metrics) = self.config(mode, extra);
        Agent::start_with_env(&path, metrics, None, env)
    }

    /// Pod `i`'s network namespace with a fresh pod of the API and its cgroups.
    fn add_pod(&self, i: usize, ns: &str, name: &str, labels: serde_json::Value) -> Pod {
        let uid = kubelet::uid();
        let cg = self.kubelet.start_pod(&uid, "Burstable");
        let ip = pod_v4(i).to_string();
        self.api.apply(kubelet::pod(
            ns,
            name,
            &uid,
            NODE,
            &ip,
            "Burstable",
            labels,
            false,
        ));
        Pod {
            place: cg.place(self.net.pods[i].path()),
            cg,
            uid,
            ns: ns.into(),
            name: name.into(),
        }
    }

    fn workloads_map(&self, agent: &Agent) -> PinnedMap {
        let text = std::fs::read_to_string(&agent.config).unwrap();
        let instance = text
            .lines()
            .find_map(|l| l.strip_prefix("instance: "))
            .unwrap();
        PinnedMap::open(
            &Path::new("/sys/fs/bpf/egress")
                .join(instance)
                .join("EGRESS_WORKLOADS"),
        )
        .expect("the workloads map is pinned")
    }
}

struct Pod {
    cg: PodCgroups,
    place: Place,
    uid: String,
    ns: String,
    name: String,
}

fn cgroup_id(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

/// The workload entry of `cgroup` in the kernel: its flags.
fn entry_flags(map: &PinnedMap, cgroup: &Path) -> Option<u32> {
    let v = map.lookup(&cgroup_id(cgroup).to_ne_bytes(), 16)?;
    Some(u32::from_ne_bytes(v[8..12].try_into().unwrap()))
}

const WL_UNTOUCHED: u32 = 8;

/// Polls `cond` every millisecond until it holds or `limit` passes; the time
/// it took.
fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if cond() {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

/// Waits until the kernel has a workload entry for `cgroup`.
fn wait_enforced(map: &PinnedMap, cgroup: &Path) {
    wait_until(Duration::from_secs(5), || {
        entry_flags(map, cgroup).is_some()
    })
    .unwrap_or_else(|| panic!("{} never enforced", cgroup.display()));
}

fn connect_ok(p: &Place, addr: &str) -> bool {
    p.connect(sa(addr)).ok
}

#[test]
fn a_pod_from_the_api_is_enforced_with_its_namespaces_view_and_leaves_nothing_when_deleted() {
    let node = Node::new(ApiServer::start());
    node.api.apply(stripe_se(&["198.18.0.11"]));
    let agent = node.agent("REGISTRY_ONLY", "", &[]);
    let map = node.workloads_map(&agent);

    // The pod's event: enforced (in the kernel map) within 100 ms.
    let web = node.add_pod(0, "shop", "web", json!({"app": "web"}));
    let took = wait_until(Duration::from_secs(5), || {
        entry_flags(&map, &web.cg.pod).is_some()
    })
    .unwrap_or_else(|| panic!("pod never enforced:\n{}", agent.log_text()));
    eprintln!("pod event to kernel map entry: {took:?}");
    assert!(
        took < Duration::from_millis(100),
        "pod event to enforced took {took:?}"
    );
    // Its namespace's view: the shop-only VIP works and lands at the endpoint.
    let before = node.servers[0].hit_count();
    let r = web.place.connect(sa(VIP));
    assert!(r.ok, "{r:?}");
    assert!(r.reply.contains("ext1"), "{r:?}");
    assert_eq!(node.servers[0].hit_count(), before + 1);
    // Unregistered: refused, and nothing reached host 3.
    let r = web.place.connect(sa(UNREGISTERED));
    assert_eq!(r.errno, EPERM, "{r:?}");
    assert_eq!(node.servers[2].hit_count(), 0);

    // A pod of another namespace does not see it.
    let batch = node.add_pod(1, "other", "batch", json!({}));
    wait_enforced(&map, &batch.cg.pod);
    let r = batch.place.connect(sa(VIP));
    assert!(!r.ok, "the VIP is exported to shop only: {r:?}");

    // Traffic makes metric series of the workload; deleting the pod removes
    // its map entry and every series.
    let series = |text: &str| {
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains("source_workload=\"web\""))
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(5), || series(&agent.metrics_text()) > 0).is_some(),
        "no series of the web pod"
    );
    assert!(node.api.delete("Pod", Some(&web.ns), &web.name));
    node.kubelet.stop_pod(&web.cg);
    assert!(
        wait_until(Duration::from_secs(5), || series(&agent.metrics_text())
            == 0)
        .is_some(),
        "series of the deleted pod stay:\n{}",
        agent.metrics_text()
    );
    let text = agent.wait_log("applied the API server's changes", Duration::from_secs(1));
    assert!(text.contains("applied the API server's changes"));
    // The other pod is still enforced.
    assert!(entry_flags(&map, &batch.cg.pod).is_some());
    let _ = &batch.uid;
}

#[test]
fn the_pods_entry_leaves_the_kernel_when_it_is_deleted() {
    let node = Node::new(ApiServer::start());
    let agent = node.agent("REGISTRY_ONLY", "", &[]);
    let map = node.workloads_map(&agent);
    let web = node.add_pod(0, "shop", "web", json!({}));
    wait_enforced(&map, &web.cg.pod);
    // Deleted in the API while its cgroup is still there (the kubelet removes
    // it later): the entry goes with the event.
    node.api.delete("Pod", Some("shop"), "web");
    wait_until(Duration::from_secs(5), || {
        entry_flags(&map, &web.cg.pod).is_none()
    })
    .unwrap_or_else(|| panic!("entry stays:\n{}", agent.log_text()));
}

#[test]
fn a_service_entry_created_edited_broken_and_deleted_through_the_api() {
    let node = Node::new(ApiServer::start());
    let agent = node.agent("REGISTRY_ONLY", "", &[]);
    let map = node.workloads_map(&agent);
    let web = node.add_pod(0, "shop", "web", json!({}));
    wait_enforced(&map, &web.cg.pod);
    assert!(!connect_ok(&web.place, VIP), "no entry yet");

    node.api.apply(stripe_se(&["198.18.0.11"]));
    assert!(
        wait_until(Duration::from_secs(5), || connect_ok(&web.place, VIP)).is_some(),
        "created entry not enforced:\n{}",
        agent.log_text()
    );
    // explain, from the API server's state, says what the kernel does: shop
    // sees the VIP, another namespace does not.
    let explain = |from: &str| {
        let out = std::process::Command::new(agent_bin())
            .args([
                "explain",
                "--config",
                agent.config.to_str().unwrap(),
                "--from",
                from,
                "--to",
                VIP,
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let text = explain("shop/web");
    assert!(
        text.contains("rewritten to one of 198.18.0.11:8080"),
        "{text}"
    );
    let batch = node.add_pod(1, "other", "batch", json!({}));
    wait_enforced(&map, &batch.cg.pod);
    let text = explain("other/batch");
    assert!(text.contains("DENIED"), "{text}");
    assert!(!connect_ok(&batch.place, VIP));

    // Edited: the endpoint moves to host 2.
    node.api.apply(stripe_se(&["198.18.0.12"]));
    assert!(
        wait_until(Duration::from_secs(5), || web
            .place
            .connect(sa(VIP))
            .reply
            .contains("ext2"))
        .is_some(),
        "edit not applied"
    );
    // Made invalid: rejected with where, what and why; the last good stays.
    let mut bad = stripe_se(&["198.18.0.11"]);
    bad["spec"]["ports"][0]["number"] = json!(0);
    node.api.apply(bad);
    let log = agent.wait_log("serviceentries/legacy", Duration::from_secs(5));
    let line = log
        .lines()
        .find(|l| l.contains("/apis/networking.istio.io/v1/namespaces/shop/serviceentries/legacy"))
        .unwrap_or_else(|| panic!("no rejection naming the object:\n{log}"));
    assert!(line.contains("ports"), "{line}");
    let r = web.place.connect(sa(VIP));
    assert!(
        r.ok && r.reply.contains("ext2"),
        "last good version kept: {r:?}"
    );
    // Deleted: refused again.
    node.api.delete("ServiceEntry", Some("shop"), "legacy");
    assert!(
        wait_until(Duration::from_secs(5), || !connect_ok(&web.place, VIP)).is_some(),
        "deleted entry still enforced"
    );
}

#[test]
fn labels_host_network_and_the_agents_own_pod_are_untouched() {
    let node = Node::new(ApiServer::start());
    // The agent's own pod: known from POD_UID before anything is listed.
    let own_uid = kubelet::uid();
    let own = node.kubelet.start_pod(&own_uid, "Burstable");
    let agent = node.agent("REGISTRY_ONLY", "", &[("POD_UID", &own_uid)]);
    let map = node.workloads_map(&agent);
    assert_eq!(
        entry_flags(&map, &own.pod).map(|f| f & WL_UNTOUCHED),
        Some(WL_UNTOUCHED)
    );
    let own_place = own.place(node.net.pods[2].path());
    assert!(
        connect_ok(&own_place, UNREGISTERED),
        "the agent's pod is never enforced"
    );

    let web = node.add_pod(0, "shop", "web", json!({}));
    wait_enforced(&map, &web.cg.pod);
    assert_eq!(web.place.connect(sa(UNREGISTERED)).errno, EPERM);

    // The namespace opts out: untouched (known, not the unknown default).
    node.api.apply(kubelet::namespace(
        "shop",
        json!({"egress.dev/enforce": "disabled"}),
    ));
    wait_until(Duration::from_secs(5), || {
        entry_flags(&map, &web.cg.pod).is_some_and(|f| f & WL_UNTOUCHED != 0)
    })
    .expect("opted out");
    assert!(connect_ok(&web.place, UNREGISTERED));
    // Label removed: enforced again.
    node.api.apply(kubelet::namespace("shop", json!({})));
    wait_until(Duration::from_secs(5), || {
        entry_flags(&map, &web.cg.pod).is_some_and(|f| f & WL_UNTOUCHED == 0)
    })
    .expect("enforced again");
    assert_eq!(web.place.connect(sa(UNREGISTERED)).errno, EPERM);

    // Audit by the pod's label: allowed, reported as audit.
    node.api.apply(kubelet::pod(
        "shop",
        "web",
        &web.uid,
        NODE,
        "198.18.0.2",
        "Burstable",
        json!({"egress.dev/audit": "enabled"}),
        false,
    ));
    assert!(
        wait_until(Duration::from_secs(5), || connect_ok(
            &web.place,
            UNREGISTERED
        ))
        .is_some(),
        "audit label not applied"
    );

    // A hostNetwork pod: untouched.
    let host_uid = kubelet::uid();
    let host = node.kubelet.start_pod(&host_uid, "BestEffort");
    node.api.apply(kubelet::pod(
        "shop",
        "node-exporter",
        &host_uid,
        NODE,
        "",
        "BestEffort",
        json!({}),
        true,
    ));
    wait_until(Duration::from_secs(5), || {
        entry_flags(&map, &host.pod).is_some_and(|f| f & WL_UNTOUCHED != 0)
    })
    .expect("hostNetwork pod known as untouched");
    assert!(connect_ok(
        &host.place(node.net.pods[1].path()),
        UNREGISTERED
    ));

    // A pod of another node is none of this agent's business: its cgroup (if
    // one were here) stays under the unknown default.
    let far_uid = kubelet::uid();
    let far = node.kubelet.start_pod(&far_uid, "Burstable");
    node.api.apply(kubelet::pod(
        "shop",
        "far",
        &far_uid,
        "node-b",
        "198.18.0.3",
        "Burstable",
        json!({}),
        false,
    ));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(entry_flags(&map, &far.pod), None);
    assert_eq!(
        far.place(node.net.pods[1].path())
            .connect(sa(UNREGISTERED))
            .errno,
        EPERM
    );
}

#[test]
fn a_cgroup_before_its_event_and_an_event_before_its_cgroup() {
    let node = Node::new(ApiServer::start());
    node.api.apply(stripe_se(&["198.18.0.11"]));
    let agent = node.agent("REGISTRY_ONLY", "", &[]);
    let map = node.workloads_map(&agent);
    // The cgroup first: the unknown default holds it (nothing but DNS).
    let uid = kubelet::uid();
    let cg = node.kubelet.start_pod(&uid, "Burstable");
    let place = cg.place(node.net.pods[0].path());
    assert_eq!(place.connect(sa(UNREGISTERED)).errno, EPERM);
    assert!(!connect_ok(&place, VIP), "the default has an empty view");
    node.api.apply(kubelet::pod(
        "shop",
        "web",
        &uid,
        NODE,
        "198.18.0.2",
        "Burstable",
        json!({}),
        false,
    ));
    wait_until(Duration::from_secs(5), || connect_ok(&place, VIP)).expect("enforced as shop/web");

    // The event first: enforced as soon as the kubelet makes the cgroup.
    let uid2 = kubelet::uid();
    node.api.apply(kubelet::pod(
        "shop",
        "late",
        &uid2,
        NODE,
        "198.18.0.3",
        "Burstable",
        json!({}),
        false,
    ));
    std::thread::sleep(Duration::from_millis(200));
    let cg2 = node.kubelet.start_pod(&uid2, "Burstable");
    let took = wait_until(Duration::from_secs(5), || {
        entry_flags(&map, &cg2.pod).is_some()
    })
    .unwrap_or_else(|| panic!("never enforced:\n{}", agent.log_text()));
    eprintln!("cgroup made to kernel map entry: {took:?}");
    assert!(connect_ok(&cg2.place(node.net.pods[1].path()), VIP));
}

#[test]
fn an_api_outage_keeps_the_last_good_state_and_the_relist_drops_what_went() {
    let node = Node::new(ApiServer::start());
    node.api.apply(stripe_se(&["198.18.0.11"]));
    let agent = node.agent("REGISTRY_ONLY", "", &[]);
    let map = node.workloads_map(&agent);
    let web = node.add_pod(0, "shop", "web", json!({}));
    wait_until(Duration::from_secs(5), || connect_ok(&web.place, VIP)).expect("enforced");

    node.api.stop();
    let log = agent.wait_log("watch down", Duration::from_secs(10));
    assert!(log.contains("watch down"), "{log}");
    assert!(
        wait_until(Duration::from_secs(10), || {
            metric_sum(
                &agent.metrics_text(),
                "egress_kubernetes_watch_up",
                &[("resource", "pods")],
            ) == 0.0
        })
        .is_some()
    );
    // Nothing lost: the pod and its entry stay enforced.
    assert!(connect_ok(&web.place, VIP));
    assert_eq!(web.place.connect(sa(UNREGISTERED)).errno, EPERM);
    assert_eq!(
        agent.get("/readyz").map(|r| r.0),
        Some(200),
        "ready stays: the state is good"
    );

    // While it is down: the entry is deleted, a pod is added, and the history
    // is compacted (the watch's resume gets 410 Gone and lists again).
    node.api.delete("ServiceEntry", Some("shop"), "legacy");
    let late = node.add_pod(1, "shop", "late", json!({}));
    node.api.compact();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        connect_ok(&web.place, VIP),
        "nothing changes while the API is away"
    );
    node.api.restart();
    wait_until(Duration::from_secs(10), || {
        entry_flags(&map, &late.cg.pod).is_some()
    })
    .unwrap_or_else(|| {
        panic!(
            "pod added during the outage never enforced:\n{}",
            agent.log_text()
        )
    });
    wait_until(Duration::from_secs(10), || !connect_ok(&web.place, VIP)).unwrap_or_else(|| {
        panic!(
            "entry deleted during the outage still enforced:\n{}",
            agent.log_text()
        )
    });
    assert!(
        wait_until(Duration::from_secs(10), || {
            metric_sum(
                &agent.metrics_text(),
                "egress_kubernetes_watch_up",
                &[("resource", "pods")],
            ) == 1.0
        })
        .is_some()
    );
    assert!(agent.log_text().contains("watch resumed"));
}

#[test]
fn istio_served_at_v1alpha3_only_and_the_mesh_configmap_sets_the_policy() {
    let node = Node::new(ApiServer::with_istio_versions(&["v1alpha3"]));
    let mut se = stripe_se(&["198.18.0.11"]);
    se["apiVersion"] = json!("networking.istio.io/v1alpha3");
    node.api.apply(se);
    node.api
        .apply(kubelet::namespace("istio-system", json!({})));
    node.api.apply(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": "outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n"}
    }));
    // The agent's own setting is ALLOW_ANY: Istio's ConfigMap wins.
    let agent = node.agent("ALLOW_ANY", "", &[]);
    let web = node.add_pod(0, "shop", "web", json!({}));
    wait_until(Duration::from_secs(5), || connect_ok(&web.place, VIP))
        .expect("v1alpha3 entry enforced");
    assert_eq!(web.place.connect(sa(UNREGISTERED)).errno, EPERM);
    assert!(
        agent.log_text().contains("version=\"v1alpha3\"")
            || agent.log_text().contains("version=v1alpha3")
    );
    // The ConfigMap switches to ALLOW_ANY, then a broken one keeps it.
    node.api.apply(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": "outboundTrafficPolicy:\n  mode: ALLOW_ANY\n"}
    }));
    wait_until(Duration::from_secs(5), || {
        connect_ok(&web.place, UNREGISTERED)
    })
    .expect("ALLOW_ANY");
    node.api.apply(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": "outboundTrafficPolicy: [not, a, map\n"}
    }));
    agent.wait_log("data.mesh does not read", Duration::from_secs(5));
    assert!(
        connect_ok(&web.place, UNREGISTERED),
        "last good settings stay"
    );
    // Deleted: the agent's own setting (ALLOW_ANY) again; still allowed.
    node.api.delete("ConfigMap", Some("istio-system"), "istio");
    std::thread::sleep(Duration::from_millis(200));
    assert!(connect_ok(&web.place, UNREGISTERED));
}

#[test]
fn a_restart_enforces_the_pinned_state_before_the_api_answers() {
    let node = Node::new(ApiServer::start());
    node.api.apply(stripe_se(&["198.18.0.11"]));
    let mut first = node.agent("REGISTRY_ONLY", "", &[]);
    let map = node.workloads_map(&first);
    let web = node.add_pod(0, "shop", "web", json!({}));
    wait_until(Duration::from_secs(5), || connect_ok(&web.place, VIP)).expect("enforced");
    // kill -9, the API server away, a new agent.
    first.signal_and_wait(libc::SIGKILL);
    node.api.stop();
    let (path, metrics) = (first.config.clone(), first.metrics);
    // The new agent's pod (a rolling update): the adopted state does not know
    // it, and must not hold it to the fail-closed default.
    let own_uid = kubelet::uid();
    let own = node.kubelet.start_pod(&own_uid, "Burstable");
    let own_place = own.place(node.net.pods[2].path());
    assert_eq!(
        own_place.connect(sa(UNREGISTERED)).errno,
        EPERM,
        "unknown: the default"
    );
    let mut second = Agent::spawn_with_env(&path, metrics, None, &[("POD_UID", &own_uid)]);
    second.wait_log(
        "until the API server's initial lists are in",
        Duration::from_secs(20),
    );
    assert_eq!(
        entry_flags(&map, &own.pod).map(|f| f & WL_UNTOUCHED),
        Some(WL_UNTOUCHED)
    );
    assert!(
        connect_ok(&own_place, UNREGISTERED),
        "the agent's own pod is never enforced"
    );
    // Enforcing the adopted state, not ready.
    assert!(connect_ok(&web.place, VIP));
    assert_eq!(web.place.connect(sa(UNREGISTERED)).errno, EPERM);
    assert!(entry_flags(&map, &web.cg.pod).is_some());
    assert_eq!(second.get("/readyz").map(|r| r.0), Some(503));
    node.api.restart();
    second.wait_ready(Duration::from_secs(20));
    assert!(connect_ok(&web.place, VIP));
    drop(first);
}

#[test]
fn a_routed_pod_gets_its_interface_from_the_nodes_routes() {
    // The agent in the node's network namespace, as on a node: the API server
    // listens on that namespace's loopback.
    let node_ns = Net::with_pods(0, 1);
    let ns_path = node_ns.node.path();
    let api = {
        let p = ns_path.clone();
        std::thread::spawn(move || {
            enter_netns(&p);
            ApiServer::start()
        })
        .join()
        .unwrap()
    };
    // A pod routed as Calico or the ptp plugin do: a veth with no bridge, a
    // host route to the pod's /32 on the node, the pod's default route on its
    // link, answered by the node's proxy ARP.
    let pod_ns = Netns::new(&format!("{}r", unique("eg")));
    sh(
        "ip",
        &[
            "-n",
            &node_ns.node.name,
            "link",
            "add",
            "vr0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pod_ns.name,
        ],
    );
    node_ns.node.ip(&["link", "set", "vr0", "up"]);
    node_ns
        .node
        .ip(&["route", "add", "198.18.1.2/32", "dev", "vr0"]);
    sh(
        "ip",
        &[
            "netns",
            "exec",
            &node_ns.node.name,
            "sysctl",
            "-qw",
            "net.ipv4.conf.vr0.proxy_arp=1",
        ],
    );
    sh(
        "ip",
        &[
            "netns",
            "exec",
            &node_ns.node.name,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ],
    );
    pod_ns.ip(&["addr", "add", "198.18.1.2/32", "dev", "eth0"]);
    pod_ns.ip(&["link", "set", "eth0", "up"]);
    pod_ns.ip(&["route", "add", "default", "dev", "eth0"]);
    node_ns
        .ext(1)
        .ip(&["route", "add", "198.18.1.0/24", "via", NODE_V4]);
    let server = Server::start(node_ns.ext(1), sa("0.0.0.0:8080"), "ext1");
    // The network works before any agent.
    let outside = Place {
        netns: pod_ns.path(),
        cgroup: None,
    };
    let r = outside.connect(sa("198.18.0.11:8080"));
    assert!(r.ok, "routed pod network: {r:?}");

    let kubelet = Kubelet::new();
    let dir = tempfile::tempdir().unwrap();
    api.apply(kubelet::namespace("shop", json!({})));
    api.apply(stripe_se(&["198.18.0.11"]));
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let metrics = sa("127.0.0.1:9464");
    let instance = kubelet
        .root
        .path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}\nmetricsAddress: {metrics}\ninstance: {instance}\n\
             stateDir: state\nkubernetes:\n  nodeName: {NODE}\n  kubeconfig: {}\n  cgroupRoot: {}\n  \
             cgroupDriver: systemd\n",
            kubeconfig.display(),
            kubelet.root.path.display()
        ),
    )
    .unwrap();
    let agent = Agent::start(&config, metrics, Some(&ns_path));
    let uid = kubelet::uid();
    let cg = kubelet.start_pod(&uid, "Burstable");
    api.apply(kubelet::pod(
        "shop",
        "routed",
        &uid,
        NODE,
        "198.18.1.2",
        "Burstable",
        json!({}),
        false,
    ));
    let place = cg.place(pod_ns.path());
    wait_until(Duration::from_secs(5), || connect_ok(&place, VIP))
        .unwrap_or_else(|| panic!("routed pod not enforced:\n{}", agent.log_text()));
    // The traffic line is on the pod's own link: one interface, bytes counted
    // for the pod.
    let sent = |text: &str| {
        metric_sum(
            text,
            "egress_sent_bytes_total",
            &[("source_workload", "routed")],
        )
    };
    assert!(
        wait_until(Duration::from_secs(10), || {
            // Traffic after the interface line is attached (at most a second
            // after the pod) is counted there.
            let _ = connect_ok(&place, VIP);
            let text = agent.metrics_text();
            metric_sum(&text, "egress_traffic_interfaces", &[]) == 1.0 && sent(&text) > 0.0
        })
        .is_some(),
        "no counters from vr0:\n{}",
        agent.metrics_text()
    );
    assert!(server.hit_count() >= 1);
    assert_eq!(place.connect(sa(UNREGISTERED)).errno, EPERM);
    drop(agent);
    drop(api);
}
