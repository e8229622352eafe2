"""One vocabulary across ``meshcore`` commands, help and defaults on every option, ``-o`` where
a command prints output, and the control plane's monitoring port where proxy-status looks."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from tests.unit.test_cli import ROOT, run

from meshcore.cli._parser import MONITORING_PORT, parser


def subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def options(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if a.option_strings and a.dest != "help"]


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_every_option_has_help_and_shows_its_default(command: str) -> None:
    p = subcommands()[command]
    text = p.format_help()
    for a in options(p):
        if a.help == argparse.SUPPRESS:
            continue  # an old spelling kept as an alias
        assert a.help, f"{command} {a.option_strings[0]}: no help"
        if a.default not in (None, False, []) and not a.required:
            assert a.help is not None
            shown = f"(default: {a.default})"
            assert shown in " ".join(text.split()), f"{command} {a.option_strings[0]}: {shown}"


def test_agent_and_proxy_name_the_same_inputs_alike() -> None:
    shared = ["--node-id", "--xds-address", "--ca-address", "--ca-mtls-address", "--root-cert",
              "--token-file"]  # fmt: skip
    for command in ("agent", "proxy"):
        shown = {s for a in options(subcommands()[command]) if a.help != argparse.SUPPRESS
                 for s in a.option_strings}  # fmt: skip
        assert set(shared) <= shown, (command, set(shared) - shown)


@pytest.mark.parametrize(
    ("old", "dest"),
    [("--ca-root", "root_cert"), ("--trust-bundle", "root_cert"), ("--xds", "xds_address"),
     ("--ca", "ca_address"), ("--ca-mtls", "ca_mtls_address"), ("--token", "token")],
)  # fmt: skip
def test_old_spellings_still_work_and_are_hidden(old: str, dest: str) -> None:
    args = parser().parse_args(["proxy", "--node-id", "n", old, "VALUE"])
    assert getattr(args, dest) == "VALUE"
    assert old + " " not in subcommands()["proxy"].format_help()


def test_monitoring_port_meets_proxy_status() -> None:
    serve = parser().parse_args(["serve", "--config", "x"])
    status = parser().parse_args(["proxy-status"])
    assert serve.monitoring_port == MONITORING_PORT == 15014
    assert status.monitoring_address == f"127.0.0.1:{serve.monitoring_port}"
    old = parser().parse_args(["proxy-status", "--control-plane", "h:1"])
    assert old.monitoring_address == "h:1"


@pytest.mark.parametrize("command", ["validate", "describe", "proxy-status"])
def test_output_formats(command: str) -> None:
    p = subcommands()[command]
    out = next(a for a in options(p) if a.dest == "output")
    assert tuple(out.choices or ()) == ("text", "json", "yaml")


def test_describe_json_and_yaml_agree() -> None:
    j = run("describe", "examples/", "-o", "json")
    y = run("describe", "examples/", "-o", "yaml")
    assert j.returncode == y.returncode == 0, j.stderr + y.stderr
    data = json.loads(j.stdout)
    assert data == yaml.safe_load(y.stdout)
    reviews = next(s for s in data["services"] if s["hostname"].startswith("reviews."))
    assert {s["name"] for s in reviews["subsets"]} == {"v1", "v2"}


def test_validate_yaml() -> None:
    r = run("validate", "examples/", "-o", "yaml")
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["valid"] is True


def test_serve_with_bad_config_prints_each_error_once(tmp_path: Path) -> None:
    (tmp_path / "vs.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        "metadata: {name: r, namespace: default}\n"
        "spec: {hosts: [r], http: [{retires: {attempts: 1}, route: [{destination: {host: r}}]}]}\n"
    )
    r = run("serve", "--config", str(tmp_path), "--xds-port", "0", "--monitoring-port", "0")
    assert r.returncode == 1
    assert r.stderr.count("unknown field 'retires'") == 1, r.stderr
    assert "last good" not in r.stderr
    assert "the configuration is invalid (1 error)" in r.stderr


def test_serve_says_when_the_monitoring_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        r = run("serve", "--config", "examples", "--xds-port", "0", "--monitoring-port", str(taken))
    assert r.returncode == 2, r.stderr
    assert f"cannot open the monitoring port 127.0.0.1:{taken}: Address already in use" in r.stderr


def _garbage_server(answer: bytes) -> tuple[socket.socket, threading.Thread]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(answer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, t


@pytest.mark.parametrize(
    "answer",
    [b"\x00\x00\x12\x04\x00\x00\x00\x00\x00\x00\x03\x7f\xff\xff\xff",  # an HTTP/2 (gRPC) frame
     b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",  # some other HTTP server
     b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"],
)  # fmt: skip
def test_proxy_status_at_the_wrong_port_says_so(answer: bytes) -> None:
    srv, t = _garbage_server(answer)
    try:
        port = srv.getsockname()[1]
        r = run("proxy-status", "--monitoring-address", f"127.0.0.1:{port}")
    finally:
        t.join(5)
        srv.close()
    assert r.returncode == 2
    assert "is it meshcore serve's monitoring port" in r.stderr, r.stderr
    assert "\\x00" not in r.stderr
    assert "hello" not in r.stderr
    assert "Traceback" not in r.stderr


def test_help_lists_every_command() -> None:
    r = subprocess.run([sys.executable, "-m", "meshcore", "--help"], capture_output=True,
                       text=True, cwd=ROOT, check=False)  # fmt: skip
    for command in subcommands():
        assert command in r.stdout


def test_version_names_the_distribution() -> None:
    r = run("--version")
    assert r.stdout.strip().endswith("(meshcore-xds on PyPI)"), r.stdout
