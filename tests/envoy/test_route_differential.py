"""RouteTable against real Envoy: random configurations, near-miss requests, zero disagreements.

meshcore's own ADS server (``start_ads_server`` over a ``SnapshotCache``) serves Envoy the
configurations, as a mesh would (Envoy starts from meshcore's ``ads_bootstrap``, with its
runtime: RouteTables get the same RE2 program-size limit): a batch of listeners (one per random RouteConfiguration, each
with its own connection-manager options) over LDS, their RouteConfigurations over RDS. The
test waits for Envoy to ACK both, sends the batch's requests, then publishes the next batch to
the same Envoy (the whole run costs one start).

``MESHCORE_DIFF_CASES`` raises the number of cases (default 10,000); ``MESHCORE_DIFF_SEED``
changes the seed.
"""

from __future__ import annotations

import os
import random
import re
import time
from pathlib import Path

import pytest
from _sidecar import (
    AdsControlPlane,
    HttpClient,
    free_ports,
    http_connection_manager,
    listener,
    listener_ports,
    running_envoy,
)
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401 (registers Router)
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from google.protobuf import json_format
from google.protobuf.message import Message
from routegen import Case, GeneratedConfig, generate

from meshcore import RouteTable
from meshcore.dataplane.bootstrap import ads_bootstrap
from meshcore.xds import types
from meshcore.xds.translate import BOOTSTRAP_RUNTIME

pytestmark = pytest.mark.envoy

CASES = int(os.environ.get("MESHCORE_DIFF_CASES", "10000"))
SEED = int(os.environ.get("MESHCORE_DIFF_SEED", "20261125"))
CASES_PER_CONFIG = 250
CONFIGS_PER_BATCH = 40
NODE = "sidecar~127.0.0.1~route-diff.default~default.svc.cluster.local"
RE2_LIMIT = int(BOOTSTRAP_RUNTIME["re2.max_program_size.error_level"])


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
    # meshcore's bootstrap raises Envoy's RE2 program-size limit; the table takes the same.
    return RouteTable.from_proto(msg, listener_port=port, max_program_size=RE2_LIMIT, **opts)


def _resources(
    gens: list[GeneratedConfig], batch: int, ports: list[int]
) -> dict[str, dict[str, Message]]:
    """The batch's listeners (LDS) and RouteConfigurations (RDS), by name."""
    listeners: dict[str, Message] = {}
    routes: dict[str, Message] = {}
    for i, (g, port) in enumerate(zip(gens, ports, strict=True)):
        name = f"b{batch}l{i}"
        hcm = http_connection_manager(rds=g.route_config["name"], **g.hcm_options)
        listeners[name] = json_format.ParseDict(
            listener(name, [{"filters": [hcm]}], port), listener_pb2.Listener()
        )
        routes[g.route_config["name"]] = json_format.ParseDict(
            g.route_config, route_pb2.RouteConfiguration()
        )
    return {types.CLUSTER: {}, types.LISTENER: listeners, types.ROUTE: routes}


def _wait_listeners(admin: int, want: dict[str, int]) -> None:
    """Until Envoy has the batch's listeners on their ports (LDS and RDS are ACKed by then)."""
    deadline = time.monotonic() + 20
    while True:
        ports = listener_ports(admin)
        if all(ports.get(n) == p for n, p in want.items()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"listeners not up: {sorted(set(want) - set(ports))[:5]}")
        time.sleep(0.05)


def _check_batch(gens: list[GeneratedConfig], ports: list[int]) -> tuple[int, list[str]]:
    failures: list[str] = []
    checked = 0
    for gen, port in zip(gens, ports, strict=True):
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
                vhosts = [(vh["name"], vh["domains"]) for vh in gen.route_config["virtual_hosts"]]
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


def test_random_configs_agree_with_envoy(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    n_configs = max(1, -(-CASES // CASES_PER_CONFIG))
    gens = [generate(rng, CASES_PER_CONFIG, i) for i in range(n_configs)]
    batches = [gens[i : i + CONFIGS_PER_BATCH] for i in range(0, len(gens), CONFIGS_PER_BATCH)]
    total = 0
    failures: list[str] = []
    # Ports no listener of this run had: a removed listener drains for a while, and a new
    # one on its port could share it (SO_REUSEPORT) and answer with the old routes.
    admin, *flat = free_ports(1 + sum(len(b) for b in batches))
    ports = [[flat.pop() for _ in batch] for batch in batches]
    with AdsControlPlane() as cp:
        cp.publish(NODE, _resources(batches[0], 0, ports[0]))
        boot = ads_bootstrap(NODE, "127.0.0.1", cp.port, admin_port=admin)
        with running_envoy(boot, tmp_path, "envoy"):
            for b, batch in enumerate(batches):
                if b:
                    cp.publish(NODE, _resources(batch, b, ports[b]))
                cp.wait_synced(NODE, ["LDS", "RDS"])
                _wait_listeners(admin, {f"b{b}l{i}": p for i, p in enumerate(ports[b])})
                checked, fails = _check_batch(batch, ports[b])
                total += checked
                failures += fails
    assert total >= CASES
    assert not failures, f"{len(failures)} of {total} disagree; first:\n" + "\n".join(failures[:5])
