"""WorkloadGroup's rules: Istio's webhook checks (``ValidateWorkloadGroup`` and
``validateReadinessProbe``), then the probe meshcore cannot run.

The template is not checked as a WorkloadEntry (its address comes from the registering agent),
only its labels, ports and service account; the probe's numbers must be non-negative and it
needs one method. meshcore's control plane runs ``httpGet`` and ``tcpSocket`` probes (see
:mod:`meshcore.xds.autoregistration`); ``exec`` needs the agent to run a command next to the
app and is refused.
"""

from __future__ import annotations

from typing import Any

from meshcore.config.validate import _HEADER_NAME, Checker, Path, _d, _l

_NUMBERS = (
    "periodSeconds",
    "initialDelaySeconds",
    "timeoutSeconds",
    "successThreshold",
    "failureThreshold",
)


def check_workload_group(c: Checker, spec: dict[str, Any], name: str) -> None:
    if spec.get("template") is None:
        c.error(("spec", "template"), "template is required")
        return
    template = _d(spec.get("template"))
    if template.get("address"):
        c.error(
            ("spec", "template", "address"),
            "the address of an auto-registered WorkloadEntry is its agent's: leave it out",
        )
    c.labels(template.get("labels"), ("spec", "template", "labels"))
    for pname, number in _d(template.get("ports")).items():
        c.port(number, ("spec", "template", "ports", pname))
    c.labels(_d(spec.get("metadata")).get("labels"), ("spec", "metadata", "labels"))
    probe = spec.get("probe")
    if isinstance(probe, dict):
        _probe(c, probe, ("spec", "probe"))


def _probe(c: Checker, probe: dict[str, Any], path: Path) -> None:
    for key in _NUMBERS:
        value = probe.get(key)
        if isinstance(value, int) and value < 0:
            c.error(path + (key,), f"{key} must be non-negative")
    methods = [m for m in ("httpGet", "tcpSocket", "exec", "grpc") if m in probe]
    if not methods:
        c.error(path, "the probe needs a health check method (httpGet or tcpSocket)")
        return
    if len(methods) > 1:
        c.error(path, f"only one health check method: {', '.join(methods)}")
    http = probe.get("httpGet")
    if isinstance(http, dict):
        c.port(http.get("port"), path + ("httpGet", "port"))
        if http.get("port") is None:
            c.error(path + ("httpGet", "port"), "port is required")
        scheme = http.get("scheme", "")
        if scheme not in ("", "HTTP", "HTTPS"):
            c.error(path + ("httpGet", "scheme"), 'httpGet.scheme must be one of "HTTPS", "HTTP"')
        for i, header in enumerate(_l(http.get("httpHeaders"))):
            hname = _d(header).get("name")
            if not isinstance(hname, str) or not _HEADER_NAME.match(hname):
                c.error(
                    path + ("httpGet", "httpHeaders", i, "name"), f"invalid header name {hname!r}"
                )
    tcp = probe.get("tcpSocket")
    if isinstance(tcp, dict):
        c.port(tcp.get("port"), path + ("tcpSocket", "port"))
        if tcp.get("port") is None:
            c.error(path + ("tcpSocket", "port"), "port is required")
    if isinstance(probe.get("exec"), dict):
        if not _l(probe["exec"].get("command")):
            c.error(path + ("exec", "command"), "exec.command is required")
        else:
            c.error(
                path + ("exec",),
                "exec probes are not run by meshcore (its control plane runs httpGet and"
                " tcpSocket probes; a command would have to run next to the app)",
            )
    if "grpc" in probe:
        c.error(path + ("grpc",), "unknown health check method grpc")
