"""What the command line needs of the tools on the base install (no protobuf, no translator)."""

from __future__ import annotations

# proxy-config's resource kinds, in istioctl's order.
KINDS = ("cluster", "listener", "route", "endpoint", "secret")
# Control-plane CPU per proxy push, measured (BENCHMARKS.md, xDS fleet convergence: "the pushes
# (about 0.13 ms of control-plane CPU each in Python/grpc.aio ...)", 2,000 proxies of a
# 1,000-service mesh).
PUSH_COST_SECONDS = 0.00013
