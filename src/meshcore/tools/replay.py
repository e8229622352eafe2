"""``meshcore authz replay``: recorded requests through the old and the new
AuthorizationPolicies, with the RBAC engines' batch evaluator (numpy columns).

The requests are the inbound lines of sidecar access logs (Envoy's JSON as meshcore configures
it, or Istio's default text format): the destination is the line's
``downstream_local_address`` (a workload's address and port), the source its
``downstream_remote_address``. Access logs carry no peer identity: a source address that is a
workload's is taken to present that workload's SPIFFE id over mTLS (what its sidecar does);
any other source is plaintext with no principal. Each destination is decided by the filters its
own inbound listener gets (the translator's, compiled as the data plane compiles them).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from meshcore.config import MeshModel
from meshcore.security.authz import AuthzChain

ALLOW, DENY, CUSTOM = 1, 0, 2  # CUSTOM: sent to the ext_authz provider (its answer unknown)
DECISIONS = {ALLOW: "ALLOW", DENY: "DENY", CUSTOM: "CUSTOM"}

# Istio's default text format (meshcore.config.meshconfig.DEFAULT_TEXT_FORMAT).
_TEXT = re.compile(
    r'^\[(?P<start_time>[^\]]*)\] "(?P<method>\S+) (?P<path>\S+) [^"]*" \S+ \S+ \S+ \S+ '
    r'"[^"]*" \S+ \S+ \S+ \S+ "[^"]*" "[^"]*" "[^"]*" "(?P<authority>[^"]*)" "[^"]*" '
    r"(?P<upstream_cluster>\S+) \S+ (?P<downstream_local_address>\S+) "
    r"(?P<downstream_remote_address>\S+) \S+ \S+\s*$"
)
_FIELDS = ("start_time", "method", "path", "authority", "upstream_cluster",
           "downstream_local_address", "downstream_remote_address")  # fmt: skip


@dataclass(slots=True)
class Requests:
    """Parsed log lines as columns (numpy arrays of str, ports as int)."""

    method: npt.NDArray[Any]
    path: npt.NDArray[Any]
    authority: npt.NDArray[Any]
    source_ip: npt.NDArray[Any]
    destination_ip: npt.NDArray[Any]
    destination_port: npt.NDArray[np.int64]
    lines: npt.NDArray[np.int64]  # the 1-based line number of each request
    skipped: int = 0  # lines that are not requests (unparsable, TCP, no address)

    def __len__(self) -> int:
        return len(self.method)


def _split(address: str) -> tuple[str, int] | None:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def parse_log(lines: Iterable[str], *, since: str | None = None) -> Requests:
    """JSON lines and Istio's text lines, mixed or not; ``since``: skip lines whose
    ``start_time`` sorts before it (ISO 8601, as Envoy writes it)."""
    cols: dict[str, list[Any]] = {k: [] for k in ("method", "path", "authority", "source_ip",
                                                  "destination_ip", "destination_port", "lines")}  # fmt: skip
    skipped = 0
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        rec: Mapping[str, Any] | None = None
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            rec = obj if isinstance(obj, dict) else None
        else:
            m = _TEXT.match(line)
            rec = m.groupdict() if m else None
        if rec is None:
            skipped += 1
            continue
        values = {k: str(rec.get(k) or "-") for k in _FIELDS}
        if since is not None and values["start_time"] < since:
            continue
        dst, src = (
            _split(values["downstream_local_address"]),
            _split(values["downstream_remote_address"]),
        )
        if dst is None or src is None or values["method"] == "-":
            skipped += 1
            continue
        cols["method"].append(values["method"])
        cols["path"].append(values["path"])
        cols["authority"].append(values["authority"])
        cols["source_ip"].append(src[0])
        cols["destination_ip"].append(dst[0])
        cols["destination_port"].append(dst[1])
        cols["lines"].append(n)
    def text(key: str) -> npt.NDArray[Any]:
        return np.array(cols[key], dtype=str)

    return Requests(
        text("method"), text("path"), text("authority"), text("source_ip"),
        text("destination_ip"), np.array(cols["destination_port"], dtype=np.int64),
        np.array(cols["lines"], dtype=np.int64), skipped,
    )  # fmt: skip


def _istio_id(raw: str) -> str:
    start = raw.find("ns[")
    return raw[start:] if start > 0 else raw


def decide_batch(chain: AuthzChain | None, columns: Mapping[str, Any], n: int
                 ) -> tuple[npt.NDArray[np.int8], npt.NDArray[Any]]:  # fmt: skip
    """Istio's layered decision for ``n`` requests given as columns (RbacEngine.evaluate_batch
    keywords): decision codes (ALLOW, DENY, CUSTOM) and the deciding policy ids (None: no
    policy matched). No chain: no listener, denied (fail closed)."""
    code = np.full(n, ALLOW, dtype=np.int8)
    policy = np.full(n, None, dtype=object)
    if chain is None:
        code[:] = DENY
        return code, policy
    decided = np.zeros(n, dtype=bool)
    pending = np.zeros(n, dtype=bool)
    pending_id = np.full(n, None, dtype=object)
    allowed_by = np.full(n, None, dtype=object)
    for engine, layer, custom_shadow in chain.layers:
        if engine is None:  # ext_authz: a CUSTOM policy matched earlier
            hit = pending & ~decided
            code[hit], policy[hit], decided[hit] = CUSTOM, pending_id[hit], True
            pending[:] = False
            continue
        r = engine.evaluate_batch(**columns)
        ids = np.array([None, *(_istio_id(p) for p in engine.policy_ids)], dtype=object)
        shadow_ids = np.array([None, *(_istio_id(p) for p in engine.shadow_policy_ids)],
                              dtype=object)  # fmt: skip
        if custom_shadow:
            pending = r["shadow_policy"] >= 0
            pending_id = shadow_ids[r["shadow_policy"] + 1]
            continue
        if layer is None:
            continue
        deny = ~r["allowed"] & ~decided
        code[deny], policy[deny], decided[deny] = DENY, ids[r["policy"][deny] + 1], True
        if layer == "ALLOW":
            hit = r["allowed"] & (r["policy"] >= 0)
            allowed_by[hit] = ids[r["policy"][hit] + 1]
    rest = ~decided
    policy[rest] = allowed_by[rest]
    return code, policy


@dataclass(frozen=True, slots=True)
class Change:
    line: int
    method: str
    path: str
    authority: str
    source: str  # the principal, or the source address
    destination: str
    old: str
    new: str
    old_policy: str | None
    new_policy: str | None


@dataclass(frozen=True, slots=True)
class ReplayReport:
    requests: int
    skipped: int
    changes: tuple[Change, ...]
    not_replayed: int = 0  # requests to no workload of the meshes
    groups: Mapping[tuple[str, str, str, str], int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The stable ``-o json`` schema (see the README)."""
        return {
            "requests": self.requests, "skipped_lines": self.skipped,
            "not_replayed": self.not_replayed, "changed": len(self.changes),
            "groups": [{"policy": p, "source": s, "old": o, "new": nw, "count": c}
                       for (p, s, o, nw), c in sorted(self.groups.items())],
            "changes": [{"line": c.line, "method": c.method, "path": c.path,
                         "authority": c.authority, "source": c.source,
                         "destination": c.destination, "old": c.old, "new": c.new,
                         "old_policy": c.old_policy, "new_policy": c.new_policy}
                        for c in self.changes],
        }  # fmt: skip


