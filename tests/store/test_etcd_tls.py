"""etcd with client TLS (server certificate, ``--client-cert-auth``) and meshcore reaching it
with ``--etcd-cacert/--etcd-cert/--etcd-key``: apply, get, serve from it, analyze; a wrong
CA, a missing client certificate or a plaintext client are refused with exit 2 and the TLS
reason, never a traceback."""

from __future__ import annotations

import datetime
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshcore.store import EtcdTLS, StoreURL, parse_store_url
from meshcore.store.etcd import EtcdClient, StoreUnavailable
from tests._cli import main
from tests.envoy._sidecar import control_plane_in_thread, wait_for
from tests.store._etcd import EtcdCluster, etcd_cluster
from tests.store._pki import Pki, make_pki

VS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-route}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
      weight: %d
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(Path(tmp_path_factory.mktemp("pki")))


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[EtcdCluster]:
    """One etcd member that speaks only TLS to clients and wants their certificates."""
    with etcd_cluster(Path(tmp_path_factory.mktemp("etcd-tls")), 1, pki=pki) as c:
        yield c


def tls_url(etcd: EtcdCluster, prefix: str) -> StoreURL:
    assert etcd.pki is not None
    p = etcd.pki
    url = parse_store_url(etcd.url(prefix))
    return StoreURL(
        url.endpoints, url.prefix, EtcdTLS(str(p.ca), str(p.client_cert), str(p.client_key))
    )


