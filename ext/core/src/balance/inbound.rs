//! The inbound decision as one call: the listener by port, STRICT mTLS, the listener's RBAC
//! filters as Istio layers them (each filter in order: a denial by an enforced layer decides;
//! the ALLOW layer's policy is reported), and the endpoint of the inbound cluster. Chains with
//! ext_authz or CUSTOM filters, dry-run rules, paths the connection manager would normalise
//! and attributes the engines would refuse come back as [`Inbound::Fallback`], before any
//! state changed, for the caller's general path.

use std::net::IpAddr;
use std::sync::Arc;

use super::{Balancer, ClusterSpec};
use crate::rbac::CompiledRbac;
use crate::Attributes;

use crate::route::normalize::unchanged_by_normalisation;

/// What an RBAC filter of the chain does with its decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Allow,
    Deny,
    /// AUDIT (LOG rules): never changes the decision.
    Log,
    /// No enforced rules.
    Skip,
}

/// An inbound listener this form decides.
pub struct InboundSpec {
    pub port: u16,
    pub destination_ip: Option<IpAddr>,
    pub strict: bool,
    pub stages: Vec<(Arc<CompiledRbac>, Layer)>,
    /// The inbound cluster: None when the listener has none; Some(None) when the config has
    /// no cluster of that name.
    pub cluster: Option<Option<usize>>,
    pub normalizes: bool,
    pub merge_slashes: bool,
}

/// One request as the inbound decision reads it.
pub struct InboundRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub authority: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub principal: Option<&'a str>,
    pub source_ip: Option<&'a str>,
    pub tls: Option<bool>,
}

/// What [`decide_inbound`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    Fallback,
    /// Plaintext on a STRICT listener: 403.
    Plaintext,
    /// Denied by filter `stage`'s policy (index in its engine), 403 RBAC.
    Denied {
        stage: usize,
        policy: Option<usize>,
    },
    /// Allowed (`by`: the ALLOW layer's filter and policy); `endpoint` of the inbound
    /// cluster, None when it has none (503).
    Allowed {
        by: Option<(usize, Option<usize>)>,
        endpoint: Option<usize>,
    },
}

fn ip(v: Option<&str>) -> Result<Option<IpAddr>, ()> {
    v.map(|s| s.parse::<IpAddr>().map_err(|_| ())).transpose()
}

/// The inbound decision for `req` on `lst`.
pub fn decide_inbound(
    lst: &InboundSpec,
    clusters: &[ClusterSpec],
    balancer: &mut Balancer,
    req: &InboundRequest<'_>,
    now: impl FnOnce() -> f64,
) -> Inbound {
    let tls = req.tls.unwrap_or(req.principal.is_some());
    if lst.strict && !tls {
        return Inbound::Plaintext;
    }
    let unchanged = if lst.normalizes {
        unchanged_by_normalisation(req.path, lst.merge_slashes)
    } else {
        !req.path.contains('#')
    };
    // tls=False with a principal is refused by the engines: the general path raises it.
    if !unchanged || (!tls && req.principal.is_some()) {
        return Inbound::Fallback;
    }
    let Ok(source) = ip(req.source_ip) else {
        return Inbound::Fallback;
    };
    let sans = req.principal.as_slice();
    let attrs = Attributes {
        method: Some(req.method),
        path: Some(req.path),
        authority: Some(req.authority),
        scheme: None,
        headers: req.headers,
        source_ip: source,
        direct_remote_ip: source,
        remote_ip: source,
        destination_ip: lst.destination_ip,
        destination_port: Some(lst.port),
        tls,
        uri_sans: sans,
        dns_sans: &[],
        subject: "",
        sni: "",
        metadata: None,
    };
    let mut by = None;
    for (i, (rbac, layer)) in lst.stages.iter().enumerate() {
        let d = rbac.evaluate(&attrs);
        match layer {
            Layer::Skip => continue,
            _ if !d.allowed => {
                return Inbound::Denied {
                    stage: i,
                    policy: d.policy,
                }
            }
            Layer::Allow => by = Some((i, d.policy)),
            Layer::Deny | Layer::Log => {}
        }
    }
    let endpoint = match lst.cluster {
        Some(Some(c)) => balancer.pick(&clusters[c], None, now),
        _ => None,
    };
    Inbound::Allowed { by, endpoint }
}
