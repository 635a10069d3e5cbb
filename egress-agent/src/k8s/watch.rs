//! The API server as a source: watches of this node's pods, the namespaces,
//! Istio's four resource kinds and the mesh ConfigMap, kept as one snapshot
//! ([`Cluster`]) the agent's loop reads when told something changed.
//!
//! Each watch is kube-rs's `watcher`: it lists, then watches from the list's
//! resourceVersion, resumes from the last version it saw (bookmarks keep that
//! current), and lists again after a 410 Gone. A relist replaces that kind's
//! objects at once (`InitDone`), so an object deleted during an outage goes
//! then, and nothing else does. While the API is unreachable the snapshot stays
//! as it was: the last good state stays enforced.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, DynamicObject};
use kube::discovery::ApiResource;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, utils::Backoff};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::{KubernetesConfig, OutboundMode};
use crate::istio::validate::Context;
use crate::k8s::cgroups::Qos;
use crate::registry::store::{self, Read};
use crate::telemetry::metrics::Metrics;

/// A pod of this node, as the agent needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// The workload it belongs to, as Istio names it (`source_workload`): its
    /// Deployment, StatefulSet, DaemonSet, CronJob or Job, else the pod itself.
    /// Metrics and ids are per workload, not per pod (bounded as pods come and go).
    pub workload: String,
    pub labels: BTreeMap<String, String>,
    pub host_network: bool,
    pub qos: Option<Qos>,
    pub ips: Vec<IpAddr>,
    /// Succeeded or Failed: its containers are gone.
    pub finished: bool,
    /// Istio injected its sidecar (`sidecar.istio.io/status`): Envoy enforces
    /// this pod's egress; socket-level rewriting would take its VIPs away.
    pub istio_sidecar: bool,
}

impl PodInfo {
    pub fn from_pod(p: &Pod) -> Option<Self> {
        let m = &p.metadata;
        let status = p.status.as_ref();
        let annotation = |k: &str| m.annotations.as_ref().and_then(|a| a.get(k));
        Some(Self {
            // A static pod's cgroup is named after its manifest's hash, which
            // its mirror Pod carries: not after the mirror's own UID.
            uid: annotation("kubernetes.io/config.mirror")
                .cloned()
                .or_else(|| m.uid.clone())?,
            istio_sidecar: annotation("sidecar.istio.io/status").is_some(),
            workload: workload_name(p)?,
            namespace: m.namespace.clone().unwrap_or_default(),
            name: m.name.clone()?,
            labels: m.labels.clone().unwrap_or_default(),
            host_network: p
                .spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false),
            qos: status
                .and_then(|s| s.qos_class.as_deref())
                .and_then(Qos::parse),
            ips: status
                .and_then(|s| s.pod_ips.as_ref())
                .map(|ips| ips.iter().filter_map(|i| i.ip.parse().ok()).collect())
                .unwrap_or_default(),
            finished: matches!(
                status.and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            ),
        })
    }
}

/// The name of the workload a pod belongs to, from its controller: a
/// ReplicaSet's Deployment (the ReplicaSet's name less `-<pod-template-hash>`),
/// a Job's CronJob (less `-<schedule time>`), a StatefulSet or DaemonSet as is;
/// a pod without a controller is its own workload.
pub fn workload_name(p: &Pod) -> Option<String> {
    let m = &p.metadata;
    let name = m.name.clone()?;
    let Some(owner) = m
        .owner_references
        .as_ref()
        .and_then(|o| o.iter().find(|o| o.controller == Some(true)).or(o.first()))
    else {
        return Some(name);
    };
    let strip = |n: &str, suffix: Option<&str>| -> String {
        match suffix
            .and_then(|s| n.strip_suffix(s))
            .and_then(|n| n.strip_suffix('-'))
        {
            Some(base) if !base.is_empty() => base.to_owned(),
            _ => n.to_owned(),
        }
    };
    Some(match owner.kind.as_str() {
        "ReplicaSet" => {
            let hash = m
                .labels
                .as_ref()
                .and_then(|l| l.get("pod-template-hash"))
                .map(String::as_str);
            strip(&owner.name, hash)
        }
        "Job" => {
            // A CronJob's Job is named <cronjob>-<minutes since the epoch>.
            let digits = owner
                .name
                .rsplit('-')
                .next()
                .filter(|d| d.len() >= 8 && d.chars().all(|c| c.is_ascii_digit()));
            strip(&owner.name, digits)
        }
        _ => owner.name.clone(),
    })
}

