"""``meshcore describe``: a readable summary of a loaded mesh (the demo's first step)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

from meshcore.config import MeshModel, validate
from meshcore.config.values import thaw


def describe(paths: Sequence[str], *, domain: str = "cluster.local", output: str = "text") -> int:
    from meshcore.cli import with_translation_checks

    report = with_translation_checks(validate(paths, domain=domain))
    for p in report.problems:
        print(f"{p.severity}: {p}", file=sys.stderr)
    if report.model is None:
        print("invalid configuration: nothing to describe", file=sys.stderr)
        return 1
    if output == "text":
        print(render(report.model))
    else:
        from meshcore.cli import emit

        emit(summary(report.model), output)
    return 0


def summary(mesh: MeshModel) -> dict[str, Any]:
    """The mesh as ``describe -o json|yaml`` prints it (and as the text form reads it)."""
    services = []
    for svc in sorted(mesh.services, key=lambda s: s.hostname):
        selector = dict(svc.selector)
        dr = mesh.destination_rule_for(svc.hostname)
        subsets = []
        if dr is not None:
            for name, sub in dr.subsets.items():
                n = len(mesh.workloads(svc.namespace, {**svc.selector, **sub.labels}))
                subsets.append({"name": name, "labels": dict(sub.labels), "endpoints": n})
        services.append({
            "hostname": svc.hostname,
            "ports": [{"name": p.name, "port": p.port, "target_port": p.target_port}
                      for p in svc.ports],
            "endpoints": [{"address": w.address, "name": w.name,
                           "labels": dict(sorted(w.workload_labels.items())),
                           "service_account": w.service_account}
                          for w in mesh.endpoints(svc)],
            "subsets": subsets,
            "load_balancer": thaw(dr.traffic_policy.get("loadBalancer")) if dr else None,
            "routes": [{"name": route.get("name") or str(i), "virtual_service":
                        f"{vs.namespace}/{vs.name}", "summary": _route(route)}
                       for vs in mesh.virtual_services_for(svc.hostname)
                       for i, route in enumerate(vs.http)],
            "mtls": mesh.mtls_mode(svc.namespace, selector),
            "authorization_policies": [{"action": pol.action, "policy":
                                        f"{pol.namespace}/{pol.name}", "rules": len(pol.rules)}
                                       for pol in mesh.authorization_policies_for(svc.namespace, selector)],
        })  # fmt: skip
    return {
        "domain": mesh.domain,
        "resources": {k: n for k, n in mesh.summary().items() if n},
        "services": services,
        "service_entries": [{"name": f"{se.namespace}/{se.name}", "hosts": list(se.hosts),
                             "location": se.location, "resolution": se.resolution}
                            for se in mesh.service_entries],
    }  # fmt: skip


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def render(mesh: MeshModel) -> str:
    data = summary(mesh)
    counts = ", ".join(f"{n} {k}" for k, n in data["resources"].items())
    lines = [f"mesh ({data['domain']}): {counts or 'empty'}"]
    for svc in data["services"]:
        ports = ", ".join(
            f"{p['name'] or '-'}:{p['port']}->{p['target_port']}" for p in svc["ports"]
        )
        lines.append(f"\nservice {svc['hostname']}  ports [{ports}]")
        for w in svc["endpoints"]:
            labels = ",".join(f"{k}={v}" for k, v in w["labels"].items())
            lines.append(
                f"  endpoint {w['address']:<15} {w['name']} ({labels}) sa={w['service_account']}"
            )
        for sub in svc["subsets"]:
            sel = ",".join(f"{k}={v}" for k, v in sorted(sub["labels"].items()))
            lines.append(f"  subset {sub['name']} ({sel}): {_plural(sub['endpoints'], 'endpoint')}")
        if svc["load_balancer"]:
            lines.append(
                f"  load balancing: {svc['load_balancer'].get('simple') or 'consistent hash'}"
            )
        for r in svc["routes"]:
            lines.append(f"  route {r['name']} ({r['virtual_service']}): {r['summary']}")
        lines.append(f"  mTLS: {svc['mtls']}")
        for pol in svc["authorization_policies"]:
            lines.append(
                f"  authz {pol['action']} {pol['policy']}: {_plural(pol['rules'], 'rule')}"
            )
    for se in data["service_entries"]:
        lines.append(
            f"\nservice entry {se['name']}: {', '.join(se['hosts'])} ({se['location']}, {se['resolution']})"
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
