"""Hostile config files shared by the tests/hostile/test_config_* suites: each is bytes that
once crashed, stalled or silently shortened the mesh (issue 11), with the line its problem
must be reported at."""

from __future__ import annotations

from dataclasses import dataclass

SERVICE = """apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  ports: [{{name: http, port: 80}}]
"""

DENY = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [/admin]}}]}]
"""


@dataclass(frozen=True)
class Hostile:
    name: str
    data: bytes
    line: int  # where the problem must be reported (the first line it may be at, if not exact)
    words: str  # a fragment of the message
    exact: bool = True


def _lines(text: str) -> int:
    return text.count("\n")


def _nul_truncation() -> Hostile:
    # The DENY policy after the NUL vanished without a word on the old reader.
    head = SERVICE.format(name="reviews") + "---\n"
    return Hostile("nul", (head + "# note\x00\n---\n" + DENY).encode(), _lines(head) + 1, "U+0000")


def _control(char: str, quoted: bool) -> Hostile:
    head = SERVICE.format(name="reviews") + "---\n"
    body = f'metadata: {{name: "x{char}y"}}\n' if quoted else f"# x{char}y\n"
    return Hostile(
        f"control-{ord(char):02x}{'-quoted' if quoted else ''}",
        (head + body).encode(),
        _lines(head) + 1,
        f"U+{ord(char):04X}",
    )


def _invalid_utf8(raw: bytes, name: str) -> Hostile:
    head = SERVICE.format(name="reviews").encode() + b"---\n"
    return Hostile(name, head + b"kind: " + raw + b"\n", head.count(b"\n") + 1, "not UTF-8")


def _nest(kind: str, size: int = 100_000) -> str:
    """About ``size`` bytes of one kind of nesting (block, flow, mapping or mixed)."""
    if kind == "block-seq":
        return "- " * (size // 2) + "x\n"
    if kind == "block-seq-lines":
        levels = int((2 * size) ** 0.5 / 1.5)
        return "".join(" " * (2 * i) + "-\n" for i in range(levels)) + " " * 2 * levels + "x\n"
    if kind == "block-map":
        levels = int((2 * size) ** 0.5 / 1.5)
        return "".join(" " * i + "k:\n" for i in range(levels)) + " " * levels + "x\n"
    if kind == "flow-seq":
        return "[" * (size // 2) + "]" * (size // 2) + "\n"
    if kind == "flow-map":
        return "{a: " * (size // 5) + "}" * (size // 5) + "\n"
    if kind == "mixed":  # block mappings and sequences, then flow ones inside
        block = "".join(" " * i + ("k:\n" if i % 2 == 0 else "-\n") for i in range(40))
        return block + " " * 40 + "[{a: " * (size // 5) + "\n"
    raise AssertionError(kind)


NESTINGS = ("block-seq", "block-seq-lines", "block-map", "flow-seq", "flow-map", "mixed")


def _deep(kind: str) -> Hostile:
    head = SERVICE.format(name="reviews") + "---\n"
    return Hostile(
        f"deep-{kind}", (head + _nest(kind)).encode(), _lines(head) + 1, "nesting deeper", False
    )


def _alias_depth() -> Hostile:
    # Each alias stays under the limit; stacked, they would not.
    half = 70
    deep = "[" * half + "1" + "]" * half
    text = (
        SERVICE.format(name="reviews")
        + f"status:\n  a: &a {deep}\n  b: {'[' * half}*a{']' * half}\n"
    )
    return Hostile("deep-alias", text.encode(), 8, "nesting deeper")  # at the alias


def _bomb() -> Hostile:
    lines = ["apiVersion: v1", "kind: Service", "metadata: {name: bomb}", "status:"]
    lines.append("  a0: &a0 [x, x, x, x, x, x, x, x, x, x]")
    for i in range(1, 10):
        lines.append(f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return Hostile("billion-laughs", ("\n".join(lines) + "\n").encode(), 5, "YAML bomb", False)


def _vs(route_extra: str) -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\n"
        "spec:\n  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews}}]\n"
        f"    {route_extra}\n"
    )


def _number(name: str, text: str, words: str) -> Hostile:
    return Hostile(name, text.encode(), _lines(text), words)


def _dr_pool(field: str, value: str) -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\n"
        f"spec:\n  host: reviews\n  trafficPolicy:\n    connectionPool:\n      {field}: {value}\n"
    )


OVERFLOWS = [
    _number("duration-310-digits", _vs(f"timeout: 1{'0' * 309}s"), "spec.http[0].timeout"),
    _number("duration-hours", _vs("timeout: 9999999999h"), "out of range"),
    _number("attempts-1e26", _vs("retries: {attempts: 1e26}"), "spec.http[0].retries.attempts"),
    _number(
        "attempts-big-int", _vs(f"retries: {{attempts: {10**26}}}"), "out of range for a 32-bit"
    ),
    _number("weight-2^40", _vs(f"mirrorPercent: {2**40}"), "spec.http[0].mirrorPercent"),
    _number(
        "max-connections",
        _dr_pool("tcp", f"{{maxConnections: {2**31}}}"),
        "spec.trafficPolicy.connectionPool.tcp.maxConnections",
    ),
    _number(
        "fault-percentage-inf",
        _vs("fault: {abort: {httpStatus: 503, percentage: {value: .inf}}}"),
        "percentage.value",
    ),
    _number(
        "port-2^70",
        SERVICE.format(name="reviews").replace("port: 80", f"port: {2**70}"),
        "spec.ports[0].port",
    ),
    _number(
        "generation-2^64",
        "apiVersion: v1\nkind: Service\nspec: {ports: [{port: 80}]}\nmetadata:\n"
        f"  name: reviews\n  generation: {2**64}\n",
        "metadata.generation",
    ),
    _number(
        "int-5000-digits",
        "apiVersion: v1\nkind: Service\nmetadata: {name: reviews}\nspec: {ports: [{port: 80}]}\n"
        f"status:\n  n: {'7' * 5000}\n",
        "too large",
    ),
    _number(
        "port-level-mtls-key",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\n"
        "spec:\n  selector: {matchLabels: {app: a}}\n  portLevelMtls:\n"
        f"    '{'9' * 5000}': {{mode: DISABLE}}\n",
        "port",
    ),
]

HOSTILE = [
    _nul_truncation(),
    *(_control(c, quoted) for c in "\x01\x08\x0b\x0c\x1b\x7f" for quoted in (False, True)),
    _control("\x9f", True),
    _invalid_utf8(b"\xff", "invalid-utf8-ff"),
    _invalid_utf8(b"\xc3(", "invalid-utf8-continuation"),
    _invalid_utf8(b"\xed\xa0\x80", "invalid-utf8-surrogate"),
    _invalid_utf8(b"\xe2\x82", "invalid-utf8-truncated"),
    *(_deep(kind) for kind in NESTINGS),
    _alias_depth(),
    _bomb(),
    *OVERFLOWS,
]
CASES_BY_NAME = {h.name: h for h in HOSTILE}


def big_mesh(services: int) -> str:
    """A valid mesh of ``services`` Services, each with a WorkloadEntry, a VirtualService and a
    DestinationRule (about 1.3 KB per service): a large but ordinary config."""
    out = []
    for i in range(services):
        ns = f"ns{i % 10}"
        out.append(
            f"""apiVersion: v1
kind: Service
metadata: {{name: svc{i}, namespace: {ns}}}
spec:
  selector: {{app: svc{i}}}
  ports: [{{name: http, port: 8080, targetPort: 8080}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: svc{i}-0, namespace: {ns}}}
spec: {{address: 10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}, labels: {{app: svc{i}, version: v1}}, serviceAccount: svc{i}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc{i}, namespace: {ns}}}
spec:
  hosts: [svc{i}]
  http:
  - match: [{{uri: {{prefix: /api/{i}}}, headers: {{x-user: {{regex: "tester-[0-9]+"}}}}}}]
    route: [{{destination: {{host: svc{i}, subset: v1}}}}]
    retries: {{attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,reset"}}
  - route: [{{destination: {{host: svc{i}, subset: v1}}}}]
    timeout: 2s
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: svc{i}, namespace: {ns}}}
spec:
  host: svc{i}
  trafficPolicy:
    loadBalancer: {{simple: LEAST_REQUEST}}
    outlierDetection: {{consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}}
  subsets: [{{name: v1, labels: {{version: v1}}}}]
"""
        )
    return "---\n".join(out)
