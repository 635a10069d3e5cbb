//! `egress-agent run`: read the configuration and the registry, load the programs
//! and adopt what an earlier agent pinned (maps with their content, links), bring
//! the maps to the registry as a diff, switch the links to the new programs, then
//! keep the kernel in step with the files (hot reload, as a diff) and the
//! workloads. SIGTERM/SIGINT leave everything attached (fail static) unless
//! `onExit: uninstall`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use std::collections::BTreeSet;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::config::{Config, OnExit};
use crate::dataplane::compile::{Ids, dns_names};
use crate::dataplane::loader::{self, LoadOptions};
use crate::dataplane::sync::Syncer;
use crate::dataplane::workloads::{self, Workload};
use crate::dns::DnsTables;
use crate::dns::resolver::{HickoryResolve, Resolved, Tracker};
use crate::istio::Level;
use crate::registry::alloc::{self, Remembered};
use crate::registry::store::{FileCache, LoadReport, Store};
use crate::telemetry::catalog::Catalog;
use crate::telemetry::metrics::{self, Metrics, StatsPoller};

use crate::registry::pipeline::{Registry, reload};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Preflight(#[from] crate::dataplane::preflight::PreflightError),
    #[error(transparent)]
    Load(#[from] loader::LoadError),
    #[error("applying the registry to the kernel: {0}")]
    Sync(#[from] crate::dataplane::sync::SyncError),
    #[error(transparent)]
    Registry(#[from] crate::registry::pipeline::ReadError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn report(load: &LoadReport, metrics: &Metrics) {
    for f in &load.findings {
        let kind = f.kind.as_deref().unwrap_or("");
        match f.level {
            Level::Error => {
                error!("{f}");
                metrics
                    .config
                    .rejected
                    .with_label_values(&[kind, &f.namespace, &f.name])
                    .inc();
            }
            Level::Warning => {
                warn!("{f}");
                metrics
                    .config
                    .warnings
                    .with_label_values(&[kind, &f.namespace, &f.name])
                    .inc();
            }
            Level::Note => info!("{f}"),
        }
    }
    for (key, _, _) in &load.stale {
        let _ = key;
    }
    for (kind, ns, name) in &load.stale {
        warn!(%kind, namespace = %ns, name = %name, "resource is invalid now: its last good version stays in force");
    }
    let c = &load.counts;
    metrics
        .config
        .resources
        .with_label_values(&["loaded"])
        .set(c.loaded as i64);
    metrics
        .config
        .resources
        .with_label_values(&["rejected"])
        .set(c.rejected as i64);
    metrics
        .config
        .resources
        .with_label_values(&["stale"])
        .set(c.stale as i64);
    info!(
        loaded = c.loaded,
        rejected = c.rejected,
        stale = c.stale,
        "configuration read"
    );
}

/// A cheap fingerprint of the YAML files (names, sizes, mtimes): a change means
/// a reload is due even if a file-watch event was missed.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64, Option<SystemTime>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => walk(&path, out),
                Ok(m) => out.push((path, m.len(), m.modified().ok())),
                Err(_) => {}
            }
        }
    }
    walk(dir, &mut out);
    out.sort();
    out
}

/// Kubernetes mode: the API server's snapshot and what the agent made of it.
struct Kube {
    shared: crate::k8s::watch::Shared,
    /// The mesh ConfigMap's settings, last good.
    mesh: Option<crate::k8s::watch::Mesh>,
    /// The configuration as the file says (`State::config` is it with the mesh
    /// settings over it).
    file_config: Config,
    /// Initial lists applied: `/readyz` answers ready.
    ready: bool,
}

/// The long-lived state of a running agent.
struct State {
    config: Config,
    kube: Option<Kube>,
    cache: FileCache,
    store: Store,
    registry: Registry,
    remembered: Remembered,
    workloads: Vec<Workload>,
    ids: Ids,
    /// The one owner of the loaded programs and every map.
    owner: crate::dataplane::owner::Owner,
    catalog: Arc<RwLock<Catalog>>,
    /// What the registry compiled to last, and the generation of its inputs
    /// (services, Sidecars, configuration, resolved addresses): a sync that
    /// only workloads changed reuses it.
    registry_cache: crate::dataplane::compile::RegistryCache,
    registry_gen: u64,
    /// The workloads of the last sync.
    synced_workloads: Vec<Workload>,
    /// Tells the writer of the DNS tables' copy (Kubernetes mode) they changed.
    dns_tables_dirty: Option<std::sync::mpsc::SyncSender<()>>,
    /// Tells the writer of the catalog file (for `inspect`) it changed.
    catalog_dirty: std::sync::mpsc::SyncSender<()>,
    metrics: Arc<Metrics>,
    /// Answers of DNS endpoints, kept current by the resolver task.
    resolved: Arc<RwLock<Resolved>>,
    /// The names the resolver follows.
    names: watch::Sender<BTreeSet<String>>,
    /// The DNS proxy's tables.
    dns_tables: watch::Sender<Arc<DnsTables>>,
    /// Ids assigned when they were last saved.
    ids_saved: usize,
    /// The access log.
    sink: Arc<std::sync::Mutex<crate::telemetry::events::Sink>>,
    /// The DNS proxy's settings (replaced by a reload).
    dns_settings: Option<watch::Sender<Arc<crate::dns::proxy::Settings>>>,
}

