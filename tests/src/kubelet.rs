//! A node as the kubelet lays it out, for the Kubernetes mode's tests: the
//! systemd driver's cgroup tree (`kubepods.slice`, its QoS slices, one slice
//! per pod, a `cri-containerd-<id>.scope` per container) under a test cgroup,
//! and Pod objects as the API server holds them.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::{Cgroup, Place, cgroup2_root, unique};

/// The node's cgroup root (a test cgroup: the agent's `cgroupRoot`).
pub struct Kubelet {
    pub root: Cgroup,
}

/// A pod's cgroups: its slice and one container scope (where its processes run).
pub struct PodCgroups {
    pub pod: PathBuf,
    pub container: PathBuf,
}

impl Default for Kubelet {
    fn default() -> Self {
        Self::new()
    }
}

impl Kubelet {
    pub fn new() -> Self {
        let root = Cgroup::new(cgroup2_root().join(unique("egress-test-k")));
        for q in ["burstable", "besteffort"] {
            std::fs::create_dir_all(
                root.path
                    .join("kubepods.slice")
                    .join(format!("kubepods-{q}.slice")),
            )
            .unwrap();
        }
        Self { root }
    }

    /// The attach point: every pod is below it.
    pub fn pods_root(&self) -> PathBuf {
        self.root.path.join("kubepods.slice")
    }

    /// Where the kubelet puts the slice of pod `uid` of class `qos`.
    pub fn pod_slice(&self, uid: &str, qos: &str) -> PathBuf {
        let u = uid.replace('-', "_");
        let pods = self.pods_root();
        match qos {
            "Guaranteed" => pods.join(format!("kubepods-pod{u}.slice")),
            q => {
                let q = q.to_ascii_lowercase();
                pods.join(format!("kubepods-{q}.slice"))
                    .join(format!("kubepods-{q}-pod{u}.slice"))
            }
        }
    }

    /// Creates the pod's slice and a container scope in it, as the kubelet and
    /// containerd do when the pod starts.
    pub fn start_pod(&self, uid: &str, qos: &str) -> PodCgroups {
        let pod = self.pod_slice(uid, qos);
        let container = pod.join(format!(
            "cri-containerd-{}.scope",
            &format!("{:x}", crate::now_ms())
        ));
        std::fs::create_dir_all(&container).unwrap();
        PodCgroups { pod, container }
    }

    /// Removes a pod's cgroups (killing what runs there), as when it stops.
    pub fn stop_pod(&self, cg: &PodCgroups) {
        drop(Cgroup {
            path: cg.pod.clone(),
        });
    }
}

impl PodCgroups {
    /// A process of this pod: in its container's cgroup and in `netns`.
    pub fn place(&self, netns: PathBuf) -> Place {
        Place {
            netns,
            cgroup: Some(self.container.clone()),
        }
    }
}

/// A fresh pod UID.
pub fn uid() -> String {
    let n = crate::now_ms();
    let r: u32 = rand_u32();
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        r,
        (n >> 32) as u16,
        (n >> 20) as u16 & 0xfff,
        (n >> 8) as u16 & 0xfff,
        n & 0xffff_ffff_ffff
    )
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom into our buffer.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), 4, 0) };
    u32::from_ne_bytes(b)
}

/// A Pod object of node `node`, running, with `ip` (none for hostNetwork):
/// one argument per field the agent reads.
#[allow(clippy::too_many_arguments)]
pub fn pod(
    ns: &str,
    name: &str,
    uid: &str,
    node: &str,
    ip: &str,
    qos: &str,
    labels: Value,
    host_network: bool,
) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": uid, "labels": labels},
        "spec": {"nodeName": node, "hostNetwork": host_network,
                 "containers": [{"name": "app", "image": "app:1"}]},
        "status": {"phase": "Running", "qosClass": qos, "podIP": ip,
                   "podIPs": if ip.is_empty() { json!([]) } else { json!([{"ip": ip}]) }}
    })
}

/// A Namespace object.
pub fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": labels}})
}

/// A YAML resource (as the tests write ServiceEntries) as the JSON object the
/// API server stores.
pub fn object(yaml: &str) -> Value {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("YAML {yaml:?}: {e}"))
}
