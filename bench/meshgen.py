"""Generates a synthetic mesh as Istio YAML (deterministic): the benchmarks' input."""

from __future__ import annotations

from pathlib import Path

import yaml


def generate_mesh(
    services: int = 1000,
    workloads_per_service: int = 5,
    policies: int = 500,
    namespaces: int = 10,
) -> dict[str, list[dict[str, object]]]:
    """Documents per file name: Services, WorkloadEntries, VirtualServices, DestinationRules,
    AuthorizationPolicies (every fields used as real meshes use them)."""
    out: dict[str, list[dict[str, object]]] = {
        "services.yaml": [], "workloads.yaml": [], "virtualservices.yaml": [],
        "destinationrules.yaml": [], "policies.yaml": [],
    }  # fmt: skip
    for i in range(services):
        ns = f"ns{i % namespaces}"
        name = f"svc{i}"
        out["services.yaml"].append({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"app": name},
                     "ports": [{"name": "http", "port": 8080, "targetPort": 8080}]},
        })  # fmt: skip
        for j in range(workloads_per_service):
            n = i * workloads_per_service + j
            out["workloads.yaml"].append({
                "apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
                "metadata": {"name": f"{name}-{j}", "namespace": ns},
                "spec": {"address": f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}",
                         "labels": {"app": name, "version": f"v{j % 2 + 1}"},
                         "ports": {"http": 8080}, "serviceAccount": name},
            })  # fmt: skip
        out["virtualservices.yaml"].append({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"hosts": [name], "http": [
                {"name": "api", "match": [{"uri": {"prefix": f"/api/{i}"},
                                           "headers": {"x-user": {"regex": "tester-[0-9]+"}}}],
                 "route": [{"destination": {"host": name, "subset": "v2"}}],
                 "retries": {"attempts": 3, "perTryTimeout": "500ms", "retryOn": "5xx,reset"}},
                {"name": "default", "route": [
                    {"destination": {"host": name, "subset": "v1"}, "weight": 90},
                    {"destination": {"host": name, "subset": "v2"}, "weight": 10}],
                 "timeout": "2s"},
            ]},
        })  # fmt: skip
        out["destinationrules.yaml"].append({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"host": name,
                     "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"},
                                       "outlierDetection": {"consecutive5xxErrors": 5,
                                                            "interval": "10s",
                                                            "baseEjectionTime": "30s"},
                                       "tls": {"mode": "ISTIO_MUTUAL"}},
                     "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                 {"name": "v2", "labels": {"version": "v2"}}]},
        })  # fmt: skip
    for k in range(policies):
        ns = f"ns{k % namespaces}"
        target = f"svc{k * services // max(policies, 1)}"
        out["policies.yaml"].append({
            "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": f"policy{k}", "namespace": ns},
            "spec": {"selector": {"matchLabels": {"app": target}},
                     "action": "DENY" if k % 5 == 0 else "ALLOW",
                     "rules": [{"from": [{"source": {"principals": [f"cluster.local/ns/{ns}/sa/client{k}"]}}],
                                "to": [{"operation": {"methods": ["GET", "POST"], "paths": [f"/api/{k}/*"]}}],
                                "when": [{"key": "request.headers[x-tenant]", "values": [f"t{k}"]}]}]},
        })  # fmt: skip
    return out


def write_mesh(directory: Path, **kwargs: int) -> int:
    """Writes the mesh as multi-document YAML files; returns the number of documents."""
    directory.mkdir(parents=True, exist_ok=True)
    count = 0
    for name, docs in generate_mesh(**kwargs).items():
        (directory / name).write_text(yaml.safe_dump_all(docs, sort_keys=False))
        count += len(docs)
    return count


def mesh_text(services: int) -> str:
    """The generated mesh (``services`` services, half as many policies) as one
    multi-document YAML text: about 2.2 KB per service."""
    docs = [
        doc
        for file_docs in generate_mesh(services=services, policies=services // 2).values()
        for doc in file_docs
    ]
    return yaml.dump_all(docs, Dumper=yaml.CSafeDumper, sort_keys=False)
