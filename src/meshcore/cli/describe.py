"""``meshcore describe``: a readable summary of a loaded mesh (the demo's first step)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

from meshcore.config import MeshModel, validate
from meshcore.xds.translator import with_load_problems


def describe(paths: Sequence[str], *, domain: str = "cluster.local") -> int:
    report = with_load_problems(validate(paths, domain=domain))
    for p in report.problems:
        print(f"{p.severity}: {p}", file=sys.stderr)
    if report.model is None:
        print("invalid configuration: nothing to describe", file=sys.stderr)
        return 1
    print(render(report.model))
    return 0


def render(mesh: MeshModel) -> str:
    lines: list[str] = []
    counts = ", ".join(f"{n} {k}" for k, n in mesh.summary().items() if n)
    lines.append(f"mesh ({mesh.domain}): {counts or 'empty'}")
    for svc in sorted(mesh.services, key=lambda s: s.hostname):
        ports = ", ".join(f"{p.name or '-'}:{p.port}->{p.target_port}" for p in svc.ports)
        lines.append(f"\nservice {svc.hostname}  ports [{ports}]")
        for w in mesh.endpoints(svc):
            labels = ",".join(f"{k}={v}" for k, v in sorted(w.workload_labels.items()))
            lines.append(f"  endpoint {w.address:<15} {w.name} ({labels}) sa={w.service_account}")
        dr = mesh.destination_rule_for(svc.hostname)
        if dr is not None:
            for name, sub in dr.subsets.items():
                sel = ",".join(f"{k}={v}" for k, v in sorted(sub.labels.items()))
                n = len(mesh.workloads(svc.namespace, {**svc.selector, **sub.labels}))
                lines.append(f"  subset {name} ({sel}): {n} endpoint{'s' * (n != 1)}")
            lb = dr.traffic_policy.get("loadBalancer", {})
            if lb:
                lines.append(f"  load balancing: {lb.get('simple') or 'consistent hash'}")
        for vs in mesh.virtual_services_for(svc.hostname):
            for i, route in enumerate(vs.http):
                lines.append(
                    f"  route {route.get('name') or i} ({vs.namespace}/{vs.name}): {_route(route)}"
                )
        selector = dict(svc.selector)
        lines.append(f"  mTLS: {mesh.mtls_mode(svc.namespace, selector)}")
        for pol in mesh.authorization_policies_for(svc.namespace, selector):
            n = len(pol.rules)
            lines.append(
                f"  authz {pol.action} {pol.namespace}/{pol.name}: {n} rule{'s' * (n != 1)}"
            )
    for se in mesh.service_entries:
        lines.append(
            f"\nservice entry {se.namespace}/{se.name}: {', '.join(se.hosts)} ({se.location}, {se.resolution})"
        )
    return "\n".join(lines)


def _route(route: Mapping[str, Any]) -> str:
    conds = []
    for m in route.get("match", ()):
        parts = [
            f"{field} {kind} {value!r}"
            for field in ("uri", "method", "authority")
            for kind, value in (m.get(field) or {}).items()
        ]
        parts += [f"header {h}" for h in m.get("headers", {})]
        conds.append(" and ".join(parts) or "any")
    when = " or ".join(conds) or "any request"
    if route.get("route"):
        dests = ", ".join(
            f"{d['destination'].get('subset') or d['destination']['host']} {d.get('weight', 100)}%"
            for d in route["route"]
        )
        action = f"-> {dests}"
    elif route.get("redirect"):
        action = "-> redirect"
    else:
        action = "-> direct response"
    extras = []
    if route.get("timeout"):
        extras.append(f"timeout {route['timeout']}")
    if route.get("retries"):
        extras.append(f"retries {route['retries'].get('attempts', 0)}")
    if route.get("fault"):
        extras.append("fault injection")
    return f"{when} {action}" + (f" ({', '.join(extras)})" if extras else "")