def test_apply_get_and_analyze_over_tls(
    tls_etcd: EtcdCluster, prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tls_etcd.url(prefix)
    (tmp_path / "vs.yaml").write_text(VS % 100)
    flags = tls_etcd.tls_flags()
    assert main(["apply", "-f", str(tmp_path / "vs.yaml"), "--store", store, *flags]) == 0
    assert "created" in capsys.readouterr().out
    assert main(["get", "VirtualService", "--store", store, *flags]) == 0
    assert "reviews-route" in capsys.readouterr().out
    assert main(["analyze", "--store", store, *flags]) in (0, 79)
    capsys.readouterr()
    assert main(["proxy-status", "--store", store, *flags]) == 0
    out, err = capsys.readouterr()
    assert "no proxies" in out
    assert "(leader: none)" in err  # no replica runs


@pytest.mark.parametrize(
    "which", ["wrong-ca", "no-client-cert", "client-cert-of-another-ca", "plaintext"]
)
def test_refused_tls_is_a_clear_exit_2(
    tls_etcd: EtcdCluster,
    pki: Pki,
    prefix: str,
    tmp_path: Path,
    which: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    flags = {
        "wrong-ca": ["--etcd-cacert", str(pki.other_ca), "--etcd-cert", str(pki.client_cert),
                     "--etcd-key", str(pki.client_key)],
        "no-client-cert": ["--etcd-cacert", str(pki.ca)],
        "client-cert-of-another-ca": ["--etcd-cacert", str(pki.ca), "--etcd-cert",
                                      str(pki.other_cert), "--etcd-key", str(pki.other_key)],
        "plaintext": [],
    }[which]  # fmt: skip
    (tmp_path / "vs.yaml").write_text(VS % 100)
    started = time.monotonic()
    code = main(["apply", "-f", str(tmp_path / "vs.yaml"), "--store", tls_etcd.url(prefix), *flags])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert "unreachable" in err, err
    if which == "wrong-ca":
        assert "CERTIFICATE_VERIFY_FAILED" in err or "certificate verify failed" in err, err
    assert time.monotonic() - started < 30
    assert main(["get", "--store", tls_etcd.url(prefix), *tls_etcd.tls_flags()]) == 0
    assert "reviews-route" not in capsys.readouterr().out  # nothing was written


def test_flag_mistakes_are_usage_errors(
    tls_etcd: EtcdCluster, pki: Pki, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tls_etcd.url(prefix)
    cert_as_key = ["--etcd-cert", str(pki.client_cert), "--etcd-key", str(pki.client_cert)]
    cases = [
        (["get", "--store", store, "--etcd-cert", str(pki.client_cert)], "go together"),
        (["get", "--store", store, "--etcd-cacert", "/nonexistent/ca.pem"], "no such file"),
        (["get", "--store", store, *cert_as_key], "not an unencrypted PEM private key"),
        (["analyze", "--etcd-cacert", str(pki.ca), "."], "are for an etcd store"),
        (["proxy-status", "--etcd-cacert", str(pki.ca)], "are for an etcd store"),
        (["serve", "--config", ".", "--etcd-cacert", str(pki.ca)], "are for an etcd store"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err, (argv, err)
        assert "Traceback" not in err


def test_serve_refuses_a_store_it_cannot_reach_over_tls(
    tls_etcd: EtcdCluster, pki: Pki, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ["serve", "--config", tls_etcd.url(prefix), "--xds-port", "0", "--monitoring-port", "0"]
    for flags, reason in (
        (["--etcd-cacert", str(pki.other_ca)], "CERTIFICATE_VERIFY_FAILED"),
        (["--etcd-cacert", str(pki.client_key)], "holds no PEM certificate"),
        ([], "does etcd want TLS?"),
    ):
        assert main([*store, *flags]) == 2, flags
        err = capsys.readouterr().err
        assert "cannot read the config store" in err, err
        assert reason in err, err
        assert "Traceback" not in err


def test_serve_from_etcd_over_tls(tls_etcd: EtcdCluster, prefix: str) -> None:
    """A replica lists and watches its config over TLS: a write reaches what it serves."""
    url = tls_url(tls_etcd, prefix)
    writer = EtcdClient(url.endpoints, tls=url.tls)
    key = url.key("networking.istio.io", "VirtualService", "default", "reviews-route")
    writer.put(key, (VS % 100).encode())
    try:
        with control_plane_in_thread([], store=url, metrics_port=0) as (_, server):
            assert server.store is not None
            assert server.store.connected
            revision = writer.put(key, (VS % 90).encode())
            wait_for(lambda: server.store.served_revision >= revision, "the write served", 15)
            port = server.debug.server_address[1]

            def syncz() -> dict[str, Any]:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/debug/syncz") as r:
                    status: dict[str, Any] = json.loads(r.read())["config_store"]
                    return status

            # The only replica leads (its lease over TLS too), and /debug/syncz says so.
            wait_for(lambda: syncz()["replica"]["leader"] is True, "leader in /debug/syncz", 15)
            assert syncz()["served_revision"] >= revision
    finally:
        writer.close()


def test_client_refuses_unreadable_tls_files(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="cannot read"):
        EtcdClient(["127.0.0.1:1"], tls=EtcdTLS(str(tmp_path / "absent.pem")))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--root-grace", "1.5"], "between 0 and 1"),
        (["--root-grace", "0"], "between 0 and 1"),
        (["--root-grace", "nan"], "between 0 and 1"),
        (["--root-ttl", "30s"], "longer than 1m"),
        (["--root-ttl", "ten years"], "longer than 1m"),
        (["--root-ttl=-5h"], "longer than 1m"),
    ],
)
def test_root_rotation_flags_refuse_nonsense(
    tls_etcd: EtcdCluster,
    prefix: str,
    flags: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["serve", "--config", tls_etcd.url(prefix), *tls_etcd.tls_flags(), "--ca-port", "0"]
    assert main([*argv, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err


def test_root_rotation_flags_need_the_shared_root(
    tls_etcd: EtcdCluster, prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ["--config", tls_etcd.url(prefix), *tls_etcd.tls_flags()]
    for argv in (
        ["serve", *store, "--root-grace", "0.3"],  # no CA
        ["serve", "--config", str(tmp_path), "--ca-port", "0", "--root-ttl", "48h"],  # no store
        ["serve", *store, "--ca-port", "0", "--cacerts", str(tmp_path), "--root-ttl", "48h"],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "need --config etcd://... and --ca-port, without --cacerts" in err, err


def test_two_replicas_over_tls_rotate_a_root_of_the_given_ttl(
    tls_etcd: EtcdCluster, prefix: str, tmp_path: Path
) -> None:
    """``meshcore serve`` processes over TLS with ``--root-ttl 2m --root-grace 0.6``: the
    first replica creates a 2-minute root (1 minute of it in the past: under 60% left, due at
    once), the leader rotates it, and both replicas give agents the two roots."""
    from cryptography import x509

    from tests.envoy._sidecar import free_ports
    from tests.store._etcd import replica_process

    (tmp_path / "tokens").write_text("")
    flags = (*tls_etcd.tls_flags(), "--root-ttl", "2m", "--root-grace", "0.6")
    store = tls_etcd.url(prefix)

    def ports() -> dict[str, int]:
        return dict(zip(("xds", "metrics", "ca", "ca_mtls"), free_ports(4), strict=True))

    with (
        replica_process(tmp_path, store, ports(), "a", extra=flags),
        replica_process(tmp_path, store, ports(), "b", extra=flags),
    ):

        def roots(name: str) -> list[x509.Certificate]:
            path = tmp_path / f"state-{name}" / "root-cert.pem"
            return x509.load_pem_x509_certificates(path.read_bytes()) if path.exists() else []

        wait_for(lambda: len(roots("a")) == 2 and len(roots("b")) == 2, "both trust 2 roots", 20)
        first = roots("a")[1]
        assert first.not_valid_after_utc - first.not_valid_before_utc == datetime.timedelta(
            minutes=2
        )
        assert roots("a") == roots("b")


def test_rotation_flags_help_states_the_default_and_needs_no_ca_module() -> None:
    """The help's default is the one rotation uses; building the parser imports no CA code
    (a base install, without cryptography, still parses every command)."""
    import subprocess
    import sys

    from meshcore.ca.authority import ROOT_GRACE
    from meshcore.cli._parser import parser

    serve = parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    grace = next(a for a in serve._actions if "--root-grace" in a.option_strings)
    assert f"default {ROOT_GRACE}," in (grace.help or "")
    code = (
        "import sys; sys.modules['cryptography'] = None\n"
        "from meshcore.cli._parser import parser\n"
        "parser().parse_args(['serve', '--config', 'etcd://h:1/p', '--root-grace', '0.3'])\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
