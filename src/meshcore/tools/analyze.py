"""``meshcore analyze``: cross-resource analysis of a mesh with Istio-style message codes.

``analyze(paths)`` loads and validates files or directories, ``analyze_store(address)`` an etcd
config store; ``analyze_model(mesh)`` analyzes an already loaded
:class:`~meshcore.config.MeshModel` (anything that yields a model can be analyzed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshcore.config import MeshModel, ValidationReport, validate
from meshcore.config.model import AuthorizationPolicy, DestinationRule, Resource, VirtualService
from meshcore.config.values import resolve_host, selector_matches
from meshcore.tools import messages as m
from meshcore.tools.messages import LEVELS, Message

# Annotations in Istio's domains that meshcore knows (anything else there is a typo or a
# feature meshcore does not read).
KNOWN_ANNOTATIONS = frozenset({"istio.io/dry-run", "sidecar.istio.io/inject"})


@dataclass(frozen=True, slots=True)
class Analysis:
    """What ``analyze`` found: the messages, sorted by resource then code."""

    messages: tuple[Message, ...]
    resources: int = 0
    suppressed: int = field(default=0)

    def at_least(self, level: str) -> list[Message]:
        floor = LEVELS.index(level)
        return [x for x in self.messages if LEVELS.index(x.level) >= floor]

    def to_dict(self) -> list[dict[str, object]]:
        return [x.to_dict() for x in self.messages]


def analyze(
    paths: Sequence[str],
    *,
    domain: str = "cluster.local",
    suppress: Iterable[str] = (),
) -> Analysis:
    """Validates and analyzes the Istio YAML in ``paths`` (files or directories)."""
    return analyze_report(validate(paths, domain=domain), suppress=suppress)


def analyze_store(
    address: str, *, domain: str = "cluster.local", suppress: Iterable[str] = ()
) -> Analysis:
    """Analyzes the config in an etcd store (``etcd://HOST:PORT[,...]/PREFIX``), as a replica
    reads it (:func:`meshcore.store.source.read_store`; keys stand for files)."""
    from meshcore.store.source import read_store

    return analyze_report(read_store(address, domain=domain), suppress=suppress)


def analyze_report(report: ValidationReport, *, suppress: Iterable[str] = ()) -> Analysis:
    """The analysis of a validation report: its errors (IST0106) and, when it has a model,
    every analyzer over it."""
    found = [
        m.from_problem(m.SCHEMA_VALIDATION_ERROR, p)
        for p in report.problems
        if p.severity == "error"
    ]
    count = 0
    if report.model is not None:
        count = len(report.model)
        found += analyze_model(report.model).messages
    return _finish(found, count, suppress)


def analyze_model(mesh: MeshModel, *, suppress: Iterable[str] = ()) -> Analysis:
    """Every analyzer over a loaded mesh."""
    found: list[Message] = []
    found += _annotations(mesh)
    found += _virtual_services(mesh)
    found += _destination_rules(mesh)
    found += _authorization_policies(mesh)
    found += _translation(mesh)
    return _finish(found, len(mesh), suppress)


def parse_suppression(text: str) -> tuple[str, str]:
    """``CODE=Kind name.namespace`` (istioctl's form; ``*`` globs the resource) -> parts."""
    code, sep, res = text.partition("=")
    if not sep or not code.strip() or not res.strip():
        raise ValueError(f"--suppress {text!r}: expected CODE=Kind name.namespace")
    return code.strip(), res.strip()


def _suppressed(msg: Message, rules: Sequence[tuple[str, str]]) -> bool:
    import fnmatch

    ident = f"{msg.kind} {msg.name}.{msg.namespace}" if msg.namespace else f"{msg.kind} {msg.name}"
    return any(
        fnmatch.fnmatchcase(msg.code, code) and fnmatch.fnmatchcase(ident, res)
        for code, res in rules
    )


def _finish(found: list[Message], count: int, suppress: Iterable[str]) -> Analysis:
    rules = [parse_suppression(s) for s in suppress]
    unique = {(x.code, x.kind, x.namespace, x.name, x.path, x.text): x for x in found}
    kept = [x for x in unique.values() if not _suppressed(x, rules)]
    kept.sort(key=lambda x: (x.kind, x.namespace, x.name, x.code, x.path, x.text))
    return Analysis(tuple(kept), count, len(unique) - len(kept))


# --- analyzers ---------------------------------------------------------------------------------


def _annotations(mesh: MeshModel) -> list[Message]:
    out = []
    for res in mesh.resources:
        for key in res.annotations:
            domain = key.partition("/")[0]
            if (
                domain == "istio.io" or domain.endswith(".istio.io")
            ) and key not in KNOWN_ANNOTATIONS:
                out.append(m.about(m.UNKNOWN_ANNOTATION, res, f"Unknown annotation: {key}",
                                   f"metadata.annotations.{key}"))  # fmt: skip
    return out


def _wildcard(host: str) -> bool:
    return host.startswith("*")


def _known(mesh: MeshModel, host: str) -> bool:
    """A Service or ServiceEntry host, or one a wildcard ServiceEntry host covers."""
    if mesh.has_host(host):
        return True
    return any(
        h.startswith("*") and host.endswith(h[1:]) for se in mesh.service_entries for h in se.hosts
    )


def _destinations(vs: VirtualService) -> Iterable[tuple[str, Mapping[str, Any]]]:
    for kind in ("http", "tcp", "tls"):
        for i, rule in enumerate(vs.spec.get(kind) or ()):
            for j, dest in enumerate(rule.get("route") or ()):
                if isinstance(dest, Mapping) and isinstance(dest.get("destination"), Mapping):
                    yield f"spec.{kind}[{i}].route[{j}].destination", dest["destination"]
            mirror = rule.get("mirror")
            if isinstance(mirror, Mapping):
                yield f"spec.{kind}[{i}].mirror", mirror


def _virtual_services(mesh: MeshModel) -> list[Message]:
    out: list[Message] = []
    mesh_hosts: dict[str, list[VirtualService]] = {}
    for vs in mesh.virtual_services:
        for path, dest in _destinations(vs):
            host = str(dest.get("host", ""))
            fqdn = resolve_host(host, vs.namespace, mesh.domain)
            if not host or _wildcard(host) or _known(mesh, fqdn) or _known(mesh, host):
                subset = dest.get("subset")
                known = fqdn if mesh.has_host(fqdn) else host
                if (
                    subset
                    and host
                    and not _wildcard(host)
                    and not mesh.subset_defined(known, str(subset))
                ):
                    out.append(m.about(m.REFERENCED_RESOURCE_NOT_FOUND, vs,
                                       f'Referenced host+subset in destinationrule not found: "{host}+{subset}"',
                                       path + ".subset"))  # fmt: skip
                continue
            out.append(m.about(m.REFERENCED_RESOURCE_NOT_FOUND, vs,
                               f'Referenced host not found: "{host}"', path + ".host"))  # fmt: skip
        for i, gw in enumerate(vs.gateways):
            if gw == "mesh":
                continue
            ns, _, name = gw.rpartition("/")
            ns = ns or vs.namespace
            if mesh.get("Gateway", ns, name) is None:
                out.append(m.about(m.REFERENCED_RESOURCE_NOT_FOUND, vs,
                                   f'Referenced gateway not found: "{ns}/{name}"',
                                   f"spec.gateways[{i}]"))  # fmt: skip
        if not vs.gateways or "mesh" in vs.gateways:
            for host in vs.hosts:
                mesh_hosts.setdefault(host, []).append(vs)
    for host, vss in sorted(mesh_hosts.items()):
        if len(vss) > 1:
            names = ",".join(f"{v.namespace}/{v.name}" for v in vss)
            for vs in vss:
                out.append(m.about(m.CONFLICTING_MESH_GATEWAY_VS_HOSTS, vs,
                                   f'The VirtualServices {names} associated with mesh gateway define '
                                   f'the same host {host} which can lead to undefined behavior. '
                                   'This can be fixed by merging the conflicting VirtualServices '
                                   'into a single resource.'))  # fmt: skip
    return out


def _tls_modes(dr: DestinationRule) -> Iterable[tuple[str, Mapping[str, Any]]]:
    def of(policy: Mapping[str, Any], path: str) -> Iterable[tuple[str, Mapping[str, Any]]]:
        if isinstance(policy.get("tls"), Mapping):
            yield path + ".tls", policy["tls"]
        for i, pls in enumerate(policy.get("portLevelSettings") or ()):
            if isinstance(pls, Mapping) and isinstance(pls.get("tls"), Mapping):
                yield f"{path}.portLevelSettings[{i}].tls", pls["tls"]

    yield from of(dr.traffic_policy, "spec.trafficPolicy")
    for i, (_, sub) in enumerate(dr.subsets.items()):
        yield from of(sub.traffic_policy, f"spec.subsets[{i}].trafficPolicy")


def _destination_rules(mesh: MeshModel) -> list[Message]:
    out: list[Message] = []
    for dr in mesh.destination_rules:
        svc = mesh.service(dr.host, dr.namespace)
        if svc is None and not _wildcard(dr.host) and not _known(mesh, dr.host):
            out.append(m.about(m.REFERENCED_RESOURCE_NOT_FOUND, dr,
                               f'Referenced host not found: "{dr.host}"', "spec.host"))  # fmt: skip
        if svc is not None:
            for i, (name, sub) in enumerate(dr.subsets.items()):
                if not mesh.workloads(svc.namespace, {**svc.selector, **sub.labels}):
                    out.append(m.about(m.DR_SUBSET_NOT_SELECT_PODS, dr,
                                       f"The Subset {name} defined in the DestinationRule does "
                                       "not select any pods.", f"spec.subsets[{i}]"))  # fmt: skip
        for path, tls in _tls_modes(dr):
            mode = str(tls.get("mode", ""))
            if (
                mode in ("SIMPLE", "MUTUAL")
                and not tls.get("caCertificates")
                and not tls.get("credentialName")
                and not tls.get("insecureSkipVerify")
            ):
                out.append(m.about(m.NO_SERVER_CERT_VERIFICATION_DR, dr,
                                   f"DestinationRule {dr.namespace}/{dr.name} in namespace "
                                   f"{dr.namespace} has TLS mode set to {mode} but no "
                                   "caCertificates are set to validate server identity for "
                                   f"host: {dr.host}", path + ".caCertificates"))  # fmt: skip
            if mode == "DISABLE" and svc is not None:
                strict = mesh.mtls_mode(svc.namespace, svc.selector) == "STRICT"
                if strict:
                    out.append(m.about(m.MTLS_POLICY_CONFLICT, dr,
                                       f"A DestinationRule and PeerAuthentication are in conflict "
                                       f"with regards to mTLS for host {svc.hostname}: the "
                                       f"DestinationRule {dr.namespace}/{dr.name} disables TLS but "
                                       "the workloads' PeerAuthentication is STRICT (every "
                                       "request is refused)", path + ".mode"))  # fmt: skip
    return out


def _selected(mesh: MeshModel, pol: AuthorizationPolicy) -> list[Resource]:
    if pol.namespace == mesh.root_namespace:
        pool = list(mesh.workload_entries)
    else:
        pool = [w for w in mesh.workload_entries if w.namespace == pol.namespace]
    return [w for w in pool if selector_matches(pol.selector, w.workload_labels)]


def _ports(mesh: MeshModel, workloads: Sequence[Any]) -> set[int] | None:
    """The inbound ports of ``workloads`` (service target ports and their own ports); None when
    one of them has a named target port (unknown number)."""
    ports: set[int] = set()
    for w in workloads:
        ports.update(int(p) for p in w.ports.values())
        for svc in mesh.services:
            if (
                svc.namespace == w.namespace
                and svc.selector
                and selector_matches(svc.selector, w.workload_labels)
            ):
                for p in svc.ports:
                    if isinstance(p.target_port, int):
                        ports.add(p.target_port)
                    elif str(p.target_port).isdigit():
                        ports.add(int(p.target_port))
                    else:
                        return None
    return ports


def _rule_never_matches(rule: Mapping[str, Any], ports: set[int]) -> bool:
    """A rule whose every ``to`` names only ports no selected workload listens on."""
    tos = rule.get("to") or ()
    if not tos:
        return False
    for to in tos:
        op = to.get("operation") if isinstance(to, Mapping) else None
        listed = op.get("ports") if isinstance(op, Mapping) else None
        if not listed:
            return False
        if any(str(p).isdigit() and int(p) in ports for p in listed):
            return False
    return True


def _authorization_policies(mesh: MeshModel) -> list[Message]:
    out: list[Message] = []
    for pol in mesh.authorization_policies:
        selected = _selected(mesh, pol)
        if not selected:
            labels = ",".join(f"{k}={v}" for k, v in sorted((pol.selector or {}).items()))
            out.append(m.about(m.NO_MATCHING_WORKLOADS, pol,
                               "No matching workloads for this resource with the following "
                               f"labels: {labels}" if labels else
                               f"No workloads in namespace {pol.namespace} for this resource",
                               "spec.selector"))  # fmt: skip
            continue
        if pol.action == "CUSTOM":
            continue
        if not pol.rules:
            if pol.action == "ALLOW":
                out.append(m.about(m.AUTHZ_ALLOWS_NOTHING, pol,
                                   "ALLOW policy with no rules: it allows no request to the "
                                   f"{len(selected)} selected workload(s)", "spec.rules"))  # fmt: skip
            else:
                out.append(m.about(m.AUTHZ_NEVER_MATCHES, pol,
                                   f"{pol.action} policy with no rules never matches", "spec.rules"))  # fmt: skip
            continue
        ports = _ports(mesh, selected)
        if ports is None:
            continue
        dead = [i for i, r in enumerate(pol.rules) if _rule_never_matches(r, ports)]
        listen = ",".join(str(p) for p in sorted(ports)) or "none"
        if len(dead) == len(pol.rules):
            out.append(m.about(m.AUTHZ_NEVER_MATCHES, pol,
                               f"no rule can match: every rule names only ports the selected "
                               f"workloads do not listen on ({listen})", "spec.rules"))  # fmt: skip
        else:
            for i in dead:
                out.append(m.about(m.AUTHZ_NEVER_MATCHES, pol,
                                   f"rule {i} never matches: it names only ports the selected "
                                   f"workloads do not listen on ({listen})",
                                   f"spec.rules[{i}].to"))  # fmt: skip
    return out


def _translation(mesh: MeshModel) -> list[Message]:
    """Translator warnings (what proxies will not get) and the route-table analyses."""
    from meshcore.tools.routes import route_messages
    from meshcore.xds.translator import Translator

    translator = Translator()
    found = [m.from_problem(m.TRANSLATION_WARNING, p) for p in translator.load_problems(mesh)]
    return found + route_messages(mesh, translator)