def _principals(mesh: MeshModel) -> dict[str, str]:
    return {w.address: f"spiffe://{mesh.domain}/ns/{w.namespace}/sa/{w.service_account}"
            for w in mesh.workload_entries}  # fmt: skip


def _chains(mesh: MeshModel, address: str) -> Mapping[int, AuthzChain | None] | None:
    """The inbound authorization of the workload at ``address``, by port (None: none there)."""
    from meshcore.tools.explain import planes_from_mesh

    w = next((w for w in mesh.workload_entries if w.address == address), None)
    if w is None:
        return None
    node = f"sidecar~{w.address}~{w.name}.{w.namespace}~{w.namespace}.svc.{mesh.domain}"
    cfg = planes_from_mesh(mesh)(node).config
    return {port: lst.authz for port, lst in cfg.inbound.items()}


def replay(old: MeshModel, new: MeshModel, requests: Requests) -> ReplayReport:
    """Every request decided with ``old``'s and ``new``'s policies; the changed ones."""
    principals = {**_principals(old), **_principals(new)}
    changes: list[Change] = []
    groups: Counter[tuple[str, str, str, str]] = Counter()
    not_replayed = 0
    n = len(requests)
    principal = np.array([principals.get(ip) for ip in requests.source_ip.tolist()], dtype=object)
    keys = np.char.add(np.char.add(requests.destination_ip, "|"),
                       requests.destination_port.astype(str)) if n else np.array([], dtype=str)  # fmt: skip
    for key in np.unique(keys):
        ip, _, port_s = str(key).rpartition("|")
        port = int(port_s)
        rows = np.nonzero(keys == key)[0]
        a, b = _chains(old, ip), _chains(new, ip)
        if a is None and b is None:
            not_replayed += len(rows)
            continue
        p = principal[rows]
        columns = {
            "method": requests.method[rows], "path": requests.path[rows],
            "authority": requests.authority[rows], "source_ip": requests.source_ip[rows],
            "remote_ip": requests.source_ip[rows], "direct_remote_ip": requests.source_ip[rows],
            "destination_ip": ip, "destination_port": port,
            "principal": p.tolist(), "uri_sans": [[x] if x else None for x in p.tolist()],
            "tls": np.array([x is not None for x in p.tolist()]),
        }  # fmt: skip
        old_code, old_pol = decide_batch((a or {}).get(port), columns, len(rows))
        new_code, new_pol = decide_batch((b or {}).get(port), columns, len(rows))
        diff = np.nonzero((old_code != new_code) | (old_pol != new_pol))[0]
        for i in diff.tolist():
            r = int(rows[i])
            src = p[i] or str(requests.source_ip[r])
            c = Change(int(requests.lines[r]), str(requests.method[r]), str(requests.path[r]),
                       str(requests.authority[r]), src, f"{ip}:{port}",
                       DECISIONS[int(old_code[i])], DECISIONS[int(new_code[i])],
                       old_pol[i], new_pol[i])  # fmt: skip
            changes.append(c)
            groups[(str(c.new_policy or c.old_policy or "(no policy matched)"), src, c.old,
                    c.new)] += 1  # fmt: skip
    changes.sort(key=lambda c: c.line)
    return ReplayReport(n, requests.skipped, tuple(changes), not_replayed, dict(groups))


