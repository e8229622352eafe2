//! The outbound decision as one call: the listener by port, its route table, the route's
//! cluster (weighted clusters drawn as Envoy does: a random number below the total weight,
//! walked through the clusters), the hash key of the route's hash policies, and the endpoint by
//! the cluster's policy. What this compiled form does not cover (paths the connection manager
//! would normalise, non-forwarding routes, cookie and query hash policies, TCP listeners) comes
//! back as [`Outbound::Fallback`], before any state changed, for the caller's general path.

use std::sync::Arc;

use super::{Balancer, ClusterSpec};
use crate::fasthash::FastMap;
use crate::route::normalize::unchanged_by_normalisation;
use crate::route::CompiledRouteTable;
use crate::{lb, Request};

/// One hash policy the compiled form evaluates.
#[derive(Debug, Clone)]
pub enum HashSpec {
    /// The first value of a header (lower-case name).
    Header(String),
    SourceIp,
}

/// A forwarding route, compiled.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// The route's cluster (one entry, weight ignored) or weighted clusters: (index into the
    /// decider's clusters, None when the config has no such cluster; weight).
    pub clusters: Vec<(Option<usize>, u64)>,
    pub weighted: bool,
    pub total_weight: u64,
    /// Hash policies in order, each with its `terminal` flag.
    pub hash: Vec<(HashSpec, bool)>,
    /// `prefix_rewrite`: (what it replaces, the replacement).
    pub rewrite: Option<(String, String)>,
}

/// An HTTP outbound listener: its route table and the routes this form decides (None: the
/// caller's general path decides that route).
pub struct ListenerSpec {
    pub table: Arc<CompiledRouteTable>,
    pub routes: Vec<Option<RouteSpec>>,
    /// The connection manager normalises paths (normalize_path or a path option).
    pub normalizes: bool,
    pub merge_slashes: bool,
}

/// One config's outbound decisions.
pub struct Decider {
    pub listeners: FastMap<u16, ListenerSpec>,
    pub clusters: Vec<ClusterSpec>,
}

/// What [`Decider::outbound`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    /// Not covered here; no state changed.
    Fallback,
    /// No route: 404 NR.
    NoRoute,
    /// The route (index in its table) and the chosen entry of its clusters; `cluster` None
    /// when there is no such cluster (503 NC), `endpoint` None when it has no endpoint (503
    /// UH); `path` the rewritten path when `prefix_rewrite` applies.
    Forward {
        route: usize,
        choice: Option<usize>,
        cluster: Option<usize>,
        endpoint: Option<usize>,
        hash_key: Option<u64>,
        path: Option<String>,
    },
}

/// Envoy's hash of the route's policies (combined by rotate-and-xor; a terminal policy that
/// yields a value stops).
fn hash_key(
    policies: &[(HashSpec, bool)],
    req: &Request<'_>,
    source_ip: Option<&str>,
) -> Option<u64> {
    let mut key: Option<u64> = None;
    for (policy, terminal) in policies {
        let value = match policy {
            HashSpec::Header(name) => req
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v),
            HashSpec::SourceIp => source_ip,
        };
        let Some(value) = value else {
            continue;
        };
        let h = lb::hash64(value.as_bytes());
        key = Some(key.map_or(h, |k| k.rotate_left(1) ^ h));
        if *terminal {
            break;
        }
    }
    key
}

impl Decider {
    /// The outbound decision for `req` on listener `port`; `randbelow(n)` draws the weighted
    /// cluster (called only for a route with weighted clusters).
    pub fn outbound(
        &self,
        balancer: &mut Balancer,
        mut randbelow: impl FnMut(u64) -> u64,
        port: u16,
        req: &Request<'_>,
        source_ip: Option<&str>,
        now: impl FnOnce() -> f64,
    ) -> Outbound {
        let Some(lst) = self.listeners.get(&port) else {
            return Outbound::Fallback;
        };
        // One scan of the path: unchanged by the listener's normalisation (else its general
        // path decides) and by the table's options (else the table normalises it).
        let merge = lst.merge_slashes || lst.table.options.merge_slashes;
        let unchanged = unchanged_by_normalisation(req.path, merge);
        if !unchanged && (lst.normalizes || req.path.contains('#')) {
            return Outbound::Fallback;
        }
        let hit = if unchanged {
            lst.table.route_unchanged(req)
        } else {
            lst.table.route(req)
        };
        let Some(route) = hit else {
            return Outbound::NoRoute;
        };
        let Some(Some(spec)) = lst.routes.get(route) else {
            return Outbound::Fallback;
        };
        let choice = if spec.weighted {
            let mut pick = if spec.total_weight > 0 {
                randbelow(spec.total_weight)
            } else {
                0
            };
            let mut chosen = None;
            for (i, (_, w)) in spec.clusters.iter().enumerate() {
                if pick < *w {
                    chosen = Some(i);
                    break;
                }
                pick -= w;
            }
            chosen
        } else if spec.clusters.is_empty() {
            None
        } else {
            Some(0)
        };
        let path = spec.rewrite.as_ref().and_then(|(from, to)| {
            req.path
                .strip_prefix(from.as_str())
                .map(|rest| format!("{to}{rest}"))
        });
        let cluster = choice.and_then(|i| spec.clusters[i].0);
        let (mut endpoint, mut key) = (None, None);
        if let Some(c) = cluster {
            let c = &self.clusters[c];
            if !spec.hash.is_empty() {
                key = hash_key(&spec.hash, req, source_ip);
            }
            endpoint = balancer.pick(c, key, now);
        }
        Outbound::Forward {
            route,
            choice,
            cluster,
            endpoint,
            hash_key: key,
            path,
        }
    }
}
