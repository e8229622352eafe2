"""The scripted tour: traffic, checks and a live change on a started demo mesh."""

from __future__ import annotations

import asyncio
import http.client
import http.server
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from meshcore.demo.expect import CanaryRoute, expectations
from meshcore.demo.mesh import FRONTEND_PATH, DemoMesh, Traffic, Workload


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class DemoReport:
    checks: list[Check] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def check(self, name: str, passed: bool, detail: str) -> bool:
        self.checks.append(Check(name, passed, detail))
        return passed

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (``demo -o json|yaml``, the status page's /report.json)."""
        data = {"passed": self.passed, "checks": [vars(c) for c in self.checks],
                "facts": self.facts}  # fmt: skip
        result: dict[str, Any] = json.loads(json.dumps(data, default=str))
        return result


# --- the tour ------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


async def tour(dm: DemoMesh, report: DemoReport, requests: int = 400) -> None:
    """Traffic, checks and a live change on a started mesh; results go into ``report``."""
    say = dm.progress
    reviews = [w.name for w in dm.workloads if w.kind == "reviews"]
    ratings = [w.name for w in dm.workloads if w.kind == "ratings"]

    expect = expectations(dm.mesh, dm.frontend().namespace)
    canary = expect.canary

    # 1. The canary split, as the config writes it (examples/: 90/10).
    t = await asyncio.to_thread(dm.send, requests)
    report.facts["canary_before"] = dict(t.versions)
    report.facts["latency_ms"] = {"p50": t.percentile(0.5), "p99": t.percentile(0.99)}
    if canary is not None:
        report.check(f"canary {canary.label}", _split_ok(t, canary.weights) and t.ok == t.total,
                     _split(t, canary.weights) + f"; {t.ok}/{t.total} ok end to end" + _failures(t))  # fmt: skip
    else:
        report.check("traffic end to end (no canary in the config)", t.ok == t.total,
                     f"{dict(t.versions)}; {t.ok}/{t.total} ok" + _failures(t))  # fmt: skip
    say(f"canary: {dict(t.versions)} of {t.total} requests")
    if dm.ingress is not None:
        # The requests entered through the ingress gateway (Envoy's own count on its listener).
        served = dm.ingress.gateway_requests()
        report.facts["ingress_requests_2xx"] = served
        report.check("ingress gateway in front of frontend", served >= t.ok > 0,
                     f"{served} requests answered 2xx on the gateway's listener {dm.entry} "
                     f"(Gateway frontend-gateway, VirtualService bound to it)")  # fmt: skip

    # 2. Header routing: testers always get their subset.
    if expect.header is not None:
        h = expect.header
        t = await asyncio.to_thread(dm.send, 50, FRONTEND_PATH, {h.header: h.value})
        report.check(f"header route {h.label}", t.versions == Counter({h.subset: t.total}),
                     f"{dict(t.versions)}")  # fmt: skip
        say(f"header route: {h.header}={h.value} → {dict(t.versions)}")

    # 3. Retries and outlier detection on the flaky ratings instance.
    injected = sum(dm.apps[n].stats.failures_injected for n in ratings if n in dm.apps)
    retried = dm.total(reviews, "retries", "ratings")
    ejected = dm.total(reviews, "ejections", "ratings")
    report.facts["flaky"] = {"injected_503": injected, "envoy_retries": retried,
                             "outlier_ejections": ejected}  # fmt: skip
    report.check("retries hide the flaky ratings instance", injected > 0 and retried > 0,
                 f"ratings answered 503 {injected} times; reviews' sidecars retried {retried} "
                 f"times and ejected an instance {ejected} times; callers saw no failure")  # fmt: skip
    say(f"retries: {injected} injected 503s, {retried} retries, {ejected} ejections")

    # 3b. With replicas: one control-plane replica is killed; its sidecars move to the others
    # (the checks after this one run on the survivors).
    if dm.replicas > 1:
        await _kill_a_replica(dm, report)

    # 4. Authorization: a denied path, and a caller that is not allowed.
    t = await asyncio.to_thread(dm.send, 5, "/probe/ratings-admin")
    admin = Counter(b.get("ratings") for b in t.bodies)
    t2 = await asyncio.to_thread(dm.send, 5, "/probe/ratings")
    direct = Counter(b.get("ratings") for b in t2.bodies)
    policies: Counter[str] = Counter()
    deadline = time.monotonic() + 3  # Envoy flushes access logs every second
    while sum(policies.values()) < 10 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        policies = Counter(d for n in ratings for d in dm.sidecars[n].denials())
    report.facts["denials"] = dict(policies)
    report.check("AuthorizationPolicy denies /admin", admin == Counter({403: 5}),
                 f"reviews → ratings /admin: {dict(admin)}")  # fmt: skip
    report.check("only reviews may call ratings", direct == Counter({403: 5}),
                 f"frontend → ratings: {dict(direct)}")  # fmt: skip
    say(f"authorization: /admin → {dict(admin)}, frontend → ratings → {dict(direct)}; "
        f"policies: {dict(policies)}")  # fmt: skip

    # 5. mTLS between sidecars, and plaintext refused under STRICT.
    handshakes = {n: dm.sidecars[n].tls_handshakes() for n in reviews + ratings}
    plaintext = _plaintext_refused(dm.workload(ratings[0]))
    what = "handshakes" if dm.proxy_kind == "envoy" else "requests from verified peers"
    report.facts["mtls"] = {"inbound_tls_handshakes": handshakes, "plaintext_refused": plaintext}
    report.check("mTLS between sidecars", all(v > 0 for v in handshakes.values()) and plaintext,
                 f"inbound mTLS ({what}) {handshakes}; plaintext to ratings "
                 f"{'refused' if plaintext else 'ACCEPTED'}")  # fmt: skip
    say(f"mTLS: inbound {what} {handshakes}; plaintext {'refused' if plaintext else 'accepted'}")

    # 6. A live change: the canary's subsets evenly weighted (examples/: 50/50).
    if canary is not None:
        await _live_change(dm, report, canary, requests)
    report.facts["control_plane"] = _convergence_metric(dm.control_plane_metrics())

    if dm.proxy_kind != "envoy":
        return  # the reference proxy does not trace
    # 7. Tracing: Envoy's Zipkin tracer, configured by the control plane from MeshConfig.
    await asyncio.sleep(1.2)  # Envoy flushes spans every second
    traces = dm.zipkin.traces()
    services = {
        str((sp.get("localEndpoint") or {}).get("serviceName", "")) for spans in traces.values()
        for sp in spans
    }  # fmt: skip
    deep = sum(1 for spans in traces.values() if len(spans) >= 4)
    report.facts["tracing"] = {"traces": len(traces), "spans": sum(map(len, traces.values())),
                               "traces_with_4_or_more_spans": deep, "services": sorted(services)}  # fmt: skip
    report.check("traces reach the Zipkin collector", deep > 0,
                 f"{len(traces)} traces, {deep} through all three services; "
                 f"services {sorted(services)}")  # fmt: skip
    say(f"tracing: {len(traces)} traces, {deep} spanning frontend → reviews → ratings")


async def _kill_a_replica(dm: DemoMesh, report: DemoReport) -> None:
    # The replica serving the most sidecars.
    on = {i: await asyncio.to_thread(dm.proxies_on, i) for i in sorted(dm.replica_procs)}
    victim = max(on, key=lambda i: len(on[i]))
    everyone = {sc.workload.node_id for sc in dm.sidecars.values()}
    killed = time.monotonic()
    await asyncio.to_thread(dm.kill_replica, victim)
    back: set[str] = set()
    while time.monotonic() - killed < 20:
        back = await asyncio.to_thread(dm.connected_proxies)
        if back >= everyone:
            break
        await asyncio.sleep(0.1)
    took = (time.monotonic() - killed) * 1000
    moved = len(on[victim])
    report.facts["replica_killed"] = {"replica": victim, "its_sidecars": moved,
                                      "reconnected": len(back & everyone), "of": len(everyone),
                                      "ms": round(took)}  # fmt: skip
    report.check("a control-plane replica killed mid-tour",
                 back >= everyone and moved > 0,
                 f"replica {victim} served {moved} sidecars; {len(back & everyone)}/"
                 f"{len(everyone)} on the other {dm.replicas - 1} replicas within {took:.0f} ms")  # fmt: skip
    dm.progress(f"replica {victim} ({moved} sidecars) killed: {len(back & everyone)}/"
                f"{len(everyone)} sidecars on the others after {took:.0f} ms")  # fmt: skip


async def _live_change(
    dm: DemoMesh, report: DemoReport, canary: CanaryRoute, requests: int
) -> None:
    weights = canary.even()
    label = "/".join(map(str, weights.values()))
    before = await asyncio.to_thread(dm.config_updates)
    written = time.monotonic()
    dm.set_canary(canary, weights)
    converged: dict[str, float] = {}
    while len(converged) < len(before) and time.monotonic() - written < 15:
        now = await asyncio.to_thread(dm.config_updates)
        for name, count in now.items():
            if count > before[name] and name not in converged:
                converged[name] = (time.monotonic() - written) * 1000
        await asyncio.sleep(0.02)
    report.facts["convergence_ms"] = converged
    slowest = max(converged.values(), default=0)
    dm.progress(f"canary → {label}: {len(converged)} sidecars applied it within {slowest:.0f} ms "
                "of the file write")  # fmt: skip
    t = await asyncio.to_thread(dm.send, requests)
    report.facts["canary_after"] = dict(t.versions)
    report.check("live change converges", len(converged) == len(before),
                 f"{len(converged)}/{len(before)} sidecars, slowest {slowest:.0f} ms after the write")  # fmt: skip
    report.check(f"canary {label} after the change", _split_ok(t, weights) and t.ok == t.total,
                 _split(t, weights) + _failures(t))  # fmt: skip
    dm.progress(f"canary after the change: {dict(t.versions)}")


def _split_ok(t: Traffic, weights: dict[str, int]) -> bool:
    """Every subset's share within 4 standard deviations of its weight (at least 6 points)."""
    n, total = sum(t.versions.values()), sum(weights.values())
    if not n or not total:
        return False
    for subset, w in weights.items():
        p = w / total
        if abs(t.share(subset) - p) > max(0.06, 4 * math.sqrt(p * (1 - p) / n)):
            return False
    return set(t.versions) <= set(weights)


def _split(t: Traffic, weights: dict[str, int]) -> str:
    """'361 v1 / 39 v2 of 400 (v2 9.8%, expected 10%)': the last subset's share named."""
    last, total = list(weights)[-1], sum(weights.values())
    counts = " / ".join(f"{t.versions[s]} {s}" for s in weights)
    expected = 100 * weights[last] / total if total else 0
    return (f"{counts} of {t.total} ({last} {_pct(t.share(last))}, "
            f"expected {expected:g}%)")  # fmt: skip


def _failures(t: Traffic) -> str:
    """The first requests that did not get through, for the report."""
    bad = [b for b in t.bodies if b.get("reviews_status") != 200 or b.get("ratings") != 200]
    return f"; failed: {bad[:3]}" if bad else ""


def _plaintext_refused(w: Workload) -> bool:
    """A plaintext HTTP request straight to the workload's inbound listener must fail."""
    conn = http.client.HTTPConnection(w.address, w.port, timeout=3)
    try:
        conn.request("GET", "/ratings", headers={"Host": "ratings"})
        conn.getresponse()
        return False  # any HTTP answer at all means the listener took plaintext
    except (OSError, http.client.HTTPException):
        return True
    finally:
        conn.close()


def _convergence_metric(text: str) -> dict[str, float]:
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("pilot_proxy_convergence_time_sum"):
            total = float(line.split()[-1])
        elif line.startswith("pilot_proxy_convergence_time_count"):
            count = float(line.split()[-1])
    return {"pushes_acked": count, "mean_ms": 1000 * total / count if count else 0.0}