impl State {
    /// Compiles the current registry and workloads and applies the diff. In
    /// Kubernetes mode, not before the API server's initial lists are in: until
    /// then the maps keep what they hold (an adopted last good state).
    async fn sync(&mut self) -> Result<(), AgentError> {
        if self.kube.as_ref().is_some_and(|k| !k.ready) {
            return Ok(());
        }
        let started = Instant::now();
        let resolved = self.resolved.read().expect("resolved lock").clone();
        let desired = crate::dataplane::compile::compile_cached(
            &self.config,
            &self.registry.services,
            &self.registry.sidecars,
            &self.workloads,
            &resolved,
            &mut self.ids,
            &mut self.registry_cache,
            Some(self.registry_gen),
        );
        let compiled = started.elapsed();
        let dns_changed = self.dns_tables.send_if_modified(|t| {
            if **t == desired.dns_tables {
                false
            } else {
                *t = Arc::new(desired.dns_tables.clone());
                true
            }
        });
        if dns_changed && let Some(tx) = &self.dns_tables_dirty {
            let _ = tx.try_send(());
        }
        if self.ids.assigned() != self.ids_saved {
            match save_ids(&self.config.ids_file(), &self.ids) {
                Ok(()) => self.ids_saved = self.ids.assigned(),
                Err(e) => {
                    warn!(file = %self.config.ids_file().display(), "cannot save the id assignments: {e}")
                }
            }
        }
        let catalog = self.ids.catalog();
        let old_catalog =
            std::mem::replace(&mut *self.catalog.write().expect("catalog lock"), catalog);
        // Written apart once running: a large registry's catalog is not on a
        // pod's path. Before ready, here: `inspect` finds it at once.
        if self
            .metrics
            .ready
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            let _ = self.catalog_dirty.try_send(());
        } else if let Err(e) = self
            .catalog
            .read()
            .expect("catalog lock")
            .write(&self.config.catalog_file())
        {
            warn!(file = %self.config.catalog_file().display(), "cannot write the catalog for inspect: {e}");
        }
        let prepared = started.elapsed();
        // Workloads gone since the last sync whose cgroup is gone as well.
        let gone: Vec<u64> = self
            .synced_workloads
            .iter()
            .filter(|w| {
                !self.workloads.iter().any(|n| n.cgroup_id == w.cgroup_id)
                    && workloads::cgroup_id(&w.config.cgroup).ok() != Some(w.cgroup_id)
            })
            .map(|w| w.cgroup_id)
            .collect();
        let result = self
            .owner
            .apply(
                desired,
                self.workloads.clone(),
                self.config.revoke_established,
                gone,
            )
            .await;
        self.synced_workloads = self.workloads.clone();
        let elapsed = started.elapsed();
        self.metrics
            .dataplane
            .sync_duration_us
            .set(elapsed.as_micros() as i64);
        match result {
            Ok(applied) => {
                for (map, n) in &applied.sizes {
                    self.metrics
                        .dataplane
                        .map_entries
                        .with_label_values(&[map])
                        .set(*n as i64);
                }
                self.metrics
                    .dataplane
                    .syncs
                    .with_label_values(&["ok"])
                    .inc();
                let st = applied.stats;
                if st.written + st.deleted > 0 {
                    info!(
                        written = st.written,
                        deleted = st.deleted,
                        micros = elapsed.as_micros() as u64,
                        compile_us = compiled.as_micros() as u64,
                        files_us = (prepared - compiled).as_micros() as u64,
                        apply_us = (elapsed - prepared).as_micros() as u64,
                        "dataplane synced"
                    );
                }
                self.log_revoked(applied, &old_catalog);
                Ok(())
            }
            Err(e) => {
                self.metrics
                    .dataplane
                    .syncs
                    .with_label_values(&["error"])
                    .inc();
                Err(e.into())
            }
        }
    }

    /// Logs and counts the connections the owner revoked in one apply.
    fn log_revoked(&self, applied: crate::dataplane::owner::Applied, catalog: &Catalog) {
        for (netns, why) in &applied.revoke_failed {
            warn!(netns = %netns.display(), "cannot revoke connections in this network namespace: {why}");
        }
        let (revoked, Some(old)) = (&applied.revoked, &applied.revoked_from) else {
            return;
        };
        if revoked.is_empty() {
            return;
        }
        let now: chrono::DateTime<chrono::Utc> = SystemTime::now().into();
        let time = now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let mut sink = self.sink.lock().expect("sink lock");
        for r in revoked {
            let workload = old
                .workloads
                .get(&r.workload_key)
                .and_then(|w| catalog.workload(w.workload_id));
            let (namespace, name) = workload
                .map(|w| (w.namespace.clone(), w.name.clone()))
                .unwrap_or_else(|| ("unknown".into(), "unknown".into()));
            let host = catalog.service(r.service_id).map(|s| s.host.clone());
            let record = crate::telemetry::events::Record {
                time: time.clone(),
                verdict: "revoked",
                reason: "view_changed",
                pid: 0,
                process: String::new(),
                cgroup_id: r.cgroup_id,
                namespace: namespace.clone(),
                workload: name.clone(),
                destination: Some(r.dest),
                port: Some(r.port),
                transport: if r.proto == egress_common::PROTO_UDP {
                    "udp"
                } else {
                    "tcp"
                },
                layer: "established",
                host: host.clone(),
                matched: "",
            };
            if let Err(e) = sink.write(&record) {
                error!("cannot write the access log: {e}");
            }
            self.metrics
                .dataplane
                .revoked
                .with_label_values(&[&namespace, &name, host.as_deref().unwrap_or("")])
                .inc();
        }
        info!(revoked = revoked.len(), "established connections revoked");
    }

    /// Re-reads the agent's configuration file and applies what changed (the
    /// caller then re-reads the registry and syncs: one diff). A file that does
    /// not parse or validate keeps the running configuration.
    fn reload_config(&mut self) -> bool {
        let new = match Config::load(&self.config.path) {
            Ok(c) => c,
            Err(e) => {
                error!("configuration reload failed, the running configuration stays: {e}");
                self.metrics
                    .config
                    .reloads
                    .with_label_values(&["error"])
                    .inc();
                return false;
            }
        };
        let running = self.kube.as_ref().map_or(&self.config, |k| &k.file_config);
        let (merged, pending) = running.reloaded(new);
        for field in pending {
            warn!(
                field,
                "changed in the configuration file: takes effect at the next start"
            );
        }
        if let (Some(tx), Some(dns)) = (&self.dns_settings, &merged.dns) {
            tx.send_if_modified(|s| {
                let changed = **s != dns.proxy;
                if changed {
                    *s = Arc::new(dns.proxy.clone());
                }
                changed
            });
        }
        self.config = merged;
        self.registry_gen += 1;
        if let Some(kube) = &mut self.kube {
            kube.file_config = self.config.clone();
            self.apply_mesh();
        }
        self.metrics.config.reloads.with_label_values(&["ok"]).inc();
        true
    }

    /// Re-reads the configuration directory (and takes the API server's
    /// resources); keeps the old registry on failure.
    fn reload(&mut self) -> bool {
        let api = self.kube.as_ref().map_or_else(Vec::new, |k| {
            k.shared.cluster.lock().expect("cluster lock").istio_reads()
        });
        match reload(
            &self.config,
            &mut self.cache,
            &mut self.store,
            &self.remembered,
            &api,
        ) {
            Ok((load, registry, memory)) => {
                report(&load, &self.metrics);
                self.registry = registry;
                self.registry_gen += 1;
                self.names.send_if_modified(|n| {
                    let new = dns_names(&self.registry.services);
                    let changed = *n != new;
                    *n = new;
                    changed
                });
                if memory != self.remembered {
                    if let Err(e) = alloc::save_remembered(&self.config.vip_state_file(), &memory) {
                        warn!(file = %self.config.vip_state_file().display(), "cannot save VIP allocations: {e}");
                    }
                    self.remembered = memory;
                }
                true
            }
            Err(e) => {
                error!("reload failed, keeping the current registry: {e}");
                false
            }
        }
    }

    /// Every workload: the configuration's, and in Kubernetes mode this node's
    /// pods and the agent's own cgroup (never enforced).
    fn workload_configs(&self) -> Vec<crate::config::WorkloadConfig> {
        let mut out = self.config.workloads.clone();
        if let (Some(kube), Some(k)) = (&self.kube, &self.config.kubernetes) {
            let cluster = kube.shared.cluster.lock().expect("cluster lock");
            let pods =
                crate::k8s::pods::workloads(&cluster, k, &crate::dataplane::netlink::pod_interface);
            drop(cluster);
            let (mut enforced, mut untouched) = (0, 0);
            for w in &pods {
                if w.untouched {
                    untouched += 1;
                } else {
                    enforced += 1;
                }
            }
            let gauge = &self.metrics.kubernetes.pods;
            gauge.with_label_values(&["enforced"]).set(enforced);
            gauge.with_label_values(&["untouched"]).set(untouched);
            out.extend(pods);
        }
        if self.config.kubernetes.is_some() {
            out.extend(own_workloads(&self.config));
        }
        // One entry per cgroup: the first (the configuration's) wins.
        let mut seen = BTreeSet::new();
        out.retain(|w| seen.insert(w.cgroup.clone()));
        out
    }

    /// The workload interfaces the interface line attaches to.
    fn interfaces(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .workload_configs()
            .into_iter()
            .filter_map(|w| w.interface)
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Puts the mesh ConfigMap's settings over the file's configuration.
    fn apply_mesh(&mut self) {
        let Some(kube) = &self.kube else {
            return;
        };
        let mut c = kube.file_config.clone();
        if let Some(m) = &kube.mesh {
            m.apply_to(&mut c);
        }
        self.config = c;
        self.registry_gen += 1;
    }

    /// Reads the mesh ConfigMap's `data.mesh` again; one that does not read
    /// keeps the last good settings. True when they changed.
    fn reread_mesh(&mut self) -> bool {
        let Some(kube) = &mut self.kube else {
            return false;
        };
        let text = kube
            .shared
            .cluster
            .lock()
            .expect("cluster lock")
            .mesh_text
            .values()
            .next()
            .cloned();
        let mesh = match text {
            None => None,
            Some(t) => match crate::k8s::watch::Mesh::parse(&t) {
                Ok(m) => Some(m),
                Err(e) => {
                    error!(
                        "the mesh ConfigMap's data.mesh does not read, the last good settings stay: {e}"
                    );
                    return false;
                }
            },
        };
        if mesh == kube.mesh {
            return false;
        }
        info!(?mesh, "mesh settings from the ConfigMap");
        kube.mesh = mesh;
        self.apply_mesh();
        true
    }

    /// Re-resolves the workload cgroups (they may appear or go at any time).
    fn refresh_workloads(&mut self) -> bool {
        let configs = self.workload_configs();
        let (ok, errors) = workloads::resolve(&configs);
        if self.kube.is_some() {
            self.metrics
                .kubernetes
                .pods
                .with_label_values(&["pending"])
                .set(errors.len() as i64);
        }
        let changed = ok != self.workloads;
        if changed {
            for e in &errors {
                warn!("{e}; not enforced until it exists");
            }
            self.workloads = ok;
        }
        changed
    }

    /// Applies what the API server's watches told, as one diff. The first time
    /// every watch has listed, everything is taken (the agent is ready then);
    /// before that, nothing is. True when something was synced.
    async fn apply_kube(&mut self, changes: &BTreeSet<crate::k8s::watch::Changed>) -> bool {
        use crate::k8s::watch::Changed;
        let Some(kube) = &mut self.kube else {
            return false;
        };
        let mut first = false;
        if !kube.ready {
            if !kube
                .shared
                .cluster
                .lock()
                .expect("cluster lock")
                .initial_lists_done()
            {
                return false;
            }
            kube.ready = true;
            first = true;
        }
        let mesh = (first || changes.contains(&Changed::Mesh)) && self.reread_mesh();
        let registry = first || mesh || changes.contains(&Changed::Registry);
        if registry {
            self.reload();
        }
        let workloads = self.refresh_workloads();
        if !(first || mesh || registry || workloads) {
            return false;
        }
        if let Err(e) = self.sync().await {
            error!("sync failed, will retry: {e}");
        }
        true
    }

    fn log_enforcement(&self) {
        info!(
            policy = self.config.outbound.label(),
            cgroup = %self.config.cgroup_path.display(),
            services = self.registry.services.len(),
            sidecars = self.registry.sidecars.len(),
            workloads = self.workloads.len(),
            "enforcing"
        );
        // A large registry is summarised: its first services only.
        const LISTED: usize = 50;
        if self.registry.services.len() > LISTED {
            info!(
                listed = LISTED,
                total = self.registry.services.len(),
                "listing the first services only"
            );
        }
        for s in self.registry.services.iter().take(LISTED) {
            let list = |v: &mut dyn Iterator<Item = String>| v.collect::<Vec<_>>().join(",");
            let ports: Vec<String> = s
                .ports
                .iter()
                .map(|p| format!("{}/{}", p.number, p.protocol.transport().as_str()))
                .collect();
            info!(
                namespace = %s.namespace,
                host = %s.host,
                resolution = s.resolution.as_str(),
                vips = %list(&mut s.effective_vips().map(ToString::to_string)),
                cidrs = %list(&mut s.cidrs.iter().map(ToString::to_string)),
                ports = %ports.join(","),
                endpoints = s.endpoints.len(),
                "service"
            );
        }
        for w in &self.workloads {
            info!(
                namespace = %w.config.namespace,
                name = %w.config.name,
                cgroup = %w.config.cgroup.display(),
                cgroup_id = w.cgroup_id,
                "workload"
            );
        }
    }
}

