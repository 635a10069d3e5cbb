//! The agent's own resolution of DNS and DNS_ROUND_ROBIN endpoints (SPEC §2.5,
//! §7.4): every A and AAAA answer is kept, re-resolved when its TTL (clamped) runs
//! out, and on failure the last good answer stays in use up to a stale limit.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

pub use crate::config::{ResolverSettings as Settings, system_upstream};
use crate::telemetry::metrics::Metrics;

/// The addresses a name resolves to, in answer order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
}

impl Answer {
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// Current answers by name (matching key: lower case, no trailing dot).
pub type Resolved = BTreeMap<String, Answer>;

/// One lookup's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lookup {
    pub answer: Answer,
    /// The smallest TTL of the records (or the negative TTL for "no records").
    pub ttl: Duration,
}

/// Something that resolves names: hickory in the agent, anything in tests.
pub trait Resolve: Send + Sync + 'static {
    fn lookup(&self, name: &str) -> impl Future<Output = Result<Lookup, String>> + Send;
}

/// Resolution through hickory-resolver against the configured upstream servers.
pub struct HickoryResolve {
    resolver: hickory_resolver::TokioResolver,
}

impl HickoryResolve {
    pub fn new(upstream: &[SocketAddr], timeout: Duration) -> Result<Self, String> {
        use hickory_resolver::config::{
            ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
        };
        let servers = upstream
            .iter()
            .map(|a| {
                let mut udp = ConnectionConfig::udp();
                udp.port = a.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = a.port();
                NameServerConfig::new(a.ip(), true, vec![udp, tcp])
            })
            .collect();
        let config = ResolverConfig::from_parts(None, vec![], servers);
        let mut opts = ResolverOpts::default();
        opts.timeout = timeout;
        opts.attempts = 1;
        // Every refresh must reach the upstream: the TTL logic lives here.
        opts.cache_size = 0;
        opts.ndots = 0;
        let mut builder = hickory_resolver::Resolver::builder_with_config(
            config,
            hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
        );
        *builder.options_mut() = opts;
        let resolver = builder.build().map_err(|e| e.to_string())?;
        Ok(Self { resolver })
    }
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

impl Resolve for HickoryResolve {
    async fn lookup(&self, name: &str) -> Result<Lookup, String> {
        use hickory_resolver::proto::rr::{RData, RecordType};
        let name = fqdn(name);
        let (a, aaaa) = tokio::join!(
            self.resolver.lookup(name.as_str(), RecordType::A),
            self.resolver.lookup(name.as_str(), RecordType::AAAA)
        );
        let mut answer = Answer::default();
        let mut ttl: Option<u32> = None;
        let mut errors = Vec::new();
        for result in [a, aaaa] {
            match result {
                Ok(lookup) => {
                    for r in lookup.answers() {
                        match &r.data {
                            RData::A(a) => answer.v4.push(a.0),
                            RData::AAAA(a) => answer.v6.push(a.0),
                            _ => continue,
                        }
                        ttl = Some(ttl.map_or(r.ttl, |t| t.min(r.ttl)));
                    }
                }
                Err(e) if e.is_no_records_found() => {}
                Err(e) => errors.push(e.to_string()),
            }
        }
        if errors.len() == 2 || (!errors.is_empty() && answer.is_empty()) {
            return Err(errors.join("; "));
        }
        Ok(Lookup {
            answer,
            ttl: Duration::from_secs(u64::from(ttl.unwrap_or(0))),
        })
    }
}

#[derive(Debug)]
struct Entry {
    answer: Answer,
    next: Instant,
    last_ok: Option<Instant>,
    failing: bool,
}

/// The names to resolve, their answers, and when each is due again.
pub struct Tracker {
    settings: Settings,
    entries: BTreeMap<String, Entry>,
}

impl Tracker {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            entries: BTreeMap::new(),
        }
    }

    /// Follows the set of names: new ones are due now, dropped ones forgotten.
    pub fn set_names(&mut self, names: &BTreeSet<String>, now: Instant) -> bool {
        let before = self.entries.len();
        self.entries.retain(|n, _| names.contains(n));
        let removed = before != self.entries.len();
        for n in names {
            self.entries.entry(n.clone()).or_insert(Entry {
                answer: Answer::default(),
                next: now,
                last_ok: None,
                failing: false,
            });
        }
        removed
    }

    pub fn due(&self, now: Instant) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(_, e)| e.next <= now)
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.entries.values().map(|e| e.next).min()
    }

    /// Applies one lookup result; true when the usable answer changed.
    pub fn apply(&mut self, name: &str, result: Result<Lookup, String>, now: Instant) -> bool {
        let s = self.settings;
        let Some(e) = self.entries.get_mut(name) else {
            return false;
        };
        match result {
            Ok(l) => {
                let changed = e.answer != l.answer;
                if e.failing {
                    info!(name, "resolution recovered");
                }
                e.answer = l.answer;
                e.next = now + l.ttl.clamp(s.min_ttl, s.max_ttl);
                e.last_ok = Some(now);
                e.failing = false;
                changed
            }
            Err(err) => {
                e.next = now + s.retry;
                let expired = e
                    .last_ok
                    .is_none_or(|t| now.duration_since(t) > s.stale_limit);
                if !e.failing || expired {
                    warn!(
                        name,
                        error = %err,
                        keeping = %if expired { "nothing (stale limit reached)" } else { "the last good answer" },
                        "resolution failed"
                    );
                }
                e.failing = true;
                if expired && !e.answer.is_empty() {
                    e.answer = Answer::default();
                    return true;
                }
                false
            }
        }
    }

    pub fn resolved(&self) -> Resolved {
        self.entries
            .iter()
            .filter(|(_, e)| !e.answer.is_empty())
            .map(|(n, e)| (n.clone(), e.answer.clone()))
            .collect()
    }

    /// Names currently served from a last good answer while failing.
    pub fn stale(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.failing && !e.answer.is_empty())
            .count()
    }
}

