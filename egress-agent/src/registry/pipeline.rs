//! The reload pipeline `run` and `explain` share: read the ServiceEntry
//! directory into the store (last good versions kept), then convert, merge and
//! allocate what the store holds into the registry the compile step takes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tracing::warn;

use crate::config::Config;
use crate::istio::validate;
use crate::registry::alloc::{self, Remembered};
use crate::registry::scope::SidecarScope;
use crate::registry::store::{FileCache, LoadReport, Read, Store};
use crate::registry::{self, Service};

/// The ServiceEntry directory could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading ServiceEntries from {}: {source}", path.display())]
pub struct ReadError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// What the compile step needs from the configuration files.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    /// Merged, with automatic VIPs, in Service order.
    pub services: Vec<Arc<Service>>,
    pub sidecars: Vec<SidecarScope>,
}

/// Validation settings from the agent configuration.
pub fn validation_context(config: &Config) -> validate::Context {
    validate::Context {
        auto_allocate: config.istio_compat.auto_allocate,
    }
}

/// Reads the configuration directory into `store` (last good versions kept),
/// with the resources of the API server (`api`, one read per object: the two
/// sources of one pipeline), and builds the registry from what the store holds.
pub fn reload(
    config: &Config,
    cache: &mut FileCache,
    store: &mut Store,
    remembered: &Remembered,
    api: &[Arc<Read>],
) -> Result<(LoadReport, Registry, Remembered), ReadError> {
    let started = Instant::now();
    // In Kubernetes mode the directory is optional.
    let mut read = if config.kubernetes.is_some() && !config.service_entry_dir.exists() {
        Vec::new()
    } else {
        cache
            .load_dir(&config.service_entry_dir, &validation_context(config))
            .map_err(|source| ReadError {
                path: config.service_entry_dir.clone(),
                source,
            })?
    };
    read.extend(api.iter().cloned());
    let read_done = Instant::now();
    let report = store.apply(&read);
    let (registry, memory) = build_registry(config, store, remembered);
    tracing::debug!(
        read_ms = (read_done - started).as_secs_f64() * 1e3,
        build_ms = read_done.elapsed().as_secs_f64() * 1e3,
        "reload phases"
    );
    Ok((report, registry, memory))
}

/// Converts, merges and allocates the store's resources.
pub fn build_registry(
    config: &Config,
    store: &Store,
    remembered: &Remembered,
) -> (Registry, Remembered) {
    let (mut services, warnings) = registry::merge(store.services().cloned().collect());
    for w in warnings {
        warn!(namespace = %w.namespace, host = %w.host, service_entry = %w.se_name, "{}", w.message);
    }
    // In Kubernetes mode every node must give a host the same VIP whatever it
    // saw first: a pure function of the cluster's resources, remembering nothing.
    let none = Remembered::new();
    let remembered = if config.kubernetes.is_some() {
        &none
    } else {
        remembered
    };
    let memory = if config.istio_compat.auto_allocate {
        alloc::allocate(&mut services, &config.vip_ranges, remembered)
    } else {
        Remembered::new()
    };
    let sidecars = store.sidecars().map(|s| s.as_ref().clone()).collect();
    (Registry { services, sidecars }, memory)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::istio::{Documents, parse_file};
    use std::path::Path;

    fn store_of(text: &str) -> Store {
        let mut docs = Documents::default();
        parse_file(Path::new("se.yaml"), text, &mut docs);
        let mut store = Store::default();
        store.load(&docs, &Default::default());
        store
    }

    fn vips(r: &Registry) -> Vec<(String, Vec<std::net::IpAddr>)> {
        let mut v: Vec<_> = r
            .services
            .iter()
            .map(|s| (s.host.clone(), s.auto_vips.clone()))
            .collect();
        v.sort();
        v
    }

    const TWO: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
        metadata: {name: a, namespace: shop, creationTimestamp: '2026-01-01T00:00:00Z'}\n\
        spec: {hosts: [a.example], resolution: DNS, ports: [{number: 443, name: tls, protocol: TLS}]}\n---\n\
        apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
        metadata: {name: b, namespace: shop, creationTimestamp: '2026-01-02T00:00:00Z'}\n\
        spec: {hosts: [b.example], resolution: DNS, ports: [{number: 443, name: tls, protocol: TLS}]}\n";

    #[test]
    fn kubernetes_mode_vips_depend_on_the_cluster_not_on_what_this_node_remembers() {
        let file = Config::parse(Path::new("a.yaml"), "cgroupPath: /x\n").unwrap();
        let k8s = Config::parse(
            Path::new("a.yaml"),
            "kubernetes: {nodeName: n, cgroupRoot: /x, cgroupDriver: systemd}\n",
        )
        .unwrap();
        let store = store_of(TWO);
        // What a node that saw other things first would remember.
        let mut remembered = Remembered::new();
        remembered.insert("shop/a.example".into(), 7);
        let (fresh, _) = build_registry(&k8s, &store, &Remembered::new());
        let (with_memory, _) = build_registry(&k8s, &store, &remembered);
        assert_eq!(vips(&fresh), vips(&with_memory));
        assert!(vips(&fresh).iter().all(|(_, v)| v.len() == 2));
        // The file mode keeps what it remembered (stable across restarts).
        let (file_mode, _) = build_registry(&file, &store, &remembered);
        assert_ne!(vips(&file_mode), vips(&fresh));
        // The same resources in another order (another node's list order).
        let reversed: String = {
            let mut docs: Vec<&str> = TWO.split("---\n").collect();
            docs.reverse();
            docs.join("---\n")
        };
        let (other_order, _) = build_registry(&k8s, &store_of(&reversed), &Remembered::new());
        assert_eq!(vips(&fresh), vips(&other_order));
    }
}