/// The agent's own cgroups in Kubernetes mode, never enforced: its pod's (from
/// `POD_UID`) and the one it runs in (when no cgroup namespace hides it), so it
/// is known, untouched, from its first start on.
fn own_workloads(config: &Config) -> Vec<crate::config::WorkloadConfig> {
    let Some(k) = &config.kubernetes else {
        return Vec::new();
    };
    let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "egress-agent".into());
    let name = std::env::var("POD_NAME").unwrap_or_else(|_| "egress-agent".into());
    let mut cgroups = Vec::new();
    if let Some(uid) = &k.pod_uid {
        cgroups.push(crate::k8s::pods::pod_cgroup(
            &k.cgroup_root,
            k.cgroup_driver,
            None,
            uid,
        ));
    }
    if let (Ok(text), Some(mount)) = (
        std::fs::read_to_string("/proc/self/cgroup"),
        crate::config::cgroup2_mount(),
    ) && let Some(rel) = text.lines().find_map(|l| l.strip_prefix("0::/"))
        && !rel.is_empty()
    {
        let own = mount.join(rel);
        if own.starts_with(&config.cgroup_path) {
            cgroups.push(own);
        }
    }
    cgroups
        .into_iter()
        .map(|cgroup| crate::config::WorkloadConfig {
            cgroup,
            namespace: namespace.clone(),
            name: name.clone(),
            labels: Default::default(),
            ip: None,
            ips: Vec::new(),
            interface: None,
            audit: false,
            untouched: true,
            allow_sockets: Vec::new(),
        })
        .collect()
}