/// Istio's mesh settings from its ConfigMap (`data.mesh`); a field absent
/// there keeps the agent's own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mesh {
    pub outbound: Option<OutboundMode>,
    pub default_export_to: Option<Vec<String>>,
    pub root_namespace: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMesh {
    outbound_traffic_policy: Option<RawPolicy>,
    default_service_export_to: Option<Vec<String>>,
    root_namespace: Option<String>,
}

#[derive(serde::Deserialize)]
struct RawPolicy {
    mode: Option<OutboundMode>,
}

impl Mesh {
    /// Puts these settings over `config` (what they leave out stays).
    pub fn apply_to(&self, config: &mut crate::config::Config) {
        if let Some(mode) = self.outbound {
            config.outbound = mode;
        }
        if let Some(e) = &self.default_export_to {
            config.default_export_to = e.clone();
        }
        if let Some(r) = &self.root_namespace {
            config.root_namespace = r.clone();
        }
    }

    /// Reads `data.mesh`; an unreadable one is the error.
    pub fn parse(text: &str) -> Result<Self, String> {
        let raw: RawMesh = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        Ok(Self {
            outbound: raw.outbound_traffic_policy.and_then(|p| p.mode),
            default_export_to: raw.default_service_export_to,
            root_namespace: raw.root_namespace,
        })
    }
}

/// What the API server says, as last seen.
#[derive(Debug, Default)]
pub struct Cluster {
    /// By UID.
    pub pods: BTreeMap<String, PodInfo>,
    /// Namespace labels, by name.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Istio resources, validated and converted, by kind then `namespace/name`.
    pub istio: BTreeMap<&'static str, BTreeMap<String, Arc<Read>>>,
    /// The mesh ConfigMap's `data.mesh` (read by the agent, which keeps the
    /// last good settings when it does not parse).
    pub mesh_text: BTreeMap<String, String>,
    /// Watches started, and those that have listed once.
    pub started: BTreeSet<String>,
    pub listed: BTreeSet<String>,
    /// Istio kinds not served by this cluster (no watch for them).
    pub not_served: BTreeSet<&'static str>,
}

impl Cluster {
    /// Every watch has listed once (and Istio's kinds were looked up).
    pub fn initial_lists_done(&self) -> bool {
        !self.started.is_empty()
            && self.started.is_subset(&self.listed)
            && ISTIO_KINDS.iter().all(|(_, plural)| {
                self.started.contains(*plural) || self.not_served.contains(plural)
            })
    }

    /// Every Istio resource's read, for the store.
    pub fn istio_reads(&self) -> Vec<Arc<Read>> {
        self.istio
            .values()
            .flat_map(|m| m.values().cloned())
            .collect()
    }
}

/// What changed, for the agent's loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Changed {
    /// Pods or namespaces: the workloads.
    Workloads,
    /// Istio resources.
    Registry,
    /// The mesh ConfigMap.
    Mesh,
    /// A watch listed for the first time.
    Listed,
}

/// Istio's kinds the agent reads, with their resource names.
pub const ISTIO_KINDS: &[(&str, &str)] = &[
    ("ServiceEntry", "serviceentries"),
    ("DestinationRule", "destinationrules"),
    ("VirtualService", "virtualservices"),
    ("Sidecar", "sidecars"),
];

/// The versions looked up, newest first: a kind is watched at the first one
/// that serves it.
pub const ISTIO_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];

