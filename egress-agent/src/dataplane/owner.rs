//! The one owner of the dataplane: a thread that alone holds the loaded
//! programs and every map the agent writes or reads. Everything else asks it
//! through [`Owner`]:
//!
//! - the control loop hands it desired state ([`Owner::apply`]): it writes the
//!   diff ([`crate::dataplane::sync`]), then revokes what left a view;
//! - the DNS proxy hands it learned addresses ([`Owner::learn`]) and waits for
//!   the acknowledgement before it releases the answer (an `await` on a
//!   channel: no lock and no system call on the async DNS path);
//! - it collects expired learned entries in batches, and folds the kernel's
//!   counters into the metrics, on its own clock.
//!
//! The ring buffer of denials is the one exception: it is a queue out of the
//! kernel that the access-log task drains, and nothing writes it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use egress_common::{LearnedKey, LearnedValue};
use tokio::sync::oneshot;
use tracing::warn;

use crate::dataplane::compile::Desired;
use crate::dataplane::loader::{LearnedMap, LoadError, Loaded, PolicyMaps};
use crate::dataplane::revoke::{Revoked, Revoker};
use crate::dataplane::sync::{SyncError, SyncStats, Syncer};
use crate::dataplane::workloads::Workload;
use crate::telemetry::catalog::Catalog;
use crate::telemetry::metrics::{Metrics, StatsPoller};

/// What one [`Owner::apply`] did.
#[derive(Debug, Default)]
pub struct Applied {
    pub stats: SyncStats,
    /// Entries per policy map after the sync.
    pub sizes: Vec<(&'static str, usize)>,
    /// Connections destroyed because their destination left a view.
    pub revoked: Vec<Revoked>,
    /// Network namespaces that could not be searched, with the reason.
    pub revoke_failed: Vec<(PathBuf, String)>,
    /// The desired state this replaced (for naming what was revoked).
    pub revoked_from: Option<Box<Desired>>,
}

enum Command {
    Apply {
        desired: Box<Desired>,
        workloads: Vec<Workload>,
        revoke: bool,
        gone: Vec<u64>,
        reply: oneshot::Sender<Result<Applied, SyncError>>,
    },
    Learn {
        entries: Vec<(LearnedKey, LearnedValue)>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Attach {
        cgroup: PathBuf,
        reply: oneshot::Sender<Result<crate::dataplane::loader::Adoption, LoadError>>,
    },
    SyncTc {
        interfaces: Vec<String>,
        reply: oneshot::Sender<(Vec<(String, String)>, usize)>,
    },
    ReleaseOrphans,
}

/// A handle on the owner thread; cheap to clone.
#[derive(Clone)]
pub struct Owner {
    tx: mpsc::Sender<Command>,
}

/// What the owner thread holds.
struct State {
    loaded: Loaded,
    maps: PolicyMaps,
    syncer: Syncer,
    learned: LearnedMap,
    poller: StatsPoller,
    revoker: Option<Revoker>,
    applied: Option<Box<Desired>>,
    metrics: Arc<Metrics>,
    catalog: Arc<RwLock<Catalog>>,
}

/// How often the kernel's counters are folded into the metrics, and expired
/// learned entries collected.
const POLL_EVERY: Duration = Duration::from_millis(500);
const GC_EVERY: Duration = Duration::from_secs(2);
/// Expired learned entries deleted per pass (the rest wait for the next one).
const GC_BATCH: usize = 4096;

/// What the owner takes over at start.
pub struct Parts {
    pub loaded: Loaded,
    pub maps: PolicyMaps,
    pub syncer: Syncer,
    pub learned: LearnedMap,
    pub poller: StatsPoller,
    pub revoker: Option<Revoker>,
}

impl Owner {
    /// Starts the owner thread with everything loaded; it runs until every
    /// handle is dropped.
    pub fn start(parts: Parts, metrics: Arc<Metrics>, catalog: Arc<RwLock<Catalog>>) -> Self {
        let (tx, rx) = mpsc::channel();
        let state = State {
            loaded: parts.loaded,
            maps: parts.maps,
            syncer: parts.syncer,
            learned: parts.learned,
            poller: parts.poller,
            revoker: parts.revoker,
            applied: None,
            metrics,
            catalog,
        };
        std::thread::Builder::new()
            .name("egress-dataplane".into())
            .spawn(move || state.run(rx))
            .expect("spawn the dataplane owner");
        Self { tx }
    }

    fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> oneshot::Receiver<T> {
        let (reply, rx) = oneshot::channel();
        // A send fails only once the owner is gone (the agent is exiting).
        let _ = self.tx.send(make(reply));
        rx
    }

    /// Brings the maps to `desired` as a diff, then (if `revoke`) destroys the
    /// connections of `workloads` whose destination left their view.
    /// `left`: cgroups of workloads that left and whose cgroup is gone too
    /// (a deleted pod): nothing of theirs is left to revoke.
    pub async fn apply(
        &self,
        desired: Desired,
        workloads: Vec<Workload>,
        revoke: bool,
        left: Vec<u64>,
    ) -> Result<Applied, SyncError> {
        self.ask(|reply| Command::Apply {
            desired: Box::new(desired),
            workloads,
            revoke,
            gone: left,
            reply,
        })
        .await
        .unwrap_or_else(|_| Err(gone()))
    }

    /// Writes learned destinations; returns once they are in the kernel.
    pub async fn learn(&self, entries: Vec<(LearnedKey, LearnedValue)>) -> Result<(), String> {
        self.ask(|reply| Command::Learn { entries, reply })
            .await
            .unwrap_or_else(|_| Err("the dataplane owner is gone".into()))
    }

    /// Attaches (or adopts the links of) every program at `cgroup`.
    pub async fn attach(
        &self,
        cgroup: PathBuf,
    ) -> Result<crate::dataplane::loader::Adoption, LoadError> {
        self.ask(|reply| Command::Attach { cgroup, reply })
            .await
            .unwrap_or_else(|_| {
                Err(LoadError::Pin {
                    path: PathBuf::new(),
                    reason: "the dataplane owner is gone".into(),
                })
            })
    }

    /// Keeps the interface line on exactly `interfaces`; returns those that
    /// could not be attached and how many are.
    pub async fn sync_tc(&self, interfaces: Vec<String>) -> (Vec<(String, String)>, usize) {
        self.ask(|reply| Command::SyncTc { interfaces, reply })
            .await
            .unwrap_or_default()
    }

