"""``meshcore demo --capture``: the demo mesh as Istio runs it, in pods (network namespaces) with
Istio's iptables rules and real Envoy sidecars started by ``meshcore agent --capture``.

The apps know nothing of the mesh: the frontend calls ``http://reviews:9080/reviews`` and
reviews calls ``http://ratings:9080/ratings`` by name (the pods' hosts files give the services'
VIPs); the kernel hands those connections to Envoy on 15001, the callee's kernel to Envoy on
15006. The tour: the canary split and the header route of the examples' VirtualService, retries
hiding a flaky ratings instance, an AuthorizationPolicy denying the frontend's direct call to
ratings, STRICT mTLS refusing a pod without a sidecar and a live change to PERMISSIVE
accepting it, a live canary change; then the capture counters (packets the ISTIO_* chains
redirected, connections Envoy's listeners took) and the traces Envoy sent to a Zipkin collector
in the istiod pod. Needs root and network namespaces.
"""

from __future__ import annotations

import copy
import math
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

import yaml

from meshcore.capture.podmesh import PodMesh, PodWorkload, obj, pod_mesh, usable_envoy
from meshcore.config import load
from meshcore.demo.expect import expectations
from meshcore.demo.mesh import EXAMPLES, FLAKY_INSTANCE, FLAKY_RATIO, FRONTEND_PATH, Progress
from meshcore.demo.tour import DemoReport

__all__ = ["run_capture_demo"]

CALLS = {"frontend": "http://reviews:9080/reviews", "reviews": "http://ratings:9080/ratings"}
OUTSIDER = "outsider"  # a pod without a sidecar


