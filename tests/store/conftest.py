from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.store._etcd import EtcdCluster, etcd_cluster


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One etcd member for the module's tests (each test takes its own key prefix)."""
    with etcd_cluster(Path(tmp_path_factory.mktemp("etcd")), 1) as c:
        yield c


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix of this test's own."""
    return "/t-" + request.node.name.replace("[", "-").replace("]", "").replace("/", "-")