def render(report: ReplayReport, *, limit: int = 20) -> str:
    lines = [f"{report.requests} requests replayed ({report.skipped} lines skipped, "
             f"{report.not_replayed} to no workload), {len(report.changes)} decisions change"]  # fmt: skip
    if report.groups:
        rows = [("POLICY", "SOURCE", "OLD", "NEW", "COUNT")]
        rows += [(p, s, o, nw, str(c)) for (p, s, o, nw), c in sorted(report.groups.items())]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines += ["  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)).rstrip()
                  for r in rows]  # fmt: skip
    for c in report.changes[:limit]:
        lines.append(f"line {c.line}: {c.method} {c.authority}{c.path} from {c.source}: "
                     f"{c.old} -> {c.new} ({c.new_policy or c.old_policy or 'no policy matched'})")  # fmt: skip
    if len(report.changes) > limit:
        lines.append(f"... {len(report.changes) - limit} more (-o json lists them all)")
    return "\n".join(lines)


def read_lines(paths: Sequence[str]) -> list[str]:
    out: list[str] = []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            out.extend(f)
    return out


def with_policies(mesh: MeshModel, policies: MeshModel) -> MeshModel:
    """``mesh`` with its AuthorizationPolicies replaced by those of ``policies``."""
    kept = [r for r in mesh.resources if r.kind != "AuthorizationPolicy"]
    new = [r for r in policies.resources if r.kind == "AuthorizationPolicy"]
    return MeshModel([*kept, *new], domain=mesh.domain, root_namespace=mesh.root_namespace)
