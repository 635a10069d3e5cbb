//! This node's pods as workloads: their cgroup from the UID (as the kubelet
//! lays it out), who they are, their addresses, the host side of their link,
//! and whether they are enforced at all.
//!
//! Labels (on the Namespace or the Pod; the Pod's wins):
//! - [`ENFORCE_LABEL`]` = disabled`: never enforced (known, so the fail-closed
//!   default for unknown cgroups never holds it either);
//! - [`AUDIT_LABEL`]` = enabled`: audit mode.
//!
//! hostNetwork pods, the namespaces in `kubernetes.excludedNamespaces` and the
//! agent's own pod are never enforced.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use crate::config::{KubernetesConfig, WorkloadConfig};
use crate::k8s::cgroups::{self, Qos};
use crate::k8s::watch::{Cluster, PodInfo};

/// `disabled` opts a Namespace or Pod out of enforcement.
pub const ENFORCE_LABEL: &str = "egress.dev/enforce";
/// `enabled` (or `true`) puts a Namespace or Pod in audit mode.
pub const AUDIT_LABEL: &str = "egress.dev/audit";

/// Why a pod is not enforced (none: it is).
pub fn untouched_reason(
    pod: &PodInfo,
    ns_labels: Option<&BTreeMap<String, String>>,
    k: &KubernetesConfig,
) -> Option<&'static str> {
    if k.pod_uid.as_deref() == Some(pod.uid.as_str()) {
        return Some("the agent's own pod");
    }
    if pod.host_network {
        return Some("hostNetwork");
    }
    if k.excluded_namespaces.contains(&pod.namespace) {
        return Some("excluded namespace");
    }
    if label(pod, ns_labels, k, ENFORCE_LABEL) == Some("disabled") {
        return Some("opted out by label");
    }
    // Istio's own dataplane enforces these pods' egress; rewriting their
    // connections at the socket would hide the VIPs Envoy matches on.
    if k.pod_labels && pod.istio_sidecar {
        return Some("Istio sidecar");
    }
    if label(pod, ns_labels, k, AMBIENT_LABEL) == Some("ambient") {
        return Some("Istio ambient");
    }
    None
}

/// Istio's ambient mode label (Namespace or Pod).
pub const AMBIENT_LABEL: &str = "istio.io/dataplane-mode";

/// The pod's label (when `kubernetes.podLabels` lets pods speak for
/// themselves), else its namespace's.
fn label<'a>(
    pod: &'a PodInfo,
    ns_labels: Option<&'a BTreeMap<String, String>>,
    k: &KubernetesConfig,
    key: &str,
) -> Option<&'a str> {
    k.pod_labels
        .then(|| pod.labels.get(key))
        .flatten()
        .or_else(|| ns_labels.and_then(|l| l.get(key)))
        .map(String::as_str)
}

/// The workloads of the pods in `cluster`, in namespace/name order. `iface`
/// finds the host side of a pod's link from its address (the node's routes).
pub fn workloads(
    cluster: &Cluster,
    k: &KubernetesConfig,
    iface: &dyn Fn(IpAddr) -> Option<String>,
) -> Vec<WorkloadConfig> {
    let mut pods: Vec<&PodInfo> = cluster.pods.values().filter(|p| !p.finished).collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut out = Vec::with_capacity(pods.len());
    let mut seen = std::collections::BTreeSet::new();
    for pod in pods {
        let ns_labels = cluster.namespaces.get(&pod.namespace);
        let untouched = untouched_reason(pod, ns_labels, k).is_some();
        let cgroup = pod_cgroup(&k.cgroup_root, k.cgroup_driver, pod.qos, &pod.uid);
        if !seen.insert(cgroup.clone()) {
            continue;
        }
        let audit = matches!(
            label(pod, ns_labels, k, AUDIT_LABEL),
            Some("enabled" | "true")
        );
        let mut ips = pod.ips.clone();
        ips.dedup();
        // hostNetwork pods share the node's addresses and links.
        let interface = if untouched {
            None
        } else {
            ips.first().and_then(|ip| iface(*ip))
        };
        out.push(WorkloadConfig {
            cgroup,
            namespace: pod.namespace.clone(),
            name: pod.workload.clone(),
            labels: pod.labels.clone(),
            ip: None,
            ips: if untouched { Vec::new() } else { ips },
            interface,
            audit,
            untouched,
            allow_sockets: Vec::new(),
        });
    }
    out
}

