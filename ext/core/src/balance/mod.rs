//! Load-balancer state and endpoint choice, as `meshcore.dataplane.lb.LoadBalancer` makes it
//! (the Python reference): round robin (weighted by position in the cumulative weights), least
//! request (the better of two random choices, `weight / (active + 1)` when weights differ),
//! random, ring hash and Maglev on a hash key (random without one), and outlier detection
//! (consecutive 5xx / gateway failures eject for `base_ejection_time` times the ejection count,
//! capped, within `max_ejection_percent`; panic mode below the healthy threshold).
//!
//! The state is by cluster name and endpoint address, so it survives config updates; the
//! clusters themselves ([`ClusterSpec`]) are passed in on every call.

pub mod inbound;
pub mod outbound;
pub mod pyrandom;
#[cfg(test)]
mod tests;

use crate::fasthash::FastMap;

use crate::lb;
pub use pyrandom::PyRandom;

/// A cluster's load-balancing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    RoundRobin,
    LeastRequest,
    Random,
    RingHash,
    Maglev,
}

impl Policy {
    /// From the names `ClusterConfig.lb_policy` uses.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "ROUND_ROBIN" => Policy::RoundRobin,
            "LEAST_REQUEST" => Policy::LeastRequest,
            "RANDOM" => Policy::Random,
            "RING_HASH" => Policy::RingHash,
            "MAGLEV" => Policy::Maglev,
            _ => return None,
        })
    }
}

/// A cluster's outlier detection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outlier {
    pub consecutive_5xx: u32,
    pub enforcing_consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub enforcing_consecutive_gateway_failure: u32,
    pub base_ejection_time: f64,
    pub max_ejection_time: f64,
    pub max_ejection_percent: f64,
}

/// One upstream host: its address (`address:port`, the state's key) and weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub key: String,
    pub weight: u64,
}

/// A cluster as the balancer needs it (rebuilt on every config update).
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub name: String,
    pub policy: Policy,
    pub outlier: Option<Outlier>,
    pub panic_threshold: f64,
    pub ring_size: u64,
    pub maglev_table_size: u64,
    pub hosts: Vec<Host>,
    /// Every host has the same weight.
    pub uniform: bool,
}

impl ClusterSpec {
    pub fn uniform_weights(hosts: &[Host]) -> bool {
        hosts.iter().all(|h| h.weight == hosts[0].weight)
    }
}

#[derive(Debug, Default, Clone)]
struct HostState {
    active: u64,
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_until: f64,
    ejections: u32,
}

/// A hash table and the host set (keys and weights) it was built for.
#[derive(Debug, Default)]
struct Tables {
    ring: Option<(Vec<Host>, Vec<u64>, Vec<u32>)>,
    maglev: Option<(Vec<Host>, Vec<u32>)>,
}

#[derive(Debug, Default)]
struct ClusterState {
    rr: u64,
    hosts: FastMap<String, HostState>,
    tables: Tables,
    ejected_until: f64,
}

/// Every cluster's load-balancer state, and the random source (seeded as Python's).
pub struct Balancer {
    pub rng: PyRandom,
    clusters: FastMap<String, ClusterState>,
}

impl Balancer {
    pub fn new(rng: PyRandom) -> Self {
        Balancer {
            rng,
            clusters: FastMap::default(),
        }
    }

    fn state(&mut self, cluster: &str) -> &mut ClusterState {
        if !self.clusters.contains_key(cluster) {
            self.clusters
                .insert(cluster.to_string(), ClusterState::default());
        }
        self.clusters.get_mut(cluster).expect("inserted above")
    }

