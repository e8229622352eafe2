"""The semantic rules of DestinationRule (traffic policies: load balancing, connection pools,
outlier detection, client TLS; subsets), as Istio's webhook checks them."""

from __future__ import annotations

from typing import Any

from meshcore.config.locality import TOPOLOGY_LABELS, check_failover, check_locality_lb
from meshcore.config.validate import _DNS1123_LABEL, Checker, Path, _d, _l


def _traffic_policy(c: Checker, tp: Any, path: Path, *, port_level: bool = False) -> None:
    if not isinstance(tp, dict):
        return
    if not any(v is not None for v in tp.values()):
        c.error(path, "a traffic policy must set at least one field")
    lb = _d(tp.get("loadBalancer"))
    if lb.get("simple") is not None and lb.get("consistentHash") is not None:
        c.error(path + ("loadBalancer",), "simple and consistentHash are mutually exclusive")
    _zone_aware(c, lb, _d(tp.get("outlierDetection")) if "outlierDetection" in tp else None, path)
    check_locality_lb(
        c, lb.get("localityLbSetting"), "outlierDetection" in tp,
        path + ("loadBalancer", "localityLbSetting"),
    )  # fmt: skip
    ch = lb.get("consistentHash")
    if isinstance(ch, dict):
        keys = [
            k
            for k in ("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName")
            if ch.get(k) not in (None, False)
        ]
        if len(keys) != 1:
            c.error(
                path + ("loadBalancer", "consistentHash"),
                "exactly one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName must be set",
            )
        cookie = ch.get("httpCookie")
        if isinstance(cookie, dict):
            if not cookie.get("name"):
                c.error(
                    path + ("loadBalancer", "consistentHash", "httpCookie", "name"),
                    "cookie name is required",
                )
            if "ttl" in cookie:
                c.duration(
                    cookie["ttl"], path + ("loadBalancer", "consistentHash", "httpCookie", "ttl")
                )
            seen: set[str] = set()
            for i, attr in enumerate(_l(cookie.get("attributes"))):
                apath = path + ("loadBalancer", "consistentHash", "httpCookie", "attributes", i)
                aname = _d(attr).get("name")
                if not aname:
                    c.error(apath + ("name",), "cookie attribute name cannot be empty")
                elif aname in seen:
                    c.error(apath + ("name",), f"duplicate cookie attribute name: {aname}")
                else:
                    seen.add(str(aname))
        if isinstance(ch.get("httpHeaderName"), str):
            c.header_name(
                ch["httpHeaderName"], path + ("loadBalancer", "consistentHash", "httpHeaderName")
            )
        if ch.get("ringHash") is not None and ch.get("maglev") is not None:
            c.error(
                path + ("loadBalancer", "consistentHash"),
                "ringHash and maglev are mutually exclusive",
            )
    pool = _d(tp.get("connectionPool"))
    if (
        isinstance(tp.get("connectionPool"), dict)
        and pool.get("tcp") is None
        and pool.get("http") is None
    ):
        c.error(path + ("connectionPool",), "a connection pool needs tcp or http settings")
    http_pool = _d(pool.get("http"))
    if http_pool.get("h2UpgradePolicy") == "UPGRADE" and http_pool.get("useClientProtocol") is True:
        c.error(
            path + ("connectionPool", "http", "useClientProtocol"),
            "useClientProtocol must not be true when h2UpgradePolicy is UPGRADE",
        )
    for section, fields in (
        ("tcp", ("maxConnections",)),
        (
            "http",
            (
                "http1MaxPendingRequests",
                "http2MaxRequests",
                "maxRequestsPerConnection",
                "maxRetries",
                "maxConcurrentStreams",
            ),
        ),
    ):
        sec = _d(pool.get(section))
        for f in fields:
            v = sec.get(f)
            if isinstance(v, int) and v < 0:
                c.error(path + ("connectionPool", section, f), f"{f} must not be negative")
        for f in ("connectTimeout", "idleTimeout", "maxConnectionDuration"):
            if section == "tcp" and f == "idleTimeout" and sec.get(f) in ("0s", "0ms", "0"):
                continue  # Istio: a TCP idle timeout of 0s disables it
            if f in sec:
                c.duration(sec[f], path + ("connectionPool", section, f), min_ms=1)
    keepalive = _d(pool.get("http")).get("http2KeepAlive")
    if isinstance(keepalive, dict):
        kpath = path + ("connectionPool", "http", "http2KeepAlive")
        for f in ("interval", "timeout"):
            if keepalive.get(f) is None:
                c.error(kpath + (f,), f"{f} is required when http2KeepAlive is set")
            else:
                c.duration(keepalive[f], kpath + (f,), min_ms=1)
    od = _d(tp.get("outlierDetection"))
    for f in ("interval", "baseEjectionTime"):
        if f in od:
            c.duration(od[f], path + ("outlierDetection", f), min_ms=1)
    for f in ("maxEjectionPercent", "minHealthPercent"):
        v = od.get(f)
        if isinstance(v, int) and not 0 <= v <= 100:
            c.error(path + ("outlierDetection", f), f"{f} {v} must be in the range 0..100")
    if isinstance(od.get("consecutiveErrors"), int) and od["consecutiveErrors"] < 0:
        c.error(
            path + ("outlierDetection", "consecutiveErrors"),
            "consecutiveErrors must not be negative",
        )
    elif od.get("consecutiveErrors") is not None:
        c.warn(
            path + ("outlierDetection", "consecutiveErrors"),
            "consecutiveErrors is deprecated and has no effect (as in Istio): use"
            " consecutive5xxErrors or consecutiveGatewayErrors",
        )
    local_origin = od.get("consecutiveLocalOriginFailures")
    if (
        isinstance(local_origin, int)
        and local_origin > 0
        and od.get("splitExternalLocalOriginErrors") is not True
    ):
        c.error(
            path + ("outlierDetection", "consecutiveLocalOriginFailures"),
            "consecutiveLocalOriginFailures needs splitExternalLocalOriginErrors: true",
        )
    tls = tp.get("tls")
    if isinstance(tls, dict):
        mode = tls.get("mode")
        tpath = path + ("tls",)
        if mode is None:
            c.error(tpath + ("mode",), "mode is required")
        if mode == "ISTIO_MUTUAL":
            for f in ("clientCertificate", "privateKey", "caCertificates", "credentialName"):
                if tls.get(f):
                    c.error(
                        tpath + (f,),
                        f"{f} cannot be set with mode ISTIO_MUTUAL (meshcore's CA provides the certificates)",
                    )
        if mode == "MUTUAL" and not tls.get("credentialName"):
            for f in ("clientCertificate", "privateKey"):
                if not tls.get(f):
                    c.error(tpath + (f,), f"{f} is required for mode MUTUAL without credentialName")
        if tls.get("insecureSkipVerify") is True and mode in ("SIMPLE", "MUTUAL"):
            # Istio: skipping verification contradicts naming what to verify against (with
            # MUTUAL, credentialName may hold only the client certificate).
            verify = ("caCertificates", "credentialName", "subjectAltNames")
            for f in verify if mode == "SIMPLE" else verify[::2]:
                if tls.get(f):
                    c.error(tpath + (f,), f"{f} cannot be set when insecureSkipVerify is true")
    if not port_level:
        ports: set[int] = set()
        for i, pls in enumerate(_l(tp.get("portLevelSettings"))):
            pls = _d(pls)
            number = _d(pls.get("port")).get("number")
            ppath = path + ("portLevelSettings", i)
            if number is None:
                c.error(ppath + ("port", "number"), "port number is required")
            c.port(number, ppath + ("port", "number"))
            if isinstance(number, int):
                if number in ports:
                    c.error(
                        ppath + ("port", "number"), f"port {number} has several portLevelSettings"
                    )
                ports.add(number)
            _traffic_policy(
                c,
                {k: v for k, v in pls.items() if k != "port"} or {"port": 1},
                ppath,
                port_level=True,
            )


