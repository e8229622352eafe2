"""Differential test of the network (TCP) RBAC filter: RbacEngine against a real Envoy 1.40.

Random RBAC configs (the HTTP test's generator without header rules, which the network
filter refuses; url_path and other HTTP rules see no request, as in Envoy) are each the network RBAC filter of one listener in front
of tcp_proxy to a local echo server. A connection is allowed when its bytes come back; the
access log gives the denying policy and the shadow result, matched to the connection by its
source address and port.
"""

from __future__ import annotations

import json
import os
import random
import socket
import socketserver
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("envoy.extensions.filters.network.rbac.v3.rbac_pb2")

from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac
from google.protobuf import json_format

from meshcore import RbacEngine

sys.path.insert(0, str(Path(__file__).parent))
from _sidecar import free_ports, running_envoy
from rbac_harness import have_envoy
from test_rbac_envoy_diff import LISTEN, SEED, SOURCES, Gen

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(not have_envoy(), reason="no envoy binary"),
]

CASES = max(200, int(os.environ.get("MESHCORE_DIFF_CASES", "10000")) // 5)
NETWORK_TYPE = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
LOG_FORMAT = {
    "peer": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "details": "%CONNECTION_TERMINATION_DETAILS%",
    "md": "%DYNAMIC_METADATA(envoy.filters.network.rbac)%",
}


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.settimeout(5)
        try:
            while data := self.request.recv(4096):
                self.request.sendall(data)
        except OSError:
            pass


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _network_config(gen: Gen) -> dict[str, Any]:
    d = json_format.MessageToDict(gen.config(), preserving_proto_field_name=True)
    d["stat_prefix"] = "tcp"
    return d


def _listener(i: int, where: tuple[str, int], config: dict[str, Any], log: str) -> dict[str, Any]:
    return {
        "name": f"tcp{i}",
        "address": {"socket_address": {"address": where[0], "port_value": where[1]}},
        "access_log": [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3."
                    "FileAccessLog",
                    "path": log,
                    "log_format": {"json_format": LOG_FORMAT},
                },
            }
        ],
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.rbac",
                        "typed_config": {"@type": NETWORK_TYPE, **config},
                    },
                    {
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network."
                            "tcp_proxy.v3.TcpProxy",
                            "stat_prefix": "echo",
                            "cluster": "echo",
                        },
                    },
                ]
            }
        ],
    }


def _exchange(source: str, dest: tuple[str, int]) -> tuple[str, bool]:
    """One connection: ('ip:port' of our end, whether the bytes came back)."""
    with socket.create_connection(dest, timeout=5, source_address=(source, 0)) as s:
        peer = "{}:{}".format(*s.getsockname()[:2])
        s.sendall(b"ping")
        got = b""
        try:
            while len(got) < 4:
                chunk = s.recv(16)
                if not chunk:
                    break
                got += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return peer, got == b"ping"


def test_network_rbac_agrees_with_envoy(tmp_path: Path) -> None:
    rng = random.Random(SEED + 3)
    listeners_per_addr = 20
    listeners = [(a, p) for a in LISTEN for p in free_ports(listeners_per_addr, a)]
    gen = Gen(rng, [p for _, p in listeners[:4]], headers=False)
    configs = [_network_config(gen) for _ in listeners]
    engines = [
        RbacEngine.from_proto(json_format.ParseDict(c, network_rbac.RBAC())) for c in configs
    ]
    log = tmp_path / "tcp.log"
    echo = _EchoServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=echo.serve_forever, daemon=True)
    thread.start()
    admin = free_ports(1, avoid=[p for _, p in listeners])[0]
    bootstrap = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "clusters": [
                {
                    "name": "echo",
                    "type": "STATIC",
                    "connect_timeout": "2s",
                    "load_assignment": {
                        "cluster_name": "echo",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": echo.server_address[1],
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
            "listeners": [
                _listener(i, w, c, str(log))
                for i, (w, c) in enumerate(zip(listeners, configs, strict=True))
            ],
        },
    }
    # (our address, listener, source, allowed) in order: a closed connection's port can be
    # reused by a later one, so the log is matched per address in order.
    cases: list[tuple[str, int, str, bool]] = []
    try:
        with running_envoy(bootstrap, tmp_path, "envoy"):
            for _ in range(CASES):
                i = rng.randrange(len(listeners))
                source = rng.choice(SOURCES)
                peer, allowed = _exchange(source, listeners[i])
                cases.append((peer, i, source, allowed))
    finally:
        echo.shutdown()
        echo.server_close()
        thread.join(timeout=5)
    logged: dict[str, list[dict[str, Any]]] = {}
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        logged.setdefault(rec["peer"], []).append(rec)
    problems = []
    outcomes = {True: 0, False: 0}
    for peer, i, source, allowed in cases:
        recs = logged.get(peer)
        rec = recs.pop(0) if recs else None
        if rec is None:
            problems.append(f"{peer}: no access log entry")
            continue
        md = rec["md"] if isinstance(rec.get("md"), dict) else {}
        details = str(rec.get("details") or "")
        prefix = configs[i].get("shadow_rules_stat_prefix", "")
        denied_by = None
        if details.startswith("rbac_access_denied_matched_policy["):
            denied_by = details[len("rbac_access_denied_matched_policy[") : -1]
            denied_by = None if denied_by == "none" else denied_by
        # The network filter reports the enforced policy only when it denies (in the
        # termination details); an allowed connection's effective policy is not observable.
        envoy_policy = md.get("enforced_effective_policy_id") or denied_by
        shadow = md.get(prefix + "shadow_engine_result")
        theirs = (
            allowed,
            envoy_policy,
            None if shadow is None else shadow == "allowed",
            md.get(prefix + "shadow_effective_policy_id"),
        )
        d = engines[i].evaluate(
            source_ip=source,
            remote_ip=source,
            direct_remote_ip=source,
            destination_ip=listeners[i][0],
            destination_port=listeners[i][1],
        )
        mine = (
            d.allowed,
            d.policy_id if not d.allowed else envoy_policy,
            d.shadow_allowed,
            d.shadow_policy_id,
        )
        outcomes[d.allowed] += 1
        if mine != theirs:
            problems.append(
                f"{peer} -> listener {i}: engine {mine} != envoy {theirs} ({details})\n{configs[i]}"
            )
    assert len(cases) == CASES
    assert outcomes[True] > 20, outcomes
    assert outcomes[False] > 20, outcomes
    assert not problems, f"{len(problems)} of {len(cases)} disagree:\n" + "\n".join(problems[:3])
