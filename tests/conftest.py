"""The ADS protocol tests run on both ADS transports (meshcore's own, the default, and grpc.aio):
the same assertions, the transport chosen through $MESHCORE_ADS_TRANSPORT, which
``start_ads_server`` (and so ``meshcore serve``) reads when not told one."""

from __future__ import annotations

import pytest

from meshcore.xds.server import TRANSPORTS

# The modules whose tests run once per transport (the others use the default transport).
PROTOCOL_MODULES = (
    "tests/xds/test_ads_",
    "tests/xds/test_grpc_xds_client",
    "tests/hostile/test_ads_",
    "tests/dataplane/test_ads_client",
)


@pytest.fixture(autouse=True)
def ads_transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    transport: str = getattr(request, "param", "")
    if transport:
        monkeypatch.setenv("MESHCORE_ADS_TRANSPORT", transport)
    return transport


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    path = metafunc.definition.path.as_posix()
    if "ads_transport" not in metafunc.fixturenames:
        return
    if not any(f"/{prefix}" in path for prefix in PROTOCOL_MODULES):
        return
    only = metafunc.definition.get_closest_marker("ads_transports")
    chosen = only.args if only is not None else TRANSPORTS
    metafunc.parametrize("ads_transport", chosen, indirect=True)