def check_destination_rule(c: Checker, spec: dict[str, Any], name: str) -> None:
    host = spec.get("host")
    if not host:
        c.error(("spec", "host"), "host is required")
    else:
        c.host(host, ("spec", "host"), allow_ip=False)
    _traffic_policy(c, spec.get("trafficPolicy"), ("spec", "trafficPolicy"))
    names: set[str] = set()
    for i, sub in enumerate(_l(spec.get("subsets"))):
        sub = _d(sub)
        path: Path = ("spec", "subsets", i)
        sname = sub.get("name")
        if not sname:
            c.error(path + ("name",), "subset name is required")
        elif isinstance(sname, str):
            if not _DNS1123_LABEL.match(sname):
                c.error(path + ("name",), f"invalid subset name {sname!r}: a DNS-1123 label")
            if sname in names:
                c.error(path + ("name",), f"duplicate subset name {sname!r}")
            names.add(sname)
        c.labels(sub.get("labels"), path + ("labels",), selector=True)
        _traffic_policy(c, sub.get("trafficPolicy"), path + ("trafficPolicy",))
    selector = spec.get("workloadSelector")
    if isinstance(selector, dict):
        c.labels(
            selector.get("matchLabels"),
            ("spec", "workloadSelector", "matchLabels"),
            selector=True,
        )
        if not selector.get("matchLabels"):
            c.warn(
                ("spec", "workloadSelector"),
                "a workloadSelector without matchLabels selects every workload of the namespace",
            )
    c.export_to(spec)


def _zone_aware(c: Checker, lb: dict[str, Any], outlier: Any, path: Path) -> None:
    """Istio's ValidateZoneAwareLbSetting (meshcore reports the setting as not translated:
    see meshcore.xds.index)."""
    za = lb.get("zoneAwareLbSetting")
    if not isinstance(za, dict):
        return
    zpath = path + ("loadBalancer", "zoneAwareLbSetting")
    if lb.get("localityLbSetting") is not None:
        c.error(zpath, "only one of localityLbSetting and zoneAwareLbSetting can be set")
    for i, label in enumerate(_l(za.get("failoverPriority"))):
        if label in TOPOLOGY_LABELS:
            c.error(
                zpath + ("failoverPriority", i),
                f"'failover_priority' for zone aware lb must not use topology label '{label}';"
                " region- and zone-level routing are handled automatically",
            )
    if (za.get("failover") or za.get("failoverPriority")) and outlier is None:
        c.warn(zpath, "outlier detection policy must be provided for failover")
    check_failover(
        c, _l(za.get("failover")), zpath, "zone aware lb",
        "zone aware lb failover only specifies region; zone and subzone failover are handled"
        " automatically",
    )  # fmt: skip
