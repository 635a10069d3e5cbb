//! Outlier detection (SPEC §7.6) for one (source pod, cluster): which of its
//! endpoints may be picked, from the outcomes of the connects it made (issue 12
//! groundwork: the rules, tested here; the kernel does not report connect
//! outcomes to it yet).
//!
//! - A failed connect (timeout, RST to the SYN, refused, unreachable) counts as
//!   a consecutive 5xx and a gateway error; a completed handshake resets both.
//! - Reaching `consecutive5xxErrors` (0: off) or `consecutiveGatewayErrors`
//!   ejects the endpoint for `baseEjectionTime × n` (n: its ejection count),
//!   capped at `max(baseEjectionTime, 300 s)`, only while
//!   `100 · ejected / total < maxEjectionPercent`.
//! - Ejected endpoints come back at the first `interval` check after their time.
//! - Below `minHealthPercent` healthy, ejections are ignored (panic mode).

use std::time::{Duration, Instant};

/// The DestinationRule's `outlierDetection`, defaults as Istio's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub consecutive_5xx: u32,
    pub consecutive_gateway: u32,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
    pub min_health_percent: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            consecutive_5xx: 5,
            consecutive_gateway: 0,
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 10,
            min_health_percent: 0,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Endpoint {
    consecutive: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

/// The state of one (pod, cluster).
#[derive(Clone, Debug)]
pub struct Outlier {
    settings: Settings,
    endpoints: Vec<Endpoint>,
}

impl Outlier {
    pub fn new(endpoints: usize, settings: Settings) -> Self {
        Self {
            settings,
            endpoints: vec![Endpoint::default(); endpoints],
        }
    }

    fn ejected(&self) -> usize {
        self.endpoints
            .iter()
            .filter(|e| e.ejected_until.is_some())
            .count()
    }

    /// Records one connect to endpoint `i`; true when it ejected the endpoint.
    pub fn report(&mut self, i: usize, ok: bool, now: Instant) -> bool {
        let total = self.endpoints.len();
        let ejected = self.ejected();
        let s = &self.settings;
        let e = &mut self.endpoints[i];
        if ok {
            e.consecutive = 0;
            return false;
        }
        e.consecutive += 1;
        let limit = [s.consecutive_5xx, s.consecutive_gateway]
            .into_iter()
            .filter(|&n| n > 0)
            .min();
        let Some(limit) = limit else {
            return false;
        };
        if e.ejected_until.is_some()
            || e.consecutive < limit
            || 100 * ejected >= s.max_ejection_percent as usize * total
        {
            return false;
        }
        e.ejections += 1;
        let cap = s.base_ejection.max(Duration::from_secs(300));
        e.ejected_until = Some(now + (s.base_ejection * e.ejections).min(cap));
        e.consecutive = 0;
        true
    }

    /// The `interval` check: endpoints whose ejection time has passed come
    /// back. Returns them.
    pub fn check(&mut self, now: Instant) -> Vec<usize> {
        let mut back = Vec::new();
        for (i, e) in self.endpoints.iter_mut().enumerate() {
            if e.ejected_until.is_some_and(|t| t <= now) {
                e.ejected_until = None;
                back.push(i);
            }
        }
        back
    }

    /// Which endpoints may be picked: all but the ejected ones, or all in
    /// panic mode (fewer healthy than `minHealthPercent`).
    pub fn eligible(&self) -> Vec<bool> {
        let total = self.endpoints.len();
        let healthy = total - self.ejected();
        let panic = self.settings.min_health_percent > 0
            && 100 * healthy < self.settings.min_health_percent as usize * total;
        self.endpoints
            .iter()
            .map(|e| panic || e.ejected_until.is_none())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            consecutive_5xx: 3,
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 50,
            ..Settings::default()
        }
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut o = Outlier::new(4, settings());
        assert!(!o.report(1, false, t0));
        assert!(!o.report(1, false, t0));
        assert!(!o.report(1, true, t0), "a handshake resets");
        assert!(!o.report(1, false, t0));
        assert!(!o.report(1, false, t0));
        assert!(o.report(1, false, t0), "third in a row ejects");
        assert_eq!(o.eligible(), vec![true, false, true, true]);
        // Back at the first check after 30 s, not before.
        assert!(o.check(t0 + Duration::from_secs(29)).is_empty());
        assert_eq!(o.check(t0 + Duration::from_secs(30)), vec![1]);
        assert!(o.eligible().iter().all(|&e| e));
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_up_to_the_cap() {
        let mut o = Outlier::new(2, settings());
        let mut now = Instant::now();
        let mut times = Vec::new();
        for _ in 0..12 {
            for _ in 0..3 {
                o.report(0, false, now);
            }
            let until = o.endpoints[0].ejected_until.unwrap();
            times.push((until - now).as_secs());
            now = until;
            o.check(now);
        }
        assert_eq!(&times[..3], &[30, 60, 90]);
        assert_eq!(*times.last().unwrap(), 300, "capped at max(base, 300 s)");
    }

    #[test]
    fn max_ejection_percent_and_panic_mode() {
        let t0 = Instant::now();
        let mut o = Outlier::new(4, settings());
        for i in 0..4 {
            for _ in 0..3 {
                o.report(i, false, t0);
            }
        }
        // 50 %: two of four at most.
        assert_eq!(o.eligible().iter().filter(|&&e| !e).count(), 2);
        let mut o = Outlier::new(
            4,
            Settings {
                min_health_percent: 60,
                ..settings()
            },
        );
        for i in 0..2 {
            for _ in 0..3 {
                o.report(i, false, t0);
            }
        }
        // 2 of 4 healthy is under 60 %: ejections ignored.
        assert!(o.eligible().iter().all(|&e| e));
        // Off: never ejects.
        let mut off = Outlier::new(
            2,
            Settings {
                consecutive_5xx: 0,
                ..settings()
            },
        );
        for _ in 0..10 {
            assert!(!off.report(0, false, t0));
        }
    }
}