    /// The index (into `c.hosts`) of the host to use, or None when the cluster has none.
    /// `now` (seconds, the clock ejections are timed with) is read only when the cluster has
    /// outlier detection.
    pub fn pick(
        &mut self,
        c: &ClusterSpec,
        hash_key: Option<u64>,
        now: impl FnOnce() -> f64,
    ) -> Option<usize> {
        if c.hosts.is_empty() {
            return None;
        }
        let Balancer { rng, clusters } = self;
        // One lookup when the cluster has state already (every pick but its first).
        let st = match clusters.get_mut(&c.name) {
            Some(st) => st,
            None => clusters.entry(c.name.clone()).or_default(),
        };
        // The hosts to balance over: all, or the healthy ones (outlier detection).
        let mut healthy: Option<Vec<usize>> = None;
        if c.outlier.is_some() {
            let t = now();
            if t < st.ejected_until {
                let h: Vec<usize> = (0..c.hosts.len())
                    .filter(|&i| {
                        st.hosts
                            .get(&c.hosts[i].key)
                            .is_none_or(|s| s.ejected_until <= t)
                    })
                    .collect();
                let panic = h.is_empty()
                    || 100.0 * h.len() as f64 / (c.hosts.len() as f64) < c.panic_threshold;
                if !panic {
                    healthy = Some(h);
                }
            }
        }
        let n = healthy.as_ref().map_or(c.hosts.len(), Vec::len);
        let at = |i: usize| healthy.as_ref().map_or(i, |h| h[i]);
        if n == 1 {
            return Some(at(0));
        }
        let uniform = if healthy.is_some() {
            (0..n).all(|i| c.hosts[at(i)].weight == c.hosts[at(0)].weight)
        } else {
            c.uniform
        };
        let weight = |i: usize| c.hosts[at(i)].weight;
        let chosen = match (c.policy, hash_key) {
            (Policy::RoundRobin, _) => {
                st.rr += 1;
                if uniform {
                    (st.rr % n as u64) as usize
                } else {
                    let total: u64 = (0..n).map(weight).sum();
                    let target = st.rr % total;
                    let mut acc = 0;
                    let mut pick = n - 1;
                    for i in 0..n {
                        acc += weight(i);
                        if target < acc {
                            pick = i;
                            break;
                        }
                    }
                    pick
                }
            }
            (Policy::LeastRequest, _) => {
                let (a, b) = rng.sample2(n);
                let active = |i: usize| st.hosts.get(&c.hosts[at(i)].key).map_or(0, |s| s.active);
                let (aa, ab) = (active(a), active(b));
                let (wa, wb) = (weight(a), weight(b));
                if wa != wb {
                    if wa as f64 / (aa + 1) as f64 >= wb as f64 / (ab + 1) as f64 {
                        a
                    } else {
                        b
                    }
                } else if aa <= ab {
                    a
                } else {
                    b
                }
            }
            (Policy::Random, _) | (_, None) => {
                if uniform {
                    rng.randbelow(n as u64) as usize
                } else {
                    rng.weighted((0..n).map(weight))
                }
            }
            (Policy::RingHash, Some(key)) => {
                let set: Vec<Host> = (0..n).map(|i| c.hosts[at(i)].clone()).collect();
                if st.tables.ring.as_ref().is_none_or(|r| r.0 != set) {
                    let keys: Vec<(&str, u64)> =
                        set.iter().map(|h| (h.key.as_str(), h.weight)).collect();
                    let (hashes, owners) = lb::ring(&keys, c.ring_size).ok()?;
                    st.tables.ring = Some((set, hashes, owners));
                }
                let (_, hashes, owners) = st.tables.ring.as_ref()?;
                let i = hashes.partition_point(|&h| h < key);
                owners[i % owners.len()] as usize
            }
            (Policy::Maglev, Some(key)) => {
                let set: Vec<Host> = (0..n).map(|i| c.hosts[at(i)].clone()).collect();
                if st.tables.maglev.as_ref().is_none_or(|m| m.0 != set) {
                    let keys: Vec<(&str, u64)> =
                        set.iter().map(|h| (h.key.as_str(), h.weight)).collect();
                    let table = lb::maglev(&keys, c.maglev_table_size).ok()?;
                    st.tables.maglev = Some((set, table));
                }
                let (_, table) = st.tables.maglev.as_ref()?;
                table[(key % table.len() as u64) as usize] as usize
            }
        };
        Some(at(chosen))
    }

    /// Counts an active request to `host` (least request).
    pub fn started(&mut self, cluster: &str, host: &str) {
        let st = self.state(cluster);
        st.hosts.entry(host.to_string()).or_default().active += 1;
    }

    /// Records a request's result (`status` None: the connection failed, a gateway error as
    /// in Envoy); true when it ejected `host`. `hosts` are the cluster's current hosts (for
    /// `max_ejection_percent`).
    #[allow(clippy::too_many_arguments)]
    pub fn finished(
        &mut self,
        cluster: &str,
        outlier: Option<&Outlier>,
        host: &str,
        status: Option<u32>,
        hosts: &[&str],
        started: bool,
        now: impl FnOnce() -> f64,
    ) -> bool {
        let Balancer { rng, clusters } = self;
        if !clusters.contains_key(cluster) {
            clusters.insert(cluster.to_string(), ClusterState::default());
        }
        let st = clusters.get_mut(cluster).expect("inserted above");
        let h = st.hosts.entry(host.to_string()).or_default();
        if started {
            h.active = h.active.saturating_sub(1);
        }
        let Some(od) = outlier else {
            return false;
        };
        let failed_5xx = status.is_none_or(|s| s >= 500);
        let gateway = status.is_none_or(|s| matches!(s, 502..=504));
        if !failed_5xx {
            h.consecutive_5xx = 0;
            h.consecutive_gateway = 0;
            return false;
        }
        h.consecutive_5xx += 1;
        h.consecutive_gateway += u32::from(gateway);
        let trip = (od.consecutive_5xx > 0
            && h.consecutive_5xx >= od.consecutive_5xx
            && 100.0 * rng.random() < f64::from(od.enforcing_consecutive_5xx))
            || (od.enforcing_consecutive_gateway_failure > 0
                && od.consecutive_gateway_failure > 0
                && h.consecutive_gateway >= od.consecutive_gateway_failure
                && 100.0 * rng.random() < f64::from(od.enforcing_consecutive_gateway_failure));
        if !trip {
            return false;
        }
        let t = now();
        if h.ejected_until > t {
            return false;
        }
        let total = hosts.len().max(1);
        let ejected = hosts
            .iter()
            .filter(|k| st.hosts.get(**k).is_some_and(|x| x.ejected_until > t))
            .count();
        // Envoy ejects at least one host even when max_ejection_percent rounds to none.
        if ejected > 0 && 100.0 * (ejected + 1) as f64 / total as f64 > od.max_ejection_percent {
            return false;
        }
        let h = st.hosts.get_mut(host).expect("inserted above");
        h.ejections += 1;
        let span = (od.base_ejection_time * f64::from(h.ejections))
            .min(od.max_ejection_time.max(od.base_ejection_time));
        h.ejected_until = t + span;
        st.ejected_until = st.ejected_until.max(h.ejected_until);
        h.consecutive_5xx = 0;
        h.consecutive_gateway = 0;
        true
    }

    /// The hosts of `cluster` ejected at `now`, sorted.
    pub fn ejected(&self, cluster: &str, now: f64) -> Vec<String> {
        let mut out: Vec<String> = self
            .clusters
            .get(cluster)
            .map(|st| {
                st.hosts
                    .iter()
                    .filter(|(_, h)| h.ejected_until > now)
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }
}