/// Where the pod's cgroup is, or will be: the one that exists (the QoS class
/// the API said first, then the others), else where the kubelet will make it.
pub fn pod_cgroup(
    root: &Path,
    driver: cgroups::Driver,
    qos: Option<Qos>,
    uid: &str,
) -> std::path::PathBuf {
    cgroups::find_pod_cgroup(root, uid, qos)
        .unwrap_or_else(|| cgroups::pod_cgroup(root, driver, qos.unwrap_or(Qos::BestEffort), uid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::cgroups::Driver;

    fn k8s(root: &Path) -> KubernetesConfig {
        KubernetesConfig {
            node_name: "node-a".into(),
            kubeconfig: None,
            cgroup_root: root.to_owned(),
            cgroup_driver: Driver::Systemd,
            mesh_config_map: "istio".into(),
            excluded_namespaces: vec!["kube-system".into()],
            pod_uid: Some("self-uid".into()),
            pod_labels: true,
        }
    }

    fn pod(ns: &str, name: &str, uid: &str) -> PodInfo {
        PodInfo {
            uid: uid.into(),
            namespace: ns.into(),
            name: name.into(),
            workload: name.into(),
            labels: BTreeMap::new(),
            host_network: false,
            qos: Some(Qos::Burstable),
            ips: vec!["198.18.0.2".parse().unwrap()],
            finished: false,
            istio_sidecar: false,
        }
    }

    #[test]
    fn who_is_enforced_and_how() {
        let root = Path::new("/nonexistent/cgroup");
        let k = k8s(root);
        let mut c = Cluster::default();
        let mut add = |p: PodInfo| {
            c.pods.insert(p.uid.clone(), p);
        };
        add(pod("shop", "web", "u-1"));
        let mut host = pod("shop", "node-exporter", "u-2");
        host.host_network = true;
        add(host);
        add(pod("kube-system", "coredns", "u-3"));
        add(pod("egress-system", "egress-abc", "self-uid"));
        let mut out = pod("shop", "legacy", "u-4");
        out.labels.insert(ENFORCE_LABEL.into(), "disabled".into());
        add(out);
        add(pod("quiet", "batch", "u-5"));
        let mut audited = pod("quiet", "cron", "u-6");
        audited.labels.insert(AUDIT_LABEL.into(), "false".into());
        add(audited);
        let mut done = pod("shop", "job", "u-7");
        done.finished = true;
        add(done);
        c.namespaces.insert(
            "quiet".into(),
            BTreeMap::from([(AUDIT_LABEL.to_owned(), "enabled".to_owned())]),
        );
        let w = workloads(&c, &k, &|_| Some("veth-pod".into()));
        let by_name: BTreeMap<&str, &WorkloadConfig> =
            w.iter().map(|w| (w.name.as_str(), w)).collect();
        assert!(!by_name.contains_key("job"), "finished pods have no cgroup");
        assert_eq!(w.len(), 7);
        let web = by_name["web"];
        assert!(!web.untouched && !web.audit);
        assert_eq!(web.interface.as_deref(), Some("veth-pod"));
        assert_eq!(
            web.cgroup,
            root.join("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podu_1.slice")
        );
        for name in ["node-exporter", "coredns", "egress-abc", "legacy"] {
            let w = by_name[name];
            assert!(w.untouched, "{name} must be untouched");
            assert!(w.interface.is_none() && w.ips.is_empty(), "{name}");
        }
        assert!(by_name["batch"].audit, "namespace label");
        assert!(!by_name["cron"].audit, "the pod's label wins");

        // Istio's dataplane: a sidecar pod, an ambient namespace.
        let mut c = Cluster::default();
        let mut envoy = pod("shop", "with-envoy", "u-8");
        envoy.istio_sidecar = true;
        c.pods.insert(envoy.uid.clone(), envoy);
        c.pods
            .insert("u-9".into(), pod("mesh", "ztunnel-client", "u-9"));
        c.namespaces.insert(
            "mesh".into(),
            BTreeMap::from([(AMBIENT_LABEL.to_owned(), "ambient".to_owned())]),
        );
        let w = workloads(&c, &k, &|_| None);
        assert!(w.iter().all(|w| w.untouched), "{w:?}");

        // Pods that may not speak for themselves: only namespace labels count.
        let strict = KubernetesConfig {
            pod_labels: false,
            ..k8s(root)
        };
        let mut c = Cluster::default();
        let mut out = pod("shop", "legacy", "u-4");
        out.labels.insert(ENFORCE_LABEL.into(), "disabled".into());
        out.labels.insert(AUDIT_LABEL.into(), "enabled".into());
        out.istio_sidecar = true;
        c.pods.insert(out.uid.clone(), out);
        let w = workloads(&c, &strict, &|_| None);
        assert!(!w[0].untouched && !w[0].audit, "{w:?}");
    }

    #[test]
    fn a_pod_without_a_class_yet_is_expected_where_the_kubelet_will_put_it() {
        let dir = tempfile_dir();
        let root = dir.as_path();
        let uid = "0a1b2c3d-0000-1111-2222-333344445555";
        // Not there yet: BestEffort is the guess.
        assert_eq!(
            pod_cgroup(root, Driver::Systemd, None, uid),
            cgroups::pod_cgroup(root, Driver::Systemd, Qos::BestEffort, uid)
        );
        // There, under another class than the API said: found.
        let real = cgroups::pod_cgroup(root, Driver::Systemd, Qos::Guaranteed, uid);
        std::fs::create_dir_all(&real).unwrap();
        assert_eq!(
            pod_cgroup(root, Driver::Systemd, Some(Qos::Burstable), uid),
            real
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "egress-pods-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