/// Waits until every watch has listed once (logging while the API server does
/// not answer), then takes what they hold. An error only for a signal: the
/// agent stops, having enforced nothing.
async fn wait_for_lists(
    state: &mut State,
    rx: &mut Option<mpsc::UnboundedReceiver<crate::k8s::watch::Changed>>,
    sigterm: &mut tokio::signal::unix::Signal,
    sigint: &mut tokio::signal::unix::Signal,
) -> Result<(), AgentError> {
    info!("nothing pinned: waiting for the API server's initial lists before enforcing");
    let since = Instant::now();
    let mut every = tokio::time::interval(Duration::from_secs(10));
    every.tick().await;
    loop {
        let done = state.kube.as_ref().is_some_and(|k| {
            k.shared
                .cluster
                .lock()
                .expect("cluster lock")
                .initial_lists_done()
        });
        if done {
            break;
        }
        tokio::select! {
            _ = kube_change(rx) => {}
            _ = every.tick() => {
                warn!(waited_s = since.elapsed().as_secs(), "the API server's initial lists are not in yet; nothing is enforced until they are");
            }
            _ = sigterm.recv() => return Err(AgentError::Io(std::io::Error::other("SIGTERM before the initial lists"))),
            _ = sigint.recv() => return Err(AgentError::Io(std::io::Error::other("SIGINT before the initial lists"))),
        }
    }
    if let Some(k) = &mut state.kube {
        k.ready = true;
    }
    state.reread_mesh();
    state.reload();
    info!(
        waited_ms = since.elapsed().as_millis() as u64,
        "the API server's initial lists are in"
    );
    Ok(())
}

/// The next change the API server's watches told, or never (file mode).
async fn kube_change(
    rx: &mut Option<mpsc::UnboundedReceiver<crate::k8s::watch::Changed>>,
) -> Option<crate::k8s::watch::Changed> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Starts the thread that writes the catalog file for `inspect` each time it
/// is told the catalog changed (several changes at once: one write).
fn catalog_writer(catalog: Arc<RwLock<Catalog>>, file: PathBuf) -> std::sync::mpsc::SyncSender<()> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
    std::thread::Builder::new()
        .name("catalog-writer".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                let written = catalog.read().expect("catalog lock").write(&file);
                if let Err(e) = written {
                    warn!(file = %file.display(), "cannot write the catalog for inspect: {e}");
                }
            }
        })
        .expect("spawn the catalog writer");
    tx
}

/// Starts the thread that keeps a copy of the DNS proxy's tables in `file`,
/// written each time it is told they changed (several changes: one write).
fn dns_tables_writer(
    tables: watch::Receiver<Arc<DnsTables>>,
    file: PathBuf,
) -> std::sync::mpsc::SyncSender<()> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
    std::thread::Builder::new()
        .name("dns-tables-writer".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                let t = tables.borrow().clone();
                let written = (|| {
                    if let Some(dir) = file.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    let tmp = file.with_extension("json.tmp");
                    std::fs::write(
                        &tmp,
                        serde_json::to_vec(&*t).map_err(std::io::Error::other)?,
                    )?;
                    std::fs::rename(tmp, &file)
                })();
                if let Err(e) = written {
                    warn!(file = %file.display(), "cannot keep a copy of the DNS tables: {e}");
                }
            }
        })
        .expect("spawn the DNS tables writer");
    tx
}

