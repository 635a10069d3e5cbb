//! Where the kubelet puts a pod's cgroup, for both cgroup drivers, without help
//! from the container runtime: from the pod's UID and QoS class.
//!
//! - systemd driver: `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice`
//!   (Burstable, BestEffort), `kubepods.slice/kubepods-pod<uid>.slice`
//!   (Guaranteed), with the UID's `-` written `_` (a `-` in a slice name is a
//!   hierarchy separator);
//! - cgroupfs driver: `kubepods/<qos>/pod<uid>`, Guaranteed pods `kubepods/pod<uid>`.
//!
//! The root is the cgroup2 mount (or where the kubelet's cgroup root is
//! configured to be).

use std::path::{Path, PathBuf};

/// The kubelet's cgroup driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    Systemd,
    Cgroupfs,
}

/// A pod's QoS class (`status.qosClass`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    pub const ALL: [Qos; 3] = [Qos::Guaranteed, Qos::Burstable, Qos::BestEffort];

    /// `status.qosClass` as the API writes it.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Guaranteed" => Some(Self::Guaranteed),
            "Burstable" => Some(Self::Burstable),
            "BestEffort" => Some(Self::BestEffort),
            _ => None,
        }
    }

    /// The name in cgroup paths; none for Guaranteed (directly under the root).
    fn dir(self) -> Option<&'static str> {
        match self {
            Self::Guaranteed => None,
            Self::Burstable => Some("burstable"),
            Self::BestEffort => Some("besteffort"),
        }
    }
}

/// The pod's cgroup under `root`, for `driver` and `qos`.
pub fn pod_cgroup(root: &Path, driver: Driver, qos: Qos, uid: &str) -> PathBuf {
    match driver {
        Driver::Systemd => {
            let uid = uid.replace('-', "_");
            let pods = root.join("kubepods.slice");
            match qos.dir() {
                None => pods.join(format!("kubepods-pod{uid}.slice")),
                Some(q) => pods
                    .join(format!("kubepods-{q}.slice"))
                    .join(format!("kubepods-{q}-pod{uid}.slice")),
            }
        }
        Driver::Cgroupfs => {
            let pods = root.join("kubepods");
            match qos.dir() {
                None => pods.join(format!("pod{uid}")),
                Some(q) => pods.join(q).join(format!("pod{uid}")),
            }
        }
    }
}

/// Where the kubelet puts every pod under `root`: the attach point of
/// Kubernetes mode.
pub fn pods_root(root: &Path, driver: Driver) -> PathBuf {
    match driver {
        Driver::Systemd => root.join("kubepods.slice"),
        Driver::Cgroupfs => root.join("kubepods"),
    }
}

/// The directories pod cgroups are created in (the pods root and its QoS
/// directories), to watch for new pods.
pub fn pod_parents(root: &Path, driver: Driver) -> Vec<PathBuf> {
    let pods = pods_root(root, driver);
    let mut out = vec![pods.clone()];
    for q in [Qos::Burstable, Qos::BestEffort] {
        let dir = q.dir().expect("not Guaranteed");
        out.push(match driver {
            Driver::Systemd => pods.join(format!("kubepods-{dir}.slice")),
            Driver::Cgroupfs => pods.join(dir),
        });
    }
    out
}

/// The driver the kubelet uses under `root`, from the directories it made.
pub fn detect_driver(root: &Path) -> Option<Driver> {
    if root.join("kubepods.slice").is_dir() {
        Some(Driver::Systemd)
    } else if root.join("kubepods").is_dir() {
        Some(Driver::Cgroupfs)
    } else {
        None
    }
}

/// The pod's cgroup if it exists: the QoS class given first (the API's word),
/// then the others (a class the watch has not told yet), under either driver.
pub fn find_pod_cgroup(root: &Path, uid: &str, qos: Option<Qos>) -> Option<PathBuf> {
    let drivers = match detect_driver(root) {
        Some(Driver::Systemd) => [Driver::Systemd, Driver::Cgroupfs],
        _ => [Driver::Cgroupfs, Driver::Systemd],
    };
    let classes = qos
        .into_iter()
        .chain(Qos::ALL.into_iter().filter(|q| Some(*q) != qos));
    let classes: Vec<Qos> = classes.collect();
    drivers.iter().find_map(|d| {
        classes
            .iter()
            .map(|q| pod_cgroup(root, *d, *q, uid))
            .find(|p| p.is_dir())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "6f1c2a3b-4d5e-6f70-8192-a3b4c5d6e7f8";

    #[test]
    fn paths_as_the_kubelet_lays_them_out() {
        let r = Path::new("/sys/fs/cgroup");
        assert_eq!(
            pod_cgroup(r, Driver::Systemd, Qos::Burstable, UID),
            r.join("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6f1c2a3b_4d5e_6f70_8192_a3b4c5d6e7f8.slice")
        );
        assert_eq!(
            pod_cgroup(r, Driver::Systemd, Qos::BestEffort, UID),
            r.join("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod6f1c2a3b_4d5e_6f70_8192_a3b4c5d6e7f8.slice")
        );
        assert_eq!(
            pod_cgroup(r, Driver::Systemd, Qos::Guaranteed, UID),
            r.join("kubepods.slice/kubepods-pod6f1c2a3b_4d5e_6f70_8192_a3b4c5d6e7f8.slice")
        );
        assert_eq!(
            pod_cgroup(r, Driver::Cgroupfs, Qos::Burstable, UID),
            r.join(format!("kubepods/burstable/pod{UID}"))
        );
        assert_eq!(
            pod_cgroup(r, Driver::Cgroupfs, Qos::Guaranteed, UID),
            r.join(format!("kubepods/pod{UID}"))
        );
        assert_eq!(Qos::parse("BestEffort"), Some(Qos::BestEffort));
        assert_eq!(Qos::parse("besteffort"), None);
    }

    #[test]
    fn a_pod_is_found_under_either_driver_whatever_class_was_said() {
        for driver in [Driver::Systemd, Driver::Cgroupfs] {
            let root = tempfile_dir();
            let real = pod_cgroup(&root, driver, Qos::BestEffort, UID);
            std::fs::create_dir_all(&real).unwrap();
            assert_eq!(detect_driver(&root), Some(driver));
            // The class the API says first; a wrong or missing one still finds it.
            assert_eq!(
                find_pod_cgroup(&root, UID, Some(Qos::BestEffort)),
                Some(real.clone())
            );
            assert_eq!(
                find_pod_cgroup(&root, UID, Some(Qos::Guaranteed)),
                Some(real.clone())
            );
            assert_eq!(find_pod_cgroup(&root, UID, None), Some(real));
            assert_eq!(find_pod_cgroup(&root, "another-uid", None), None);
            std::fs::remove_dir_all(&root).unwrap();
        }
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "egress-k8s-cgroups-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
