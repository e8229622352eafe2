"""Turns a ``--benchmark-json`` file from bench_route.py into the BENCHMARKS.md tables.

Usage: python bench/report.py results.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    data = json.load(open(path))  # noqa: SIM115
    rows: dict[str, dict[tuple[str, int], float]] = defaultdict(dict)
    for b in data["benchmarks"]:
        info = b["extra_info"]
        if "per_round" not in info:
            continue  # not a route benchmark (bench_rbac.py reports per decision)
        # median round time per request, in ns
        ns = b["stats"]["median"] * 1e9 / info["per_round"]
        rows[info["kind"]][(info["peer"], info["size"])] = ns
    route = rows["route"]
    sizes = sorted({s for p, s in route if p == "meshcore"})
    peers = ["meshcore", "falcon", "sanic-routing", "werkzeug", "linear-python"]
    print("route(): ns per call (median), and peer / meshcore\n")
    print("| routes | " + " | ".join(peers) + " |")
    print("|---:|" + "---:|" * len(peers))
    for n in sizes:
        base = route[("meshcore", n)]
        cells = [f"{base:,.0f}"]
        for p in peers[1:]:
            v = route.get((p, n))
            cells.append("n/a" if v is None else f"{v:,.0f} ({v / base:,.0f}x)")
        print(f"| {n:,} | " + " | ".join(cells) + " |")
    floor = route.get(("python-call+dict", 1000))
    if floor is not None:
        print(f"\nFloor: a Python function call plus a dict lookup: {floor:,.0f} ns.\n")
    print("route_batch(): ns per request, by input form\n")
    batch = rows["route_batch"]
    forms = ["list", "list+scalar-authority", "numpy-S", "numpy-U"]
    print("| routes | " + " | ".join(forms) + " |\n|---:|" + "---:|" * len(forms))
    for n in sorted({s for _, s in batch}):
        cells = [f"{batch[(f, n)]:,.1f}" if (f, n) in batch else "n/a" for f in forms]
        print(f"| {n:,} | " + " | ".join(cells) + " |")
    print("\ncompile: ms per table\n")
    comp = rows["compile"]
    print("| routes | " + " | ".join(peers[:4]) + " |\n|---:|" + "---:|" * 4)
    for n in sorted({s for _, s in comp}):
        cells = [f"{comp[(p, n)] / 1e6:,.1f}" for p in peers[:4]]
        print(f"| {n:,} | " + " | ".join(cells) + " |")
    print("\nEnvoy-shaped tables (virtual hosts x 5 routes, headers and regexes): ns per route()\n")
    print("| virtual hosts | ns/call |\n|---:|---:|")
    for (_, n), v in sorted(rows["envoy_shaped"].items(), key=lambda kv: kv[0][1]):
        print(f"| {n:,} | {v:,.0f} |")


if __name__ == "__main__":
    main(sys.argv[1])