const GROUP: &str = "networking.istio.io";

/// The shared snapshot and where changes are told.
#[derive(Clone)]
pub struct Shared {
    pub cluster: Arc<Mutex<Cluster>>,
    tx: mpsc::UnboundedSender<Changed>,
    metrics: Arc<Metrics>,
}

/// Is a new value the same as the one kept (nothing to tell)?
pub trait Same {
    fn same(&self, other: &Self) -> bool;
}

impl Same for PodInfo {
    fn same(&self, other: &Self) -> bool {
        self == other
    }
}

impl Same for BTreeMap<String, String> {
    fn same(&self, other: &Self) -> bool {
        self == other
    }
}

impl Same for String {
    fn same(&self, other: &Self) -> bool {
        self == other
    }
}

impl Same for Arc<Read> {
    /// Every event of an Istio resource is a new version of it.
    fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(self, other)
    }
}

/// Retries quickly, then every 2 s at most: a 410 relists within ~100 ms, an
/// outage is noticed as soon as the server answers again. Each wait is drawn
/// from ±25 % of the step, so the agents of a cluster do not relist in step.
struct Retry(Duration);

impl Iterator for Retry {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.0.mul_f64(rand::random_range(0.75..1.25));
        self.0 = (self.0 * 2).min(Duration::from_secs(2));
        Some(d)
    }
}

impl Backoff for Retry {
    fn reset(&mut self) {
        self.0 = Duration::from_millis(100);
    }
}

fn retry() -> Retry {
    Retry(Duration::from_millis(100))
}

/// Connects to the API server named by `k` (kubeconfig, else in cluster,
/// else `$KUBECONFIG`).
pub async fn client(k: &KubernetesConfig) -> Result<kube::Client, String> {
    let config = match &k.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("no in-cluster configuration nor kubeconfig: {e}"))?,
    };
    kube::Client::try_from(config).map_err(|e| format!("API client: {e}"))
}

/// One look at the API server: what the agent's watches hold once every kind
/// has listed (`explain` in Kubernetes mode).
pub fn snapshot(
    k: &KubernetesConfig,
    root_namespace: &str,
    ctx: Context,
    timeout: Duration,
) -> Result<Cluster, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let client = client(k).await?;
        let mut tasks = tokio::task::JoinSet::new();
        let (shared, mut rx) = start(
            client,
            k,
            root_namespace.to_owned(),
            ctx,
            Metrics::new(),
            &mut tasks,
        );
        let deadline = tokio::time::Instant::now() + timeout;
        while !shared
            .cluster
            .lock()
            .expect("cluster lock")
            .initial_lists_done()
        {
            tokio::select! {
                _ = rx.recv() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(format!("the API server's lists were not complete within {timeout:?}"));
                }
            }
        }
        tasks.abort_all();
        Ok(std::mem::take(
            &mut *shared.cluster.lock().expect("cluster lock"),
        ))
    })
}

