//! `egress-agent run`: read the configuration and the registry, load and fill the
//! maps, attach, then keep the kernel in step until SIGTERM/SIGINT, when every
//! program is detached.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::catalog::Catalog;
use crate::compile::{Ids, compile};
use crate::config::Config;
use crate::istio::{self, Finding, Level};
use crate::loader::{self, LoadOptions, PolicyMaps};
use crate::metrics::{self, Metrics, StatsPoller};
use crate::registry::{self, Service};
use crate::sync::Syncer;
use crate::validate;
use crate::workloads::{self, Workload};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Preflight(#[from] crate::preflight::PreflightError),
    #[error(transparent)]
    Load(#[from] loader::LoadError),
    #[error("applying the registry to the kernel: {0}")]
    Sync(#[from] crate::sync::SyncError),
    #[error("reading ServiceEntries from {}: {source}", path.display())]
    Registry {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The registry read from the ServiceEntry directory.
#[derive(Debug, Default)]
pub struct RegistryLoad {
    pub services: Vec<Service>,
    pub findings: Vec<Finding>,
    pub loaded: usize,
    pub rejected: usize,
}

/// Reads, validates and converts every ServiceEntry below the configured directory.
/// Invalid resources are left out, each with its findings.
pub fn load_registry(config: &Config) -> Result<RegistryLoad, AgentError> {
    let docs =
        istio::load_dir(&config.service_entry_dir).map_err(|source| AgentError::Registry {
            path: config.service_entry_dir.clone(),
            source,
        })?;
    let ctx = validate::Context::default();
    let mut out = RegistryLoad {
        findings: docs.findings,
        ..RegistryLoad::default()
    };
    out.rejected = out
        .findings
        .iter()
        .filter(|f| f.level == Level::Error)
        .count();
    let mut services = Vec::new();
    for se in &docs.service_entries {
        let findings = validate::service_entry(se, &ctx);
        let invalid = findings.iter().any(|f| f.level == Level::Error);
        out.findings.extend(findings);
        if invalid {
            out.rejected += 1;
        } else {
            out.loaded += 1;
            services.extend(registry::convert(se));
        }
    }
    let (merged, warnings) = registry::merge(services);
    for w in warnings {
        warn!(namespace = %w.namespace, host = %w.host, service_entry = %w.se_name, "{}", w.message);
    }
    out.services = merged;
    Ok(out)
}

fn report(load: &RegistryLoad, metrics: &Metrics) {
    for f in &load.findings {
        let kind = f.kind.as_deref().unwrap_or("");
        match f.level {
            Level::Error => {
                error!("{f}");
                metrics
                    .config_rejected
                    .with_label_values(&[kind, &f.namespace, &f.name])
                    .inc();
            }
            Level::Warning => {
                warn!("{f}");
                metrics
                    .config_warnings
                    .with_label_values(&[kind, &f.namespace, &f.name])
                    .inc();
            }
        }
    }
    metrics
        .resources
        .with_label_values(&["loaded"])
        .set(load.loaded as i64);
    metrics
        .resources
        .with_label_values(&["rejected"])
        .set(load.rejected as i64);
}

/// The long-lived state of a running agent.
struct State {
    config: Config,
    registry: RegistryLoad,
    workloads: Vec<Workload>,
    ids: Ids,
    syncer: Syncer,
    maps: PolicyMaps,
    catalog: Arc<RwLock<Catalog>>,
    metrics: Arc<Metrics>,
}

impl State {
    /// Compiles the current registry and workloads and applies the diff.
    fn sync(&mut self) -> Result<(), AgentError> {
        let started = Instant::now();
        let desired = compile(
            &self.config,
            &self.registry.services,
            &self.workloads,
            &mut self.ids,
        );
        *self.catalog.write().expect("catalog lock") = Catalog::from_ids(&self.ids);
        let result = self.syncer.sync(&desired, &mut self.maps);
        let elapsed = started.elapsed();
        self.metrics
            .sync_duration_us
            .set(elapsed.as_micros() as i64);
        for (map, n) in self.syncer.sizes() {
            self.metrics
                .map_entries
                .with_label_values(&[map])
                .set(n as i64);
        }
        match result {
            Ok(st) => {
                self.metrics.syncs.with_label_values(&["ok"]).inc();
                if st.written + st.deleted > 0 {
                    info!(
                        written = st.written,
                        deleted = st.deleted,
                        micros = elapsed.as_micros() as u64,
                        "dataplane synced"
                    );
                }
                Ok(())
            }
            Err(e) => {
                self.metrics.syncs.with_label_values(&["error"]).inc();
                Err(e.into())
            }
        }
    }

    /// Re-resolves the workload cgroups (they may appear or go at any time).
    fn refresh_workloads(&mut self) -> bool {
        let (ok, errors) = workloads::resolve(&self.config.workloads);
        let changed = ok != self.workloads;
        if changed {
            for e in &errors {
                warn!("{e}; not enforced until it exists");
            }
            self.workloads = ok;
        }
        changed
    }

    fn log_enforcement(&self) {
        info!(
            policy = self.config.outbound.label(),
            cgroup = %self.config.cgroup_path.display(),
            services = self.registry.services.len(),
            loaded = self.registry.loaded,
            rejected = self.registry.rejected,
            workloads = self.workloads.len(),
            "enforcing"
        );
        for s in &self.registry.services {
            let vips: Vec<String> = s.vips.iter().map(ToString::to_string).collect();
            let cidrs: Vec<String> = s.cidrs.iter().map(ToString::to_string).collect();
            let ports: Vec<String> = s
                .ports
                .iter()
                .map(|p| format!("{}/{}", p.number, p.protocol.transport().as_str()))
                .collect();
            info!(
                namespace = %s.namespace,
                host = %s.host,
                resolution = s.resolution.as_str(),
                vips = %vips.join(","),
                cidrs = %cidrs.join(","),
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

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), AgentError> {
    crate::preflight::check(&config.cgroup_path)?;
    if Some(config.cgroup_path.as_path()) == crate::config::cgroup2_mount().as_deref() {
        warn!(
            cgroup = %config.cgroup_path.display(),
            "attaching at the root of the cgroup2 hierarchy: every socket on the machine passes the hooks"
        );
    }
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;

    let metrics = Metrics::new();
    let registry = load_registry(&config)?;
    report(&registry, &metrics);

    let (mut loaded, maps, telemetry) = loader::load(LoadOptions {
        fail_open: config.fail_open,
    })?;
    let catalog = Arc::new(RwLock::new(Catalog::default()));
    let mut state = State {
        config,
        registry,
        workloads: Vec::new(),
        ids: Ids::default(),
        syncer: Syncer::new(),
        maps,
        catalog: catalog.clone(),
        metrics: metrics.clone(),
    };
    state.refresh_workloads();
    for w in &state.config.workloads {
        if !state.workloads.iter().any(|x| x.config.cgroup == w.cgroup) {
            warn!(namespace = %w.namespace, name = %w.name, cgroup = %w.cgroup.display(), "workload cgroup does not exist yet; not enforced until it does");
        }
    }
    // Fill the maps before attaching: the first connect() already sees the registry.
    state.sync()?;
    loaded.attach(&state.config.cgroup_path)?;
    metrics
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    state.log_enforcement();

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move {
        if let Err(e) = crate::events::run(telemetry.events, catalog.clone()).await {
            error!("event reader stopped: {e}");
        }
    });
    let poller = StatsPoller::new(telemetry.stats, telemetry.counters);
    tasks.spawn(metrics::poll_loop(
        poller,
        metrics.clone(),
        state.catalog.clone(),
        Duration::from_millis(500),
    ));
    if let Some(addr) = state.config.metrics_address {
        let m = metrics.clone();
        tasks.spawn(async move {
            if let Err(e) = metrics::serve(addr, m).await {
                error!(%addr, "metrics server stopped: {e}");
            }
        });
        info!(%addr, "serving /metrics, /healthz, /readyz");
    }

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: detaching"); break; }
            _ = sigint.recv() => { info!("SIGINT: detaching"); break; }
            _ = tick.tick() => {
                if state.refresh_workloads()
                    && let Err(e) = state.sync()
                {
                    error!("sync failed, will retry: {e}");
                }
            }
        }
    }
    tasks.abort_all();
    let at = loaded.attached_at().map(|p| p.display().to_string());
    drop(loaded);
    info!(
        cgroup = at.as_deref().unwrap_or(""),
        "programs detached; exiting"
    );
    Ok(())
}