    /// Backend entries only the previous programs used may go (next apply).
    pub fn release_orphans(&self) {
        let _ = self.tx.send(Command::ReleaseOrphans);
    }
}

fn gone() -> SyncError {
    SyncError {
        op: "apply",
        map: "-",
        reason: "the dataplane owner is gone".into(),
    }
}

impl crate::dns::proxy::LearnSink for Owner {
    fn learn(
        &self,
        entries: Vec<(LearnedKey, LearnedValue)>,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send {
        Owner::learn(self, entries)
    }
}

impl State {
    fn run(mut self, rx: mpsc::Receiver<Command>) {
        let mut next_poll = Instant::now() + POLL_EVERY;
        let mut next_gc = Instant::now() + GC_EVERY;
        loop {
            let wait = next_poll
                .min(next_gc)
                .saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(cmd) => self.handle(cmd),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            let now = Instant::now();
            if now >= next_poll {
                let catalog = self.catalog.read().expect("catalog lock").clone();
                self.poller.poll(&self.metrics, &catalog);
                if let Err(e) = self.syncer.retire(&mut self.maps, now) {
                    warn!("cannot delete a retired endpoint entry (will retry): {e}");
                }
                next_poll = now + POLL_EVERY;
            }
            if now >= next_gc {
                self.gc();
                next_gc = now + GC_EVERY;
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Apply {
                desired,
                workloads,
                revoke,
                gone,
                reply,
            } => {
                let _ = reply.send(self.apply(desired, &workloads, revoke, &gone));
            }
            Command::Learn { entries, reply } => {
                let mut result = Ok(());
                for (k, v) in &entries {
                    if let Err(e) = self.learned.insert(k, v, 0) {
                        result = Err(e.to_string());
                        break;
                    }
                }
                let _ = reply.send(result);
            }
            Command::Attach { cgroup, reply } => {
                let r = self
                    .loaded
                    .attach(&cgroup)
                    .map(|()| self.loaded.adoption.clone());
                let _ = reply.send(r);
            }
            Command::SyncTc { interfaces, reply } => {
                let failed = self.loaded.sync_tc(&interfaces);
                let _ = reply.send((failed, self.loaded.tc_interfaces().len()));
            }
            Command::ReleaseOrphans => self.syncer.release_orphans(),
        }
    }

    fn apply(
        &mut self,
        desired: Box<Desired>,
        workloads: &[Workload],
        revoke: bool,
        gone: &[u64],
    ) -> Result<Applied, SyncError> {
        let stats = self.syncer.sync(&desired, &mut self.maps)?;
        let mut applied = Applied {
            stats,
            sizes: self.syncer.sizes().to_vec(),
            ..Applied::default()
        };
        // A workload that only appeared revokes nothing when its sockets were
        // held to a fail-closed unknown default (REGISTRY_ONLY over an empty
        // view, not audit, not untouched: no view allows less): a pod starting
        // then costs no search of every socket on the node. Otherwise (an
        // ALLOW_ANY default, a pod whose Sidecar says REGISTRY_ONLY) it may.
        let closed_default = |old: &Desired| {
            old.workloads
                .get(&egress_common::UNKNOWN_CGROUP)
                .is_some_and(|w| {
                    w.flags & egress_common::WL_REGISTRY_ONLY != 0
                        && w.flags & (egress_common::WL_AUDIT | egress_common::WL_UNTOUCHED) == 0
                })
        };
        let changed = self.applied.as_deref().is_none_or(|old| {
            // Workloads whose cgroup went with them have nothing to revoke.
            let kept = |k: &u64| !gone.contains(k);
            !((if closed_default(old) {
                old.workloads
                    .iter()
                    .filter(|(k, _)| kept(k))
                    .all(|(k, v)| desired.workloads.get(k) == Some(v))
            } else {
                old.workloads
                    .iter()
                    .filter(|(k, _)| kept(k))
                    .all(|(k, v)| desired.workloads.get(k) == Some(v))
                    && desired
                        .workloads
                        .iter()
                        .all(|(k, v)| old.workloads.get(k) == Some(v))
            }) && (Arc::ptr_eq(&old.services, &desired.services)
                || old.services == desired.services)
                && (Arc::ptr_eq(&old.cidrs, &desired.cidrs) || old.cidrs == desired.cidrs)
                && old.policy_cidrs == desired.policy_cidrs)
        });
        // Learned entries of hosts that left a workload's view go (they would
        // otherwise allow new connections until their TTL ends).
        let before: HashMap<LearnedKey, LearnedValue> = self.learned.iter().flatten().collect();
        let stale = crate::dataplane::revoke::stale_learned(&desired, &before);
        let mut after = before.clone();
        for k in &stale {
            match self.learned.remove(k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {
                    after.remove(k);
                }
                Err(e) => warn!("cannot delete a learned entry that left its view: {e}"),
            }
        }
        applied.stats.deleted += stale.len();
        // What revocation compares the next change with: the maps' part of the
        // desired state only (the DNS tables are the largest part, and only the
        // new state's are needed).
        let mut kept = desired;
        kept.dns_tables = Default::default();
        kept.workload_ips = Default::default();
        kept.ifaces = Default::default();
        let old = self.applied.replace(kept);
        let new = self.applied.as_deref().expect("just set");
        if !changed && stale.is_empty() {
            return Ok(applied);
        }
        if let (true, Some(old), Some(revoker)) = (revoke, old, &self.revoker) {
            let learned = crate::dataplane::revoke::Learned { before, after };
            let (revoked, failed) = revoker.revoke(&old, new, &learned, workloads);
            applied.revoked = revoked;
            applied.revoke_failed = failed;
            applied.revoked_from = Some(old);
        }
        Ok(applied)
    }

    /// Deletes learned entries whose lifetime ended, a batch at a time.
    fn gc(&mut self) {
        let now = crate::telemetry::events::boot_ns();
        let mut expired = Vec::new();
        let mut live = 0;
        for (k, v) in self.learned.iter().flatten() {
            if v.expires_ns <= now {
                if expired.len() < GC_BATCH {
                    expired.push(k);
                }
            } else {
                live += 1;
            }
        }
        for k in expired {
            if let Err(e) = self.learned.remove(&k)
                && !matches!(e, aya::maps::MapError::KeyNotFound)
            {
                warn!("cannot delete an expired learned entry: {e}");
            }
        }
        self.metrics.dns.learned_entries.set(live);
    }
}