/// Starts every watch; changes arrive on the returned receiver.
pub fn start(
    client: kube::Client,
    k: &KubernetesConfig,
    root_namespace: String,
    ctx: Context,
    metrics: Arc<Metrics>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> (Shared, mpsc::UnboundedReceiver<Changed>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Shared {
        cluster: Arc::new(Mutex::new(Cluster::default())),
        tx,
        metrics,
    };
    let node = format!("spec.nodeName={}", k.node_name);
    let pods: Api<Pod> = Api::all(client.clone());
    shared.begin("pods");
    tasks.spawn(shared.clone().run(
        "pods",
        watcher::watcher(pods, watcher::Config::default().fields(&node)),
        Changed::Workloads,
        |p: Pod| {
            let info = PodInfo::from_pod(&p)?;
            Some((info.uid.clone(), info))
        },
        |c: &mut Cluster| &mut c.pods,
    ));
    let namespaces: Api<Namespace> = Api::all(client.clone());
    shared.begin("namespaces");
    tasks.spawn(shared.clone().run(
        "namespaces",
        watcher::watcher(namespaces, watcher::Config::default()),
        Changed::Workloads,
        |n: Namespace| {
            Some((
                n.metadata.name.clone()?,
                n.metadata.labels.clone().unwrap_or_default(),
            ))
        },
        |c: &mut Cluster| &mut c.namespaces,
    ));
    if !k.mesh_config_map.is_empty() {
        let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &root_namespace);
        let by_name = format!("metadata.name={}", k.mesh_config_map);
        shared.begin("configmaps");
        tasks.spawn(shared.clone().run(
            "configmaps",
            watcher::watcher(maps, watcher::Config::default().fields(&by_name)),
            Changed::Mesh,
            |m: ConfigMap| {
                let text = m.data.as_ref().and_then(|d| d.get("mesh")).cloned();
                Some((m.metadata.name.clone()?, text.unwrap_or_default()))
            },
            |c: &mut Cluster| &mut c.mesh_text,
        ));
    }
    tasks.spawn(shared.clone().discover_istio(client, ctx));
    (shared, rx)
}

impl Shared {
    fn begin(&self, name: &str) {
        self.cluster
            .lock()
            .expect("cluster lock")
            .started
            .insert(name.to_owned());
        self.set_up(name, false);
    }

    fn set_up(&self, name: &str, up: bool) {
        self.metrics
            .kubernetes
            .watch_up
            .with_label_values(&[name])
            .set(i64::from(up));
    }

    fn tell(&self, c: Changed) {
        let _ = self.tx.send(c);
    }

    /// Runs one watch into one map of the snapshot.
    async fn run<K, T>(
        self,
        name: &'static str,
        stream: impl Stream<Item = Result<Event<K>, watcher::Error>> + Send,
        change: Changed,
        convert: impl Fn(K) -> Option<(String, T)> + Send,
        map: impl Fn(&mut Cluster) -> &mut BTreeMap<String, T> + Send,
    ) where
        K: Send,
        T: Same + Send,
    {
        let mut stream = std::pin::pin!(stream.backoff(retry()));
        let mut init: Option<BTreeMap<String, T>> = None;
        let mut down = false;
        while let Some(item) = stream.next().await {
            let event = match item {
                Ok(e) => e,
                Err(e) => {
                    self.failed(name, &mut down, &e);
                    continue;
                }
            };
            if down {
                down = false;
                info!(resource = name, "watch resumed");
            }
            self.set_up(name, true);
            self.metrics
                .kubernetes
                .events
                .with_label_values(&[name])
                .inc();
            let changed = {
                let mut c = self.cluster.lock().expect("cluster lock");
                match event {
                    Event::Init => {
                        init = Some(BTreeMap::new());
                        false
                    }
                    Event::InitApply(o) => {
                        if let (Some(buf), Some((k, v))) = (init.as_mut(), convert(o)) {
                            buf.insert(k, v);
                        }
                        false
                    }
                    Event::InitDone => {
                        let fresh = init.take().unwrap_or_default();
                        let m = map(&mut c);
                        let changed = m.len() != fresh.len()
                            || m.iter()
                                .zip(&fresh)
                                .any(|((a, x), (b, y))| a != b || !x.same(y));
                        *m = fresh;
                        let first = c.listed.insert(name.to_owned());
                        if first {
                            self.tell(Changed::Listed);
                        }
                        changed
                    }
                    Event::Apply(o) => match convert(o) {
                        Some((k, v)) => {
                            let m = map(&mut c);
                            if m.get(&k).is_some_and(|old| old.same(&v)) {
                                false
                            } else {
                                m.insert(k, v);
                                true
                            }
                        }
                        None => false,
                    },
                    Event::Delete(o) => match convert(o) {
                        Some((k, _)) => map(&mut c).remove(&k).is_some(),
                        None => false,
                    },
                }
            };
            if changed {
                self.tell(change);
            }
        }
    }