/// Saves the id assignments atomically.
fn save_ids(path: &Path, ids: &Ids) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    std::fs::write(
        &tmp,
        serde_json::to_vec(&ids.saved()).expect("serialisable"),
    )?;
    std::fs::rename(tmp, path)
}

/// The saved id assignments, if they are usable.
fn load_ids(path: &Path) -> Ids {
    let saved: Option<crate::dataplane::compile::SavedIds> = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    match saved {
        Some(s) if s.is_dense() => Ids::restore(s),
        Some(_) => {
            warn!(file = %path.display(), "id assignments not dense: starting afresh");
            Ids::default()
        }
        None => Ids::default(),
    }
}

/// Gives the heap pages freed by a reload back to the system: reading and
/// compiling a large registry leaves many behind.
fn release_memory() {
    // SAFETY: malloc_trim only releases free memory of the heap.
    unsafe { libc::malloc_trim(0) };
}

/// Keeps the interface line on the workload interfaces; says once which ones
/// cannot be attached (yet), and when they are.
async fn sync_tc(
    owner: &crate::dataplane::owner::Owner,
    interfaces: &[String],
    metrics: &Metrics,
    failed_before: Vec<String>,
) -> Vec<String> {
    let (failed, attached) = owner.sync_tc(interfaces.to_vec()).await;
    for (name, why) in &failed {
        if !failed_before.contains(name) {
            warn!(interface = %name, "traffic counters not attached: {why}; retrying every second");
        }
    }
    let names: Vec<String> = failed.into_iter().map(|(n, _)| n).collect();
    for name in &failed_before {
        if !names.contains(name) && interfaces.contains(name) {
            info!(interface = %name, "traffic counters attached");
        }
    }
    metrics.dataplane.interfaces.set(attached as i64);
    names
}

/// Watches the configuration directory; each change sends a unit.
fn watch(dir: &Path) -> Option<(notify::RecommendedWatcher, tokio::sync::mpsc::Receiver<()>)> {
    use notify::Watcher;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| warn!("cannot watch files ({e}); polling every second instead"))
    .ok()?;
    watcher
        .watch(dir, notify::RecursiveMode::Recursive)
        .map_err(
            |e| warn!(dir = %dir.display(), "cannot watch ({e}); polling every second instead"),
        )
        .ok()?;
    Some((watcher, rx))
}

/// Watches the agent's configuration file (through its directory: editors and
/// Kubernetes ConfigMaps replace the file rather than write it).
fn watch_file(
    path: &Path,
) -> Option<(notify::RecommendedWatcher, tokio::sync::mpsc::Receiver<()>)> {
    use notify::Watcher;
    let name = path.file_name()?.to_owned();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(e) = res
            && !e.kind.is_access()
            && e.paths
                .iter()
                .any(|p| p.file_name() == Some(&name) || p.ends_with("..data"))
        {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| warn!("cannot watch the configuration file ({e}); SIGHUP reloads it"))
    .ok()?;
    watcher
        .watch(dir, notify::RecursiveMode::NonRecursive)
        .map_err(
            |e| warn!(dir = %dir.display(), "cannot watch ({e}); SIGHUP reloads the configuration"),
        )
        .ok()?;
    Some((watcher, rx))
}

/// Watches the directories the workload cgroups live in: a workload cgroup that is
/// created or re-created (a new cgroup id, as on every container start) is known
/// to the kernel within milliseconds of its creation, not at the next poll. Until
/// then the unknown-workload default holds it (never untouched).
fn watch_cgroups(
    config: &Config,
) -> Option<(notify::RecommendedWatcher, tokio::sync::mpsc::Receiver<()>)> {
    use notify::Watcher;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok_and(|e| e.kind.is_create() || e.kind.is_remove()) {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| warn!("cannot watch cgroups ({e}); polling every second instead"))
    .ok()?;
    let mut parents: BTreeSet<PathBuf> = config
        .workloads
        .iter()
        .filter_map(|w| w.cgroup.parent().map(Path::to_path_buf))
        .collect();
    // Kubernetes: where the kubelet makes pod cgroups.
    if let Some(k) = &config.kubernetes {
        parents.extend(crate::k8s::cgroups::pod_parents(
            &k.cgroup_root,
            k.cgroup_driver,
        ));
    }
    for dir in parents {
        if let Err(e) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
            warn!(dir = %dir.display(), "cannot watch for new workload cgroups ({e}); polling every second");
        }
    }
    Some((watcher, rx))
}

/// Ends enforcement of the instance `config` names: detaches every pinned
/// link, removes the pins and the instance's run files. Returns the number of
/// links detached.
pub fn uninstall(config: &Config) -> Result<usize, AgentError> {
    let detached = loader::uninstall(&config.pin_path())?;
    let _ = std::fs::remove_file(config.catalog_file());
    let _ = std::fs::remove_file(config.pid_file());
    let _ = std::fs::remove_dir(config.run_dir.join(&config.instance));
    // The run directory too, when no other instance uses it.
    let _ = std::fs::remove_dir(&config.run_dir);
    Ok(detached)
}

/// The pid of the running agent of this instance, from its pid file, if that
/// process is alive and is an egress-agent.
pub fn running_pid(config: &Config) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(config.pid_file())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    comm.trim().starts_with("egress-agent").then_some(pid)
}