def _documents(config: Path) -> list[dict[str, Any]]:
    """The config's resources but its WorkloadEntries (written from the pods instead)."""
    docs: list[dict[str, Any]] = []
    for path in sorted(config.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") != "WorkloadEntry":
                docs.append(doc)
    return docs


def _workloads(config: Path) -> list[PodWorkload]:
    out = []
    for w in load(config).workload_entries:
        app = w.workload_labels.get("app", w.name)
        ports = w.spec.get("ports") or {}
        port = int(next(iter(ports.values()), 9080))
        flaky = FLAKY_RATIO if w.name == FLAKY_INSTANCE else 0.0
        out.append(PodWorkload(w.name, app, w.service_account or "default",
                               {k: v for k, v in w.workload_labels.items() if k != "app"},
                               port, CALLS.get(app, ""), flaky))  # fmt: skip
    return out


def run_capture_demo(envoy: str, *, out: TextIO | None = None, requests: int = 200) -> int:
    """The capture tour on the examples mesh; 0 when every check passed."""
    out = out if out is not None else sys.stdout
    progress = Progress()
    report = DemoReport()
    progress("layout: capture (pods, Istio's iptables rules, virtualOutbound/virtualInbound)")
    docs = _documents(EXAMPLES)
    with tempfile.TemporaryDirectory(prefix="mc-demo-envoy-") as tmp:
        envoy = usable_envoy(Path(tmp), envoy)
        with pod_mesh(_workloads(EXAMPLES), docs, envoy, (OUTSIDER,), progress=progress,
                      tracing=True) as mesh:  # fmt: skip
            _tour(mesh, docs, report, progress, requests)
            _counters(mesh, report)
            _traces(mesh, report, progress)
    _print(report, out)
    return 0 if report.passed else 1


def _frontend(mesh: PodMesh) -> PodWorkload:
    return next(w for w in mesh.workloads.values() if w.app == "frontend")


def _versions(results: list[dict[str, Any]]) -> Counter[str]:
    found: Counter[str] = Counter()
    for r in results:
        nxt = r.get("body", {}).get("next", {}) if isinstance(r.get("body"), dict) else {}
        found[str(nxt.get("version", "?"))] += 1
    return found


def _tour(
    mesh: PodMesh,
    docs: list[dict[str, Any]],
    report: DemoReport,
    say: Progress,
    requests: int,
) -> None:
    front = _frontend(mesh)
    entry = f"http://127.0.0.1:{front.port}{FRONTEND_PATH}"  # into the frontend app, as an ingress
    expect = expectations(load(mesh.config))
    say(f"sending {requests} requests into the frontend (it calls reviews and ratings by name)")
    sent = mesh.get(front.the_pod(), entry, requests)
    ok = sum(1 for r in sent if r["status"] == 200)
    versions = _versions(sent)
    ms = sorted(r["ms"] for r in sent)
    report.facts["latency_ms"] = {"p50": ms[len(ms) // 2], "p99": ms[int(len(ms) * 0.99) - 1]}
    report.facts["canary"] = dict(versions)
    names = {r["body"]["next"]["name"] for r in sent if r["status"] == 200}
    report.check("apps call services by plain name", ok > 0 and names == {"reviews"},
                 f"frontend → http://reviews:9080/ → http://ratings:9080/: {ok}/{len(sent)}"
                 " answered, no app was told of a sidecar")  # fmt: skip
    ejected = sum(
        v for w in mesh.workloads.values() if w.app == "reviews"
        for k, v in mesh.stats(w, r"outlier_detection\.ejections_enforced_total$").items()
        if "ratings" in k
    )  # fmt: skip
    report.facts["outlier_ejections"] = ejected
    retried = sum(
        v for w in mesh.workloads.values() if w.app == "reviews"
        for k, v in mesh.stats(w, r"upstream_rq_retry$").items() if "ratings" in k
    )  # fmt: skip
    failed = [r.get("body") or r.get("error") for r in sent if r["status"] != 200]
    report.check("retries hide the flaky ratings instance", not failed and retried > 0,
                 f"{FLAKY_INSTANCE} fails {FLAKY_RATIO:.0%} of its requests; reviews' sidecars"
                 f" retried {retried} times and ejected an instance {ejected} times;"
                 f" {ok}/{len(sent)} ok end to end" + (f"; failed: {failed[:3]}" if failed else ""))  # fmt: skip
    if expect.canary is not None:
        c = expect.canary
        report.check(f"canary {c.label}", _split_ok(versions, c.weights, ok),
                     f"{dict(versions)} of {ok}")  # fmt: skip
    if expect.header is not None:
        h = expect.header
        got = _versions(mesh.get(front.the_pod(), entry, 30, **{h.header: h.value}))
        report.check(f"header route {h.label}", got == Counter({h.subset: 30}), f"{dict(got)}")
    say("authorization: the frontend calls ratings directly (only reviews may)")
    direct = mesh.get(front.the_pod(), "http://ratings:9080/ratings", 5)
    report.check("AuthorizationPolicy denies frontend → ratings",
                 [r["status"] for r in direct] == [403] * 5,
                 f"statuses {[r['status'] for r in direct]} (ratings-allow-reviews)")  # fmt: skip
    _mtls(mesh, docs, report, say)
    if expect.canary is not None:
        _live_canary(mesh, docs, report, say, entry, requests)


def _split_ok(versions: Counter[str], weights: dict[str, int], ok: int) -> bool:
    """Each subset's share within 5 standard deviations (and 1%) of its weight's."""
    total = sum(weights.values()) or 1
    for subset, weight in weights.items():
        share = weight / total
        sigma = math.sqrt(max(share * (1 - share), 1e-9) / max(ok, 1))
        if abs(versions.get(subset, 0) / max(ok, 1) - share) > 5 * sigma + 0.01:
            return False
    return True


def _live_canary(
    mesh: PodMesh,
    docs: list[dict[str, Any]],
    report: DemoReport,
    say: Progress,
    entry: str,
    requests: int,
) -> None:
    """The live change of the loopback tour: the canary's subsets evenly weighted, written to
    the config file the control plane watches, then the split measured again."""
    front = _frontend(mesh).the_pod()
    canary = expectations(load(mesh.config)).canary
    if canary is None:
        return
    weights = canary.even()
    label = "/".join(map(str, weights.values()))
    changed = copy.deepcopy(docs)
    for doc in changed:
        meta = doc.get("metadata") or {}
        if doc.get("kind") == "VirtualService" and meta.get("name") == canary.name:
            for dest in doc["spec"]["http"][canary.index]["route"]:
                dest["weight"] = weights[dest["destination"]["subset"]]
    say(f"live change: the canary to {label}")
    mesh.write("config", changed)
    written = time.monotonic()
    versions: Counter[str] = Counter()
    while time.monotonic() - written < 15:  # bounded: until the split is the new one
        versions = _versions(mesh.get(front, entry, 40))
        if versions.get(list(weights)[-1], 0) >= 10:
            break
    took = time.monotonic() - written
    sent = mesh.get(front, entry, requests)
    ok = sum(1 for r in sent if r["status"] == 200)
    after = _versions(sent)
    report.facts["canary_after"] = dict(after)
    failed = [r.get("body") or r.get("error") for r in sent if r["status"] != 200]
    report.check(f"canary {label} after the change", _split_ok(after, weights, ok) and not failed,
                 f"{dict(after)} of {ok} (applied within {took:.1f} s of the write)"
                 + (f"; failed: {failed[:3]}" if failed else ""))  # fmt: skip
    mesh.write("config", docs)


def _mtls(mesh: PodMesh, docs: list[dict[str, Any]], report: DemoReport, say: Progress) -> None:
    outsider = mesh.net.pods[OUTSIDER]
    reviews = next(w for w in mesh.workloads.values() if w.app == "reviews")
    target = f"http://{reviews.the_pod().ip}:{reviews.port}/reviews"
    say("mTLS: a pod without a sidecar calls reviews in plaintext")
    seen = mesh.app_requests(reviews)
    strict = mesh.get(outsider, target, 3)
    refused = all(r["status"] == 0 for r in strict) and mesh.app_requests(reviews) == seen
    report.check("STRICT refuses plaintext from a pod without a sidecar", refused,
                 f"{[r.get('error', r['status']) for r in strict][:1]}; the app saw none")  # fmt: skip
    say("live change: PeerAuthentication default → PERMISSIVE")
    permissive = [d for d in docs if d.get("kind") != "PeerAuthentication"]
    permissive.append(obj("PeerAuthentication", "default", {"mtls": {"mode": "PERMISSIVE"}},
                          "istio-system"))  # fmt: skip
    before = mesh.listener_changes()
    mesh.write("config", permissive)
    mesh.wait_drained(before)
    accepted: list[dict[str, Any]] = []
    for _ in range(40):  # bounded: the push takes well under a second
        accepted = mesh.get(outsider, target, 1)
        if accepted and accepted[0]["status"] == 200:
            break
    report.check("PERMISSIVE accepts plaintext from a pod without a sidecar",
                 bool(accepted) and accepted[0]["status"] == 200,
                 f"status {accepted[0]['status'] if accepted else '-'} after the change")  # fmt: skip
    say("back to STRICT; waiting for the sidecars to drain the connections of the listeners"
        " the change replaced")  # fmt: skip
    before = mesh.listener_changes()
    mesh.write("config", docs)
    report.facts["strict_restored_and_drained_s"] = round(mesh.wait_drained(before), 2)


def _counters(mesh: PodMesh, report: DemoReport) -> None:
    rows: list[dict[str, Any]] = []
    for w in mesh.workloads.values():
        chains = mesh.capture_counts(w.the_pod())
        listeners = mesh.stats(w, r"^listener\..*downstream_cx_total$")
        outbound = sum(v for k, v in listeners.items() if "_15006" not in k and "admin" not in k
                       and "worker" not in k)  # fmt: skip
        inbound = listeners.get("listener.0.0.0.0_15006.downstream_cx_total", 0)
        rows.append({"pod": w.name,
                     "iptables_outbound_redirected": chains.get("ISTIO_REDIRECT", 0),
                     "iptables_inbound_redirected": chains.get("ISTIO_IN_REDIRECT", 0),
                     "envoy_outbound_connections": outbound,
                     "envoy_virtualInbound_connections": inbound})  # fmt: skip
    report.facts["capture"] = rows
    report.check("every hop was captured",
                 all(r["envoy_virtualInbound_connections"] > 0 for r in rows
                     if not r["pod"].startswith("frontend"))
                 and any(r["iptables_outbound_redirected"] > 0 for r in rows),
                 "see the capture counters")  # fmt: skip


def _traces(mesh: PodMesh, report: DemoReport, say: Progress) -> None:
    """Envoy's Zipkin tracer, configured by the control plane from MeshConfig, sending to the
    collector in the istiod pod: a request is the frontend's outbound span, reviews' inbound and
    outbound ones and ratings' inbound one, joined by the trace headers the apps pass on."""
    traces: dict[str, list[dict[str, Any]]] = {}
    deep = 0
    for _ in range(30):  # bounded: Envoy flushes its spans every second
        traces = mesh.traces()
        deep = sum(1 for spans in traces.values() if len(spans) >= 4)
        if deep:
            break
        time.sleep(0.2)
    services = {
        str((sp.get("localEndpoint") or {}).get("serviceName", "")) for spans in traces.values()
        for sp in spans
    }  # fmt: skip
    report.facts["tracing"] = {"traces": len(traces), "spans": sum(map(len, traces.values())),
                               "traces_with_4_or_more_spans": deep, "services": sorted(services)}  # fmt: skip
    report.check("traces reach the Zipkin collector", deep > 0,
                 f"{len(traces)} traces, {deep} through all three services; "
                 f"services {sorted(services)}")  # fmt: skip
    say(f"tracing: {len(traces)} traces, {deep} spanning frontend → reviews → ratings")


def _print(report: DemoReport, out: TextIO) -> None:
    from meshcore.demo import print_report

    print("\nmeshcore demo (capture layout): the apps used plain service names"
          " (http://reviews:9080/, http://ratings:9080/) and never a sidecar address", file=out)  # fmt: skip
    print("capture counters (ISTIO_* packets = redirected connections; Envoy: virtualOutbound"
          " hands off to 0.0.0.0_PORT, virtualInbound takes 15006)", file=out)  # fmt: skip
    print(f"  {'pod':<14} {'ISTIO_REDIRECT':>14} {'ISTIO_IN_REDIRECT':>17} "
          f"{'outbound cx':>11} {'virtualInbound cx':>17}", file=out)  # fmt: skip
    for r in report.facts.get("capture", []):
        print(f"  {r['pod']:<14} {r['iptables_outbound_redirected']:>14} "
              f"{r['iptables_inbound_redirected']:>17} {r['envoy_outbound_connections']:>11} "
              f"{r['envoy_virtualInbound_connections']:>17}", file=out)  # fmt: skip
    print_report(report, out)