    fn failed(&self, name: &str, down: &mut bool, e: &watcher::Error) {
        self.set_up(name, false);
        self.metrics
            .kubernetes
            .errors
            .with_label_values(&[name])
            .inc();
        if !*down {
            *down = true;
            warn!(
                resource = name,
                "watch down, the last good state (if one was applied or adopted) stays enforced: {e}"
            );
        }
    }

    /// Finds the version each Istio kind is served at, watches it, and looks
    /// again every 30 s for kinds not served yet (CRDs installed later).
    async fn discover_istio(self, client: kube::Client, ctx: Context) {
        let mut watching: BTreeSet<&'static str> = BTreeSet::new();
        let mut watches = tokio::task::JoinSet::new();
        loop {
            let mut served: BTreeMap<&'static str, &'static str> = BTreeMap::new();
            let mut reached = false;
            for v in ISTIO_VERSIONS {
                match client
                    .list_api_group_resources(&format!("{GROUP}/{v}"))
                    .await
                {
                    Ok(list) => {
                        reached = true;
                        for (_, plural) in ISTIO_KINDS {
                            if list.resources.iter().any(|r| r.name == *plural) {
                                served.entry(plural).or_insert(v);
                            }
                        }
                    }
                    Err(kube::Error::Api(s)) if s.code == 404 => reached = true,
                    Err(e) => {
                        warn!("looking up {GROUP}: {e}; trying again");
                    }
                }
            }
            if reached {
                let mut c = self.cluster.lock().expect("cluster lock");
                for (kind, plural) in ISTIO_KINDS {
                    if watching.contains(plural) {
                        continue;
                    }
                    match served.get(plural) {
                        None => {
                            if c.not_served.insert(plural) {
                                info!(kind, "not served by this cluster: read from files only");
                                self.tell(Changed::Listed);
                            }
                        }
                        Some(v) => {
                            c.not_served.remove(plural);
                            c.started.insert((*plural).to_owned());
                            watching.insert(plural);
                            info!(kind, version = v, "watching");
                            let ar = ApiResource {
                                group: GROUP.into(),
                                version: (*v).into(),
                                api_version: format!("{GROUP}/{v}"),
                                kind: (*kind).into(),
                                plural: (*plural).into(),
                            };
                            let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
                            let api_version = ar.api_version.clone();
                            self.set_up(plural, false);
                            watches.spawn(self.clone().run(
                                plural,
                                watcher::watcher(api, watcher::Config::default()),
                                Changed::Registry,
                                move |o: DynamicObject| {
                                    let key = format!(
                                        "{}/{}",
                                        o.metadata.namespace.as_deref().unwrap_or(""),
                                        o.metadata.name.as_deref().unwrap_or("")
                                    );
                                    Some((key, Versioned::read(&api_version, plural, o, &ctx)))
                                },
                                move |c: &mut Cluster| c.istio.entry(plural).or_default(),
                            ));
                        }
                    }
                }
            }
            let wait = if reached && watching.len() == ISTIO_KINDS.len() {
                // Everything watched: the watches run on their own.
                while watches.join_next().await.is_some() {}
                return;
            } else if reached {
                Duration::from_secs(30)
            } else {
                Duration::from_secs(2)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                Some(_) = watches.join_next() => {}
            }
        }
    }
}

/// An API object read into the store's form: one [`Read`] per object, its
/// "file" the object's API path (what a finding names).
pub struct Versioned;