/// Raises the soft limit of open descriptors to the hard limit: the DNS proxy
/// holds one per TCP client and per query in flight.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), AgentError> {
    raise_nofile();
    crate::dataplane::preflight::check(&config.cgroup_path)?;
    if Some(config.cgroup_path.as_path()) == crate::config::cgroup2_mount().as_deref() {
        warn!(
            cgroup = %config.cgroup_path.display(),
            "attaching at the root of the cgroup2 hierarchy: every socket on the machine passes the hooks"
        );
    }
    let mut sigterm = signal(SignalKind::terminate())?;
    if let Some(dir) = config.pid_file().parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(config.pid_file(), format!("{}\n", std::process::id()))?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;

    let metrics = Metrics::new();
    let mut tasks = tokio::task::JoinSet::new();
    // Kubernetes mode: the watches start now; the API server may not answer yet.
    let (mut kube, mut kube_rx) = (None, None);
    if let Some(k) = &config.kubernetes {
        let client = crate::k8s::watch::client(k)
            .await
            .map_err(|e| AgentError::Io(std::io::Error::other(e)))?;
        let (shared, rx) = crate::k8s::watch::start(
            client,
            k,
            config.root_namespace.clone(),
            crate::registry::pipeline::validation_context(&config),
            metrics.clone(),
            &mut tasks,
        );
        info!(node = %k.node_name, cgroups = %config.cgroup_path.display(), "Kubernetes mode: watching the API server");
        kube = Some(Kube {
            shared,
            mesh: None,
            file_config: config.clone(),
            ready: false,
        });
        kube_rx = Some(rx);
    }
    // Served from the start: /healthz answers while the agent waits for the
    // API server (a first start), /readyz once it enforces what it should.
    if let Some(addr) = config.metrics_address {
        let m = metrics.clone();
        tasks.spawn(async move {
            if let Err(e) = metrics::serve(addr, m).await {
                error!(%addr, "metrics server stopped: {e}");
            }
        });
        info!(%addr, "serving /metrics, /healthz, /readyz");
    }
    let mut store = Store::default();
    let mut cache = FileCache::default();
    let remembered = alloc::load_remembered(&config.vip_state_file());
    let (load, registry, memory) = reload(&config, &mut cache, &mut store, &remembered, &[])?;
    release_memory();
    report(&load, &metrics);
    if memory != remembered
        && let Err(e) = alloc::save_remembered(&config.vip_state_file(), &memory)
    {
        warn!(file = %config.vip_state_file().display(), "cannot save VIP allocations: {e}");
    }

    let interval_ns = 1_000_000_000 / u64::from(config.access_log.rate_per_second);
    let sink = Arc::new(std::sync::Mutex::new(crate::telemetry::events::Sink::open(
        config.access_log.path.as_deref(),
    )?));
    let object = match std::env::var_os("EGRESS_BPF_OBJECT") {
        Some(path) => Some(std::fs::read(&path).map_err(|e| {
            AgentError::Io(std::io::Error::other(format!(
                "EGRESS_BPF_OBJECT {}: {e}",
                PathBuf::from(&path).display()
            )))
        })?),
        None => None,
    };
    let (loaded, mut maps, telemetry) = loader::load(LoadOptions {
        fail_open: config.fail_open,
        event_interval_ns: interval_ns,
        event_burst_ns: interval_ns * u64::from(config.access_log.burst),
        pin_path: config.pin_path(),
        object,
        dns_queries_per_second: config
            .dns
            .as_ref()
            .map_or(0, |d| d.proxy.queries_per_second),
    })?;
    // What an earlier agent left enforcing: the sync below is a diff against it.
    let mut kernel = maps.read()?;
    if !loaded.adoption.adopted_maps.is_empty() {
        // An adopted state holds every cgroup it does not know to the default,
        // this agent's new pod among them: known and untouched before anything.
        let own: Vec<u64> = own_workloads(&config)
            .iter()
            .filter_map(|w| workloads::cgroup_id(&w.cgroup).ok())
            .collect();
        for (id, v) in maps.put_untouched(&own)? {
            kernel.workloads.insert(id, v);
        }
    }
    let adopted_entries = kernel.entries();
    let syncer = Syncer::adopt(kernel);
    let adopted = !loaded.adoption.adopted_maps.is_empty();
    let ids = if loaded.adoption.adopted_maps.is_empty() {
        Ids::default()
    } else {
        load_ids(&config.ids_file())
    };
    let catalog = Arc::new(RwLock::new(Catalog::default()));
    let refuses_packet_sockets = loaded.refuses_packet_sockets();
    let revoker = if config.revoke_established {
        match crate::dataplane::revoke::Revoker::new(&config.pin_path(), &config.proc_path) {
            Ok(r) => Some(r),
            Err(e) => {
                warn!(
                    "cannot revoke established connections ({e}): this needs bpf_sock_destroy \
                     and socket iterators (kernel 6.5 or later); a connection opened while its \
                     destination was allowed runs until it closes"
                );
                None
            }
        }
    } else {
        None
    };
    let events = telemetry.events;
    // From here on one thread holds the programs and every map.
    let owner = crate::dataplane::owner::Owner::start(
        crate::dataplane::owner::Parts {
            loaded,
            maps,
            syncer,
            learned: telemetry.learned,
            poller: StatsPoller::new(
                telemetry.stats,
                telemetry.counters,
                telemetry.traffic,
                telemetry.rate,
            ),
            revoker,
        },
        metrics.clone(),
        catalog.clone(),
    );

    // Resolve DNS endpoints once before the first sync, so their VIPs work from
    // the first connect(); the resolver task keeps them current from then on.
    let resolver = Arc::new(
        HickoryResolve::new(&config.resolver.upstream, config.resolver.timeout)
            .map_err(|e| AgentError::Io(std::io::Error::other(format!("resolver: {e}"))))?,
    );
    let mut tracker = Tracker::new(config.resolver.settings);
    let names = dns_names(&registry.services);
    tracker.set_names(&names, Instant::now());
    crate::dns::resolver::refresh(resolver.as_ref(), &mut tracker, &metrics).await;
    let resolved = Arc::new(RwLock::new(tracker.resolved()));
    metrics
        .dns
        .resolved_names
        .set(tracker.resolved().len() as i64);
    let (names_tx, names_rx) = watch::channel(names);
    // Kubernetes mode keeps a copy of what the DNS proxy answers: an agent
    // that adopts the pinned state while the API server is away answers as
    // the last one did until its own first sync (not REFUSED to every pod).
    let dns_copy = config
        .state_dir
        .join(&config.instance)
        .join("dns-tables.json");
    let initial = if config.kubernetes.is_some() && adopted {
        std::fs::read(&dns_copy)
            .ok()
            .and_then(|b| serde_json::from_slice::<DnsTables>(&b).ok())
            .inspect(|t| {
                info!(
                    clients = t.clients.len(),
                    views = t.views.len(),
                    "DNS proxy: answering from the last agent's tables until the first sync"
                )
            })
            .unwrap_or_default()
    } else {
        DnsTables::default()
    };
    let (dns_tx, dns_rx) = watch::channel(Arc::new(initial));
    let dns_tables_dirty = config
        .kubernetes
        .is_some()
        .then(|| dns_tables_writer(dns_tx.subscribe(), dns_copy));
    let (resolved_tx, mut resolved_rx) = mpsc::channel(4);

    let config_catalog_file = config.catalog_file();
    let mut state = State {
        config,
        kube,
        cache,
        store,
        registry,
        remembered: memory,
        workloads: Vec::new(),
        ids_saved: ids.assigned(),
        sink: sink.clone(),
        dns_settings: None,
        ids,
        owner: owner.clone(),
        catalog: catalog.clone(),
        dns_tables_dirty,
        registry_cache: Default::default(),
        registry_gen: 0,
        synced_workloads: Vec::new(),
        catalog_dirty: catalog_writer(catalog.clone(), config_catalog_file),
        metrics: metrics.clone(),
        resolved: resolved.clone(),
        names: names_tx,
        dns_tables: dns_tx,
    };
    if !adopted && state.kube.is_some() {
        // Nothing pinned (a first start): the node's pods must be known before
        // anything is enforced, or the fail-closed default would hold its
        // hostNetwork and opted-out pods.
        wait_for_lists(&mut state, &mut kube_rx, &mut sigterm, &mut sigint).await?;
    }
    state.refresh_workloads();
    for w in &state.config.workloads {
        if !state.workloads.iter().any(|x| x.config.cgroup == w.cgroup) {
            warn!(namespace = %w.namespace, name = %w.name, cgroup = %w.cgroup.display(), "workload cgroup does not exist yet; not enforced until it does");
        }
    }
    // Fill the maps before attaching: the first connect() already sees the
    // registry. An adopted dataplane keeps enforcing its last state meanwhile.
    let started = Instant::now();
    state.sync().await?;
    release_memory();
    let a = owner.attach(state.config.cgroup_path.clone()).await?;
    // Every hook runs this agent's programs on this agent's maps now: what only
    // the previous programs used can go.
    owner.release_orphans();
    if a.adopted() {
        // Backend entries only the previous programs used go now.
        state.sync().await?;
        release_memory();
    }
    info!(
        adopted_maps = a.adopted_maps.len(),
        adopted_entries,
        new_maps = a.new_maps.len(),
        migrated_maps = %a.migrated_maps.join(","),
        links_updated = a.updated_links,
        programs_changed = a.changed_programs,
        links_created = a.new_links,
        micros = started.elapsed().as_micros() as u64,
        "{}",
        if a.adopted() {
            "adopted the pinned dataplane"
        } else {
            "attached a new dataplane"
        }
    );
    let mut interfaces = state.interfaces();
    let mut tc_failed = sync_tc(&owner, &interfaces, &metrics, Vec::new()).await;
    if state.kube.as_ref().is_none_or(|k| k.ready) {
        metrics
            .ready
            .store(true, std::sync::atomic::Ordering::Relaxed);
    } else {
        info!("enforcing the pinned last good state until the API server's initial lists are in");
    }
    state.log_enforcement();
    if !refuses_packet_sockets {
        for w in &state.config.workloads {
            if w.interface.is_none()
                && state.config.socket_flags(w) & egress_common::WL_SOCK_PACKET == 0
            {
                warn!(
                    namespace = %w.namespace,
                    name = %w.name,
                    "no interface configured and AF_PACKET cannot be refused at socket() here: \
                     a process of this workload holding CAP_NET_RAW can send raw frames; \
                     set workloads[].interface to hold them to the registry"
                );
            }
        }
    }

    tasks.spawn(crate::dns::resolver::run(
        resolver,
        tracker,
        names_rx,
        resolved,
        resolved_tx,
        metrics.clone(),
    ));
    // The DNS proxy's tasks stop apart from the others: they drain first.
    let mut dns_tasks = tokio::task::JoinSet::new();
    let (dns_stop, dns_stop_rx) = watch::channel(false);
    if let Some(dns) = &state.config.dns {
        let (settings_tx, settings_rx) = watch::channel(Arc::new(dns.proxy.clone()));
        state.dns_settings = Some(settings_tx);
        let proxy = Arc::new(crate::dns::proxy::Proxy {
            settings: settings_rx,
            tables: dns_rx,
            learned: Arc::new(owner.clone()),
            metrics: metrics.clone(),
        });
        // A TCP connection waiting in a listener that closes moves to another
        // listener of its SO_REUSEPORT group (planned restarts lose none).
        if let Err(e) = std::fs::write("/proc/sys/net/ipv4/tcp_migrate_req", "1") {
            warn!(
                "cannot set net.ipv4.tcp_migrate_req ({e}): a planned restart may reset DNS/TCP connections being accepted"
            );
        }
        for addr in &dns.proxy.listen {
            let udp = crate::dns::proxy::bind_udp(*addr).map_err(|e| {
                AgentError::Io(std::io::Error::other(format!(
                    "DNS proxy on udp {addr}: {e}"
                )))
            })?;
            let tcp = crate::dns::proxy::bind_tcp(*addr).map_err(|e| {
                AgentError::Io(std::io::Error::other(format!(
                    "DNS proxy on tcp {addr}: {e}"
                )))
            })?;
            dns_tasks.spawn(crate::dns::proxy::serve_udp(
                udp,
                proxy.clone(),
                dns_stop_rx.clone(),
            ));
            dns_tasks.spawn(crate::dns::proxy::serve_tcp(
                tcp,
                proxy.clone(),
                dns_stop_rx.clone(),
            ));
        }
        info!(
            listen = ?dns.proxy.listen,
            upstream = ?dns.proxy.upstream,
            capture = dns.capture,
            "DNS proxy serving"
        );
    }
    tasks.spawn(async move {
        if let Err(e) = crate::telemetry::events::run(events, catalog.clone(), sink).await {
            error!("event reader stopped: {e}");
        }
    });

    let mut dir = state.config.service_entry_dir.clone();
    let (mut _watcher, mut changes) = match watch(&dir) {
        Some((w, rx)) => (Some(w), rx),
        None => (None, tokio::sync::mpsc::channel(1).1),
    };
    let mut seen = fingerprint(&dir);
    let (mut _cgroup_watcher, mut cgroup_changes) = match watch_cgroups(&state.config) {
        Some((w, rx)) => (Some(w), rx),
        None => (None, tokio::sync::mpsc::channel(1).1),
    };
    let (_config_watcher, mut config_changes) = match watch_file(&state.config.path) {
        Some((w, rx)) => (Some(w), rx),
        None => (None, tokio::sync::mpsc::channel(1).1),
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let mut due = false;
        let mut config_due = false;
        tokio::select! {
            _ = sighup.recv() => { info!("SIGHUP: reloading the configuration"); config_due = true; }
            Some(()) = config_changes.recv() => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                while config_changes.try_recv().is_ok() {}
                config_due = true;
            }
            _ = sigterm.recv() => { info!("SIGTERM"); break; }
            _ = sigint.recv() => { info!("SIGINT"); break; }
            Some(()) = cgroup_changes.recv() => {
                while cgroup_changes.try_recv().is_ok() {}
                if state.refresh_workloads() {
                    let started = Instant::now();
                    if let Err(e) = state.sync().await {
                        error!("sync failed, will retry: {e}");
                    }
                    info!(micros = started.elapsed().as_micros() as u64, "workload cgroups changed");
                }
            }
            Some(()) = changes.recv() => {
                // Let a burst of writes settle, then take them all at once.
                tokio::time::sleep(Duration::from_millis(5)).await;
                while changes.try_recv().is_ok() {}
                due = true;
            }
            Some(()) = resolved_rx.recv() => {
                state.registry_gen += 1;
                if let Err(e) = state.sync().await {
                    error!("sync failed, will retry: {e}");
                }
            }
            Some(first) = kube_change(&mut kube_rx) => {
                let mut changes = BTreeSet::from([first]);
                if let Some(rx) = &mut kube_rx {
                    while let Ok(c) = rx.try_recv() {
                        changes.insert(c);
                    }
                }
                let started = Instant::now();
                if state.apply_kube(&changes).await {
                    // A new pod's link gets its traffic line now, not at the tick.
                    let now = state.interfaces();
                    if now != interfaces {
                        interfaces = now;
                        tc_failed = sync_tc(&owner, &interfaces, &metrics, tc_failed).await;
                    }
                    release_memory();
                    info!(micros = started.elapsed().as_micros() as u64, ?changes, "applied the API server's changes");
                }
                if state.kube.as_ref().is_some_and(|k| k.ready)
                    && !metrics.ready.swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    info!("the API server's initial lists are applied: ready");
                }
            }
            _ = tick.tick() => {
                interfaces = state.interfaces();
                tc_failed = sync_tc(&owner, &interfaces, &metrics, tc_failed).await;
                if fingerprint(&dir) != seen {
                    due = true;
                }
                if state.refresh_workloads()
                    && let Err(e) = state.sync().await
                {
                    error!("sync failed, will retry: {e}");
                }
            }
        }
        if config_due && state.reload_config() {
            // The whole configuration, registry and workloads included, as one
            // diff below; the watches follow what the configuration names.
            if state.config.service_entry_dir != dir {
                dir = state.config.service_entry_dir.clone();
                (_watcher, changes) = match watch(&dir) {
                    Some((w, rx)) => (Some(w), rx),
                    None => (None, tokio::sync::mpsc::channel(1).1),
                };
            }
            (_cgroup_watcher, cgroup_changes) = match watch_cgroups(&state.config) {
                Some((w, rx)) => (Some(w), rx),
                None => (None, tokio::sync::mpsc::channel(1).1),
            };
            interfaces = state.interfaces();
            tc_failed = sync_tc(&owner, &interfaces, &metrics, tc_failed).await;
            state.refresh_workloads();
            due = true;
        }
        if due {
            seen = fingerprint(&dir);
            let started = Instant::now();
            if state.reload() {
                let read = started.elapsed();
                if let Err(e) = state.sync().await {
                    error!("sync failed, will retry: {e}");
                }
                info!(
                    read_ms = read.as_secs_f64() * 1e3,
                    total_ms = started.elapsed().as_secs_f64() * 1e3,
                    "reloaded"
                );
                release_memory();
            }
        }
    }
    // The DNS proxy leaves its SO_REUSEPORT group, answers what is queued and
    // in flight (a new agent beside it takes the new queries), then stops.
    let _ = dns_stop.send(true);
    let drained = tokio::time::timeout(Duration::from_secs(3), async {
        while dns_tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!("DNS proxy: answers still in flight after 3 s; exiting anyway");
    }
    tasks.abort_all();
    // The pid file is this agent's unless a newer one (a planned restart)
    // wrote its own.
    if running_pid(&state.config) == Some(std::process::id()) {
        let _ = std::fs::remove_file(state.config.pid_file());
    }
    let at = Some(state.config.cgroup_path.display().to_string());
    match state.config.on_exit {
        OnExit::Keep => {
            info!(
                cgroup = at.as_deref().unwrap_or(""),
                pins = %state.config.pin_path().display(),
                "exiting; enforcement stays in force with the last synced state (fail static)"
            );
        }
        OnExit::Uninstall => {
            uninstall(&state.config)?;
            info!(
                cgroup = at.as_deref().unwrap_or(""),
                "onExit: uninstall: programs detached, pins removed; exiting"
            );
        }
    }
    Ok(())
}
