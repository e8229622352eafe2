"""What RequestAuthentication costs the translation of the 1,000-service mesh (bench/meshgen.py):
the same mesh with and without a mesh-wide RequestAuthentication (root namespace, one JWT rule,
an inline JWKS of one RSA key), so that every workload's inbound listener gets the jwt_authn
filter. Measured in the same run: one proxy cold, one more proxy warm, and the size of a proxy's
own inbound listener (recorded in ``extra_info``).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from meshcore.config import MeshModel, RequestAuthentication, load
from meshcore.config.values import freeze
from meshcore.xds import types
from meshcore.xds.translate import Generated, Translator, proxy_for_node


def _jwks() -> str:
    n = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    modulus = n.public_numbers().n.to_bytes(256, "big")
    key = base64.urlsafe_b64encode(modulus).rstrip(b"=").decode()
    return json.dumps({"keys": [{"kty": "RSA", "alg": "RS256", "kid": "k", "e": "AQAB", "n": key}]})


@pytest.fixture(scope="module")
def meshes(mesh_dir: Path) -> dict[str, MeshModel]:
    plain = load(mesh_dir)
    ra = RequestAuthentication(
        kind="RequestAuthentication",
        api_version="security.istio.io/v1",
        name="mesh-jwt",
        namespace=plain.root_namespace,
        spec=freeze({"jwtRules": [{"issuer": "https://idp.example", "jwks": _jwks()}]}),
    )
    jwt = MeshModel(
        [*plain.resources, ra], domain=plain.domain, root_namespace=plain.root_namespace
    )
    return {"without": plain, "with": jwt}


def _nodes(mesh: MeshModel) -> list[str]:
    return [
        f"sidecar~{w.address}~{w.name}.{w.namespace}~{w.namespace}.svc.cluster.local"
        for w in mesh.workload_entries
    ]


def _one(translator: Translator, mesh: MeshModel, node: str) -> Generated:
    return translator.generate(mesh, proxy_for_node(mesh, node))


def _inbound_bytes(result: Generated) -> int:
    layers = result.resources[types.LISTENER]
    own = getattr(layers, "own", {})
    return sum(len(m.SerializeToString()) for m in own.values())


@pytest.mark.parametrize("variant", ["without", "with"])
def test_jwt_one_proxy_cold(benchmark: Any, meshes: dict[str, MeshModel], variant: str) -> None:
    mesh = meshes[variant]
    node = _nodes(mesh)[0]
    result = benchmark.pedantic(
        _one, setup=lambda: ((Translator(), mesh, node), {}), rounds=5, iterations=1
    )
    benchmark.extra_info["inbound_listener_bytes"] = _inbound_bytes(result)
    assert len(result.resources[types.CLUSTER]) == 3001


@pytest.mark.parametrize("variant", ["without", "with"])
def test_jwt_one_more_proxy_warm(
    benchmark: Any, meshes: dict[str, MeshModel], variant: str
) -> None:
    mesh = meshes[variant]
    nodes = _nodes(mesh)
    translator = Translator()
    for n in nodes[0:50:5]:
        _one(translator, mesh, n)
    fresh = iter(nodes[1000:])

    def another() -> Generated:
        return _one(translator, mesh, next(fresh))

    result = benchmark.pedantic(another, rounds=50, iterations=1)
    benchmark.extra_info["inbound_listener_bytes"] = _inbound_bytes(result)
    assert len(result.resources[types.LISTENER]) == 2