impl Versioned {
    pub fn read(api_version: &str, plural: &str, mut o: DynamicObject, ctx: &Context) -> Arc<Read> {
        // What validation never looks at, dropped before parsing.
        o.metadata.managed_fields = None;
        if let Some(a) = o.metadata.annotations.as_mut() {
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
        let ns = o.metadata.namespace.clone().unwrap_or_default();
        let name = o.metadata.name.clone().unwrap_or_default();
        let file = PathBuf::from(format!(
            "/apis/{api_version}/namespaces/{ns}/{plural}/{name}"
        ));
        let text = serde_json::to_string(&o).unwrap_or_default();
        Arc::new(store::read_text(&file, &text, ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_settings_from_istios_configmap() {
        let m = Mesh::parse(
            "accessLogFile: /dev/stdout\noutboundTrafficPolicy:\n  mode: REGISTRY_ONLY\ndefaultServiceExportTo: [\".\"]\nrootNamespace: mesh-root\nenableTracing: true\n",
        )
        .unwrap();
        assert_eq!(m.outbound, Some(OutboundMode::RegistryOnly));
        assert_eq!(m.default_export_to, Some(vec![".".to_owned()]));
        assert_eq!(m.root_namespace.as_deref(), Some("mesh-root"));
        assert_eq!(Mesh::parse("{}").unwrap(), Mesh::default());
        assert!(Mesh::parse("outboundTrafficPolicy: {mode: SOMETIMES}").is_err());
    }

    #[test]
    fn an_api_object_is_read_like_a_file_and_named_by_its_path() {
        let o: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "ServiceEntry",
            "metadata": {"name": "stripe", "namespace": "shop", "resourceVersion": "7",
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"hosts": ["api.stripe.com"], "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
                     "resolution": "DNS"}
        }))
        .unwrap();
        let read = Versioned::read(
            "networking.istio.io/v1",
            "serviceentries",
            o,
            &Context::default(),
        );
        assert_eq!(read.entries.len(), 1);
        assert!(read.entries[0].valid);
        let bad: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "ServiceEntry",
            "metadata": {"name": "broken", "namespace": "shop"},
            "spec": {"hosts": ["api.stripe.com"], "ports": [{"number": 0, "name": "x", "protocol": "TCP"}],
                     "resolution": "DNS"}
        }))
        .unwrap();
        let read = Versioned::read(
            "networking.istio.io/v1",
            "serviceentries",
            bad,
            &Context::default(),
        );
        assert!(!read.entries[0].valid);
        let f = read
            .findings
            .iter()
            .find(|f| f.level == crate::istio::Level::Error)
            .unwrap();
        let text = f.to_string();
        assert!(
            text.contains("/apis/networking.istio.io/v1/namespaces/shop/serviceentries/broken"),
            "{text}"
        );
    }
}

#[cfg(test)]
mod workload_names {
    use super::*;

    fn pod(name: &str, owner: Option<(&str, &str)>, hash: Option<&str>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "labels": hash.map(|h| serde_json::json!({"pod-template-hash": h})).unwrap_or(serde_json::json!({})),
                "ownerReferences": owner.map(|(k, n)| serde_json::json!([{
                    "apiVersion": "apps/v1", "kind": k, "name": n, "uid": "u", "controller": true
                }])).unwrap_or(serde_json::json!([]))
            }
        }))
        .unwrap()
    }

    #[test]
    fn pods_are_named_by_their_workload_as_istio_does() {
        let w = |p: Pod| workload_name(&p).unwrap();
        assert_eq!(
            w(pod(
                "web-7d9f8-abcde",
                Some(("ReplicaSet", "web-7d9f8")),
                Some("7d9f8")
            )),
            "web"
        );
        assert_eq!(w(pod("db-0", Some(("StatefulSet", "db")), None)), "db");
        assert_eq!(
            w(pod("agent-x1", Some(("DaemonSet", "agent")), None)),
            "agent"
        );
        assert_eq!(
            w(pod(
                "backup-29012345-q",
                Some(("Job", "backup-29012345")),
                None
            )),
            "backup"
        );
        assert_eq!(w(pod("once-q", Some(("Job", "once")), None)), "once");
        assert_eq!(w(pod("bare", None, None)), "bare");
        // A ReplicaSet without the hash label keeps its name.
        assert_eq!(w(pod("rs-x", Some(("ReplicaSet", "rs")), None)), "rs");
    }
}
