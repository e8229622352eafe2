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
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
           "downstream_local_address", "downstream_remote_address",
           "downstream_peer_uri_san")  # fmt: skip


@dataclass(slots=True)
class Requests:
    """Parsed log lines: the distinct requests as columns (numpy arrays of str, ports as int),
    and for each line its distinct request (``index``) and line number (``lines``). Recorded
    traffic repeats itself: decisions are made once per distinct request."""

    method: npt.NDArray[Any]
    path: npt.NDArray[Any]
    authority: npt.NDArray[Any]
    source_ip: npt.NDArray[Any]
    destination_ip: npt.NDArray[Any]
    destination_port: npt.NDArray[np.int64]
    index: npt.NDArray[np.intp]  # per line: its distinct request
    lines: npt.NDArray[np.int64]  # per line: its 1-based line number
    skipped: int = 0  # lines that are not requests (unparsable, TCP, no address)
    # The peer's certificate URI SAN where the log has it (meshcore's JSON format: mTLS
    # inbound), else "" (then a source address of a workload stands for its identity).
    peer: npt.NDArray[Any] | None = None

    def __len__(self) -> int:
        return len(self.index)


def _split(address: str) -> tuple[str, int] | None:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def parse_log(lines: Iterable[str], *, since: str | None = None) -> Requests:
    """JSON lines and Istio's text lines, mixed or not; ``since``: skip lines whose
    ``start_time`` sorts before it (ISO 8601, as Envoy writes it)."""
    distinct: dict[tuple[str, str, str, str, str, int, str], int] = {}
    index: list[int] = []
    numbers: list[int] = []
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
        dst = _split(values["downstream_local_address"])
        src = _split(values["downstream_remote_address"])
        if dst is None or src is None or values["method"] == "-":
            skipped += 1
            continue
        peer = values["downstream_peer_uri_san"]
        key = (values["method"], values["path"], values["authority"], src[0], dst[0], dst[1],
               "" if peer == "-" else peer)  # fmt: skip
        index.append(distinct.setdefault(key, len(distinct)))
        numbers.append(n)
    cols = list(zip(*distinct, strict=True)) if distinct else [()] * 7

    def text(i: int) -> npt.NDArray[Any]:
        return np.array(cols[i], dtype=str)

    return Requests(
        text(0), text(1), text(2), text(3), text(4), np.array(cols[5], dtype=np.int64),
        np.array(index, dtype=np.intp), np.array(numbers, dtype=np.int64), skipped, text(6),
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
    """One distinct request (method, path, authority, source, destination) whose decision
    changes, with the log lines that recorded it."""

    lines: tuple[int, ...]
    method: str
    path: str
    authority: str
    source: str  # the principal, or the source address
    destination: str
    old: str
    new: str
    old_policy: str | None
    new_policy: str | None

    @property
    def count(self) -> int:
        return len(self.lines)


@dataclass(frozen=True, slots=True)
class ReplayReport:
    requests: int
    skipped: int
    changes: tuple[Change, ...]  # by first line
    not_replayed: int = 0  # requests to no workload of the meshes
    groups: Mapping[tuple[str, str, str, str], int] = field(default_factory=dict)

    @property
    def changed(self) -> int:
        """Requests (log lines) whose decision changes."""
        return sum(c.count for c in self.changes)

    def to_dict(self) -> dict[str, Any]:
        """The stable ``-o json`` schema (see the README)."""
        return {
            "requests": self.requests, "skipped_lines": self.skipped,
            "not_replayed": self.not_replayed, "changed": self.changed,
            "groups": [{"policy": p, "source": s, "old": o, "new": nw, "count": c}
                       for (p, s, o, nw), c in sorted(self.groups.items())],
            "changes": [{"method": c.method, "path": c.path, "authority": c.authority,
                         "source": c.source, "destination": c.destination, "old": c.old,
                         "new": c.new, "old_policy": c.old_policy, "new_policy": c.new_policy,
                         "count": c.count, "lines": list(c.lines)}
                        for c in self.changes],
        }  # fmt: skip


def _principals(mesh: MeshModel) -> dict[str, str]:
    return {w.address: f"spiffe://{mesh.domain}/ns/{w.namespace}/sa/{w.service_account}"
            for w in mesh.workload_entries}  # fmt: skip


def _chains(mesh: MeshModel, address: str) -> Mapping[int, AuthzChain | None] | None:
    """The inbound authorization of the workload at ``address``, by port (None: none there)."""
    from meshcore.tools.explain import planes_from_mesh
    from meshcore.tools.nodes import node_id

    w = next((w for w in mesh.workload_entries if w.address == address), None)
    if w is None:
        return None
    cfg = planes_from_mesh(mesh)(node_id(mesh, w)).config
    return {port: lst.authz for port, lst in cfg.inbound.items()}


def replay(old: MeshModel, new: MeshModel, requests: Requests) -> ReplayReport:
    """Every request decided with ``old``'s and ``new``'s policies; the changed ones."""
    principals = {**_principals(old), **_principals(new)}
    n = len(requests)
    if n == 0:
        return ReplayReport(0, requests.skipped, ())
    inverse = requests.index
    method, path, authority = requests.method, requests.path, requests.authority
    source, dst_ip, dst_port = (
        requests.source_ip,
        requests.destination_ip,
        requests.destination_port,
    )
    peers = requests.peer.tolist() if requests.peer is not None else [""] * len(source)
    principal = np.array(
        [peer or principals.get(ip) for ip, peer in zip(source.tolist(), peers, strict=True)],
        dtype=object,
    )
    m = len(method)
    old_code, new_code = np.full(m, -1, np.int8), np.full(m, -1, np.int8)
    old_pol, new_pol = np.full(m, None, object), np.full(m, None, object)
    unknown = np.zeros(m, dtype=bool)
    dests = np.char.add(np.char.add(dst_ip.astype("S"), b"|"), dst_port.astype("S"))
    for key in np.unique(dests):
        ip, _, port_s = key.decode().rpartition("|")
        port = int(port_s)
        rows = np.nonzero(dests == key)[0]
        a, b = _chains(old, ip), _chains(new, ip)
        if a is None and b is None:
            unknown[rows] = True
            continue
        p = principal[rows].tolist()
        columns = {
            "method": method[rows].astype("S"), "path": path[rows].astype("S"),
            "authority": authority[rows].astype("S"), "source_ip": source[rows].astype("S"),
            "remote_ip": source[rows].astype("S"), "direct_remote_ip": source[rows].astype("S"),
            "destination_ip": ip, "destination_port": port, "principal": p,
            "uri_sans": [[x] if x else None for x in p],
            "tls": np.array([x is not None for x in p]),
        }  # fmt: skip
        old_code[rows], old_pol[rows] = decide_batch((a or {}).get(port), columns, len(rows))
        new_code[rows], new_pol[rows] = decide_batch((b or {}).get(port), columns, len(rows))
    changed = ~unknown & ((old_code != new_code) | (old_pol != new_pol))
    # The log lines of each changed distinct request, in order.
    line_rows = np.nonzero(changed[inverse])[0]
    order = np.argsort(inverse[line_rows], kind="stable")
    owners = inverse[line_rows][order]
    cuts = np.nonzero(np.diff(owners))[0] + 1
    by_request = {
        int(group_owners[0]): tuple(group_lines.tolist())
        for group_owners, group_lines in zip(
            np.split(owners, cuts), np.split(requests.lines[line_rows][order], cuts), strict=True
        )
        if len(group_owners)
    }
    changes = []
    groups: Counter[tuple[str, str, str, str]] = Counter()
    for u, lines in by_request.items():
        src = principal[u] or str(source[u])
        c = Change(lines, str(method[u]), str(path[u]), str(authority[u]), src,
                   f"{dst_ip[u]}:{dst_port[u]}", DECISIONS[int(old_code[u])],
                   DECISIONS[int(new_code[u])], old_pol[u], new_pol[u])  # fmt: skip
        changes.append(c)
        groups[(str(c.new_policy or c.old_policy or "(no policy matched)"), src, c.old,
                c.new)] += c.count  # fmt: skip
    changes.sort(key=lambda c: c.lines[0])
    not_replayed = int(np.count_nonzero(unknown[inverse]))
    return ReplayReport(n, requests.skipped, tuple(changes), not_replayed, dict(groups))


def render(report: ReplayReport, *, limit: int = 20) -> str:
    lines = [f"{report.requests} requests replayed ({report.skipped} lines skipped, "
             f"{report.not_replayed} to no workload), {report.changed} decisions change"]  # fmt: skip
    if report.groups:
        rows = [("POLICY", "SOURCE", "OLD", "NEW", "COUNT")]
        rows += [(p, s, o, nw, str(c)) for (p, s, o, nw), c in sorted(report.groups.items())]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines += ["  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)).rstrip()
                  for r in rows]  # fmt: skip
    for c in report.changes[:limit]:
        where = f"line {c.lines[0]}" + (f" (+{c.count - 1} more)" if c.count > 1 else "")
        lines.append(f"{where}: {c.method} {c.authority}{c.path} from {c.source}: "
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


def with_progress(lines: Sequence[str], out: Any, every: int = 100_000) -> Iterator[str]:
    """``lines``, writing ``parsed N/TOTAL lines`` to ``out`` (a terminal) every ``every``."""
    total = len(lines)
    for i, line in enumerate(lines, 1):
        if i % every == 0:
            out.write(f"\rparsed {i:,}/{total:,} lines")
            out.flush()
        yield line
    if total >= every:
        out.write(f"\rparsed {total:,}/{total:,} lines\n")
        out.flush()


def with_policies(mesh: MeshModel, policies: MeshModel) -> MeshModel:
    """``mesh`` with its AuthorizationPolicies replaced by those of ``policies``."""
    kept = [r for r in mesh.resources if r.kind != "AuthorizationPolicy"]
    new = [r for r in policies.resources if r.kind == "AuthorizationPolicy"]
    return MeshModel([*kept, *new], domain=mesh.domain, root_namespace=mesh.root_namespace)
