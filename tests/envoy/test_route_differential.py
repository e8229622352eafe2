"""RouteTable against real Envoy: random configurations, near-miss requests, zero disagreements.

One Envoy serves many random RouteConfigurations at once (one listener each, each with its
own connection-manager options), so the whole run costs one start. The route configurations
are given statically in the bootstrap (the ADS server comes with the xDS issue).

``MESHCORE_DIFF_CASES`` raises the number of cases (default 10,000); ``MESHCORE_DIFF_SEED``
changes the seed.
"""

from __future__ import annotations

import os
import random
import re
from typing import Any

import pytest
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format
from harness import Envoy, HttpClient, http_connection_manager, listener
from routegen import Case, GeneratedConfig, generate

from meshcore import RouteTable

pytestmark = pytest.mark.envoy

CASES = int(os.environ.get("MESHCORE_DIFF_CASES", "10000"))
SEED = int(os.environ.get("MESHCORE_DIFF_SEED", "20261125"))
CASES_PER_CONFIG = 250
CONFIGS_PER_ENVOY = 40


def _envoy_answer(
    status: int, body: bytes, grpc_status: str | None, grpc_message: str | None
) -> int | None:
    """The route index Envoy chose; None for 404 (no route) and 400 (path rejected).

    For gRPC requests Envoy turns local replies into gRPC ones: the body becomes grpc-message.
    """
    if grpc_status is not None:
        msg = grpc_message or ""
        return int(msg[1:]) if re.fullmatch(r"r\d+", msg) else None
    if status == 200 and body.startswith(b"r"):
        return int(body[1:])
    if status in (400, 404):
        return None
    raise AssertionError(f"unexpected Envoy answer {status} {body[:100]!r}")


def _table(gen: GeneratedConfig, port: int) -> RouteTable:
    msg = json_format.ParseDict(gen.route_config, route_pb2.RouteConfiguration())
    opts = dict(gen.hcm_options)
    return RouteTable.from_proto(msg, listener_port=port, **opts)


def _run_batch(gens: list[GeneratedConfig]) -> tuple[int, list[str]]:
    bootstrap: dict[str, Any] = {
        "static_resources": {
            "listeners": [
                listener(
                    f"l{i}",
                    [{"filters": [http_connection_manager(g.route_config, **g.hcm_options)]}],
                )
                for i, g in enumerate(gens)
            ]
        }
    }
    failures: list[str] = []
    checked = 0
    with Envoy(bootstrap) as envoy:
        for i, gen in enumerate(gens):
            port = envoy.listener_port(f"l{i}")
            table = _table(gen, port)
            cases: list[Case] = [
                Case(c.authority.replace("{LPORT}", str(port)), c.path, c.method, c.headers)
                for c in gen.cases
            ]
            with HttpClient(port) as client:
                answers = client.pipeline(
                    [(c.method, c.path, [("host", c.authority), *c.headers]) for c in cases]
                )
            batch = table.route_batch(
                [c.authority for c in cases],
                [c.path for c in cases],
                [c.method for c in cases],
                [c.headers for c in cases],
            )
            for case, answer, batch_idx in zip(cases, answers, batch, strict=True):
                want = _envoy_answer(
                    answer.status,
                    answer.body,
                    answer.header("grpc-status"),
                    answer.header("grpc-message"),
                )
                got = table.route(case.authority, case.path, case.method, case.headers)
                got_idx = None if got is None else got.route_index
                checked += 1
                if got_idx != want or (-1 if want is None else want) != int(batch_idx):
                    why = table.explain(case.authority, case.path, case.method, case.headers)
                    flat = [r for vh in gen.route_config["virtual_hosts"] for r in vh["routes"]]
                    vhosts = [
                        (vh["name"], vh["domains"]) for vh in gen.route_config["virtual_hosts"]
                    ]
                    failures.append(
                        f"envoy={want} ({answer.status}) meshcore={got_idx} batch={batch_idx} "
                        f"case={case} hcm={gen.hcm_options}\n"
                        f"  envoy's route={flat[want] if want is not None else None}\n"
                        f"  meshcore's route={flat[got_idx] if got_idx is not None else None}\n"
                        f"  virtual hosts={vhosts} "
                        f"ignore_port={gen.route_config.get('ignore_port_in_host_matching')} "
                        f"ignore_params={gen.route_config.get('ignore_path_parameters_in_path_matching')}\n"
                        f"  explain={why}"
                    )
    return checked, failures


def test_random_configs_agree_with_envoy() -> None:
    rng = random.Random(SEED)
    n_configs = max(1, -(-CASES // CASES_PER_CONFIG))
    gens = [generate(rng, CASES_PER_CONFIG, i) for i in range(n_configs)]
    total = 0
    failures: list[str] = []
    for start in range(0, len(gens), CONFIGS_PER_ENVOY):
        checked, fails = _run_batch(gens[start : start + CONFIGS_PER_ENVOY])
        total += checked
        failures += fails
    assert total >= CASES
    assert not failures, f"{len(failures)} of {total} disagree; first:\n" + "\n".join(failures[:5])