/// Resolves every due name once, concurrently.
pub async fn refresh<R: Resolve>(r: &R, tracker: &mut Tracker, metrics: &Metrics) -> bool {
    let now = Instant::now();
    let due = tracker.due(now);
    let results = futures::future::join_all(due.iter().map(|n| r.lookup(n))).await;
    let mut changed = false;
    for (name, result) in due.iter().zip(results) {
        metrics
            .dns
            .resolutions
            .with_label_values(&[if result.is_ok() { "ok" } else { "error" }])
            .inc();
        changed |= tracker.apply(name, result, Instant::now());
    }
    metrics.dns.stale.set(tracker.stale() as i64);
    changed
}

/// Keeps `out` up to date for the names in `names`; each change is signalled on
/// `changed` (the agent then recompiles and syncs the difference).
pub async fn run<R: Resolve>(
    r: Arc<R>,
    mut tracker: Tracker,
    mut names: watch::Receiver<BTreeSet<String>>,
    out: Arc<RwLock<Resolved>>,
    changed: mpsc::Sender<()>,
    metrics: Arc<Metrics>,
) {
    loop {
        let removed = tracker.set_names(&names.borrow_and_update(), Instant::now());
        let updated = refresh(r.as_ref(), &mut tracker, &metrics).await;
        if removed || updated {
            *out.write().expect("resolved lock") = tracker.resolved();
            metrics
                .dns
                .resolved_names
                .set(tracker.resolved().len() as i64);
            let _ = changed.try_send(());
        }
        let wait = tracker
            .next_due()
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            res = names.changed() => if res.is_err() { return; },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn ok(ips: &[&str], ttl: u64) -> Result<Lookup, String> {
        let mut answer = Answer::default();
        for ip in ips {
            match ip.parse::<IpAddr>().unwrap() {
                IpAddr::V4(a) => answer.v4.push(a),
                IpAddr::V6(a) => answer.v6.push(a),
            }
        }
        Ok(Lookup {
            answer,
            ttl: Duration::from_secs(ttl),
        })
    }

    fn tracker() -> (Tracker, Instant) {
        let mut t = Tracker::new(Settings {
            min_ttl: Duration::from_secs(2),
            max_ttl: Duration::from_secs(60),
            stale_limit: Duration::from_secs(30),
            retry: Duration::from_secs(1),
        });
        let now = Instant::now();
        t.set_names(&["db.example".to_string()].into(), now);
        (t, now)
    }

    #[test]
    fn ttl_is_clamped_and_changes_are_reported() {
        let (mut t, now) = tracker();
        assert_eq!(t.due(now), ["db.example"]);
        assert!(t.apply("db.example", ok(&["192.0.2.1", "2001:db8::1"], 0), now));
        assert_eq!(t.next_due(), Some(now + Duration::from_secs(2)), "min TTL");
        assert!(!t.apply("db.example", ok(&["192.0.2.1", "2001:db8::1"], 600), now));
        assert_eq!(t.next_due(), Some(now + Duration::from_secs(60)), "max TTL");
        assert!(t.apply("db.example", ok(&["192.0.2.2"], 10), now));
        assert_eq!(
            t.resolved()["db.example"].v4,
            ["192.0.2.2".parse::<Ipv4Addr>().unwrap()]
        );
    }

    #[test]
    fn failure_keeps_last_good_until_the_stale_limit() {
        let (mut t, now) = tracker();
        t.apply("db.example", ok(&["192.0.2.1"], 10), now);
        let later = now + Duration::from_secs(20);
        assert!(!t.apply("db.example", Err("timeout".into()), later));
        assert_eq!(t.stale(), 1);
        assert_eq!(t.resolved().len(), 1, "still served");
        assert_eq!(
            t.next_due(),
            Some(later + Duration::from_secs(1)),
            "retry delay"
        );
        let much_later = now + Duration::from_secs(31);
        assert!(t.apply("db.example", Err("timeout".into()), much_later));
        assert!(t.resolved().is_empty(), "dropped after the stale limit");
        assert!(t.apply("db.example", ok(&["192.0.2.9"], 10), much_later));
        assert_eq!(t.stale(), 0);
    }

    #[test]
    fn removed_names_are_forgotten() {
        let (mut t, now) = tracker();
        t.apply("db.example", ok(&["192.0.2.1"], 10), now);
        assert!(t.set_names(&BTreeSet::new(), now));
        assert!(t.resolved().is_empty());
    }

    #[test]
    fn system_upstream_reads_resolv_conf_format() {
        // The file exists on any Debian machine; every entry must be port 53.
        assert!(system_upstream().iter().all(|a| a.port() == 53));
    }
}
