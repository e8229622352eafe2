"""A VirtualService's HTTP routes for one host and port, as Istio translates them: matches,
destinations and weights, timeouts, retries (Istio's default retry policy when unset), rewrites,
mirrors, header operations, faults, CORS, and the hash policies of the destination's
DestinationRule."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.type.matcher.v3 import metadata_pb2, string_pb2
from envoy.type.v3 import percent_pb2

from meshcore.config.model import Checked, VirtualService, resolve_gateways
from meshcore.config.rules import GRPC_STATUS, JWT_CLAIM_HEADER, is_authority_header, is_claim_route
from meshcore.config.values import resolve_host, selector_matches
from meshcore.names import (
    CORS_NAME,
    FAULT_NAME,
    JWT_AUTHN_NAME,
    JWT_PAYLOAD_KEY,
    OUTBOUND,
    cluster_name,
)
from meshcore.xds.common import (
    Invalid,
    checked_of,
    duration,
    duration_ns,
    pack,
    percent,
    percentage_of,
    regex,
    string_matcher,
)
from meshcore.xds.index import Host
from meshcore.xds.node import Proxy

if TYPE_CHECKING:
    from meshcore.xds.routes import RouteBuilder

# Istio's retry policy for routes whose VirtualService says nothing about retries.
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
_REDIRECT_CODES = {
    301: rc.RedirectAction.MOVED_PERMANENTLY,
    302: rc.RedirectAction.FOUND,
    303: rc.RedirectAction.SEE_OTHER,
    307: rc.RedirectAction.TEMPORARY_REDIRECT,
    308: rc.RedirectAction.PERMANENT_REDIRECT,
}
_GRPC_CODES = {name: code for code, name in enumerate(GRPC_STATUS)}


def claim_matcher(
    name: str, spec: Mapping[str, Any], invert: bool, path: str, checked: Checked
) -> metadata_pb2.MetadataMatcher:
    """Istio's claim route on gateways (``@request.auth.claims.a.b``): the claim in the
    verified JWT payload the jwt_authn filter puts in its dynamic metadata (a string, or a list
    holding the value; ``{}``: the claim is present)."""
    rest = name[len(JWT_CLAIM_HEADER) :]
    claims = rest[1:-1].split("][") if rest.startswith("[") else rest[1:].split(".")
    mm = metadata_pb2.MetadataMatcher(filter=JWT_AUTHN_NAME, invert=invert)
    for key in (JWT_PAYLOAD_KEY, *claims):
        mm.path.add(key=key)
    if not spec:
        mm.value.present_match = True
        return mm
    sm = string_matcher(spec, path, checked)
    either = mm.value.or_match.value_matchers
    either.add().list_match.one_of.string_match.CopyFrom(sm)
    either.add().string_match.CopyFrom(sm)
    return mm


def default_retry() -> rc.RetryPolicy:
    rp = rc.RetryPolicy(
        retry_on=DEFAULT_RETRY_ON, host_selection_retry_max_attempts=5, retriable_status_codes=[503]
    )
    rp.num_retries.value = 2
    rp.retry_host_predicate.add(
        name="envoy.retry_host_predicates.previous_hosts",
        typed_config=pack(previous_hosts_pb2.PreviousHostsPredicate()),
    )
    return rp


class VsRoutes:
    """One VirtualService's HTTP routes for one host and port, as Istio translates them."""

    def __init__(
        self,
        tr: RouteBuilder,
        vs: VirtualService,
        svc: Host | None,
        port: int,
        proxy: Proxy,
        grpc: bool,
        gateway: str = "mesh",
    ) -> None:
        # ``gateway``: where the routes go (``mesh``, or a Gateway's ``namespace/name``); a
        # match naming gateways applies only there.
        self.gateway = gateway
        self.tr, self.vs, self.svc, self.port, self.proxy, self.grpc = (
            tr,
            vs,
            svc,
            port,
            proxy,
            grpc,
        )
        # The loader's parsed durations and compiled regexes (a VirtualService built by hand
        # is checked here first): the routes below trust what the loader validated.
        self.checked = checked_of(vs)

    def build(self) -> list[rc.Route] | None:
        routes: list[rc.Route] = []
        for i, http in enumerate(self.vs.http):
            path = f"spec.http[{i}]"
            if http.get("delegate"):
                raise Invalid(path + ".delegate", "delegate is not supported by meshcore")
            matches = self._matches(http, path)
            if matches is None:
                continue
            for mname, match in matches:
                r = rc.Route(match=match)
                rname = str(http.get("name", ""))
                r.name = f"{rname}.{mname}" if rname and mname else rname or mname
                self._action(r, http, path)
                routes.append(r)
        return routes or None

    def _matches(
        self, http: Mapping[str, Any], path: str
    ) -> list[tuple[str, rc.RouteMatch]] | None:
        raw = http.get("match") or ()
        if not raw:
            m = rc.RouteMatch(prefix="/")
            return [("", m)]
        out: list[tuple[str, rc.RouteMatch]] = []
        for j, m in enumerate(raw):
            mp = f"{path}.match[{j}]"
            if m.get("port") is not None and int(m["port"]) != self.port:
                continue
            if m.get("gateways") and self.gateway not in resolve_gateways(
                m["gateways"], self.vs.namespace
            ):
                continue
            if m.get("sourceLabels") and not selector_matches(m["sourceLabels"], self.proxy.labels):
                continue
            if m.get("sourceNamespace") and m["sourceNamespace"] != self.proxy.namespace:
                continue
            out.append((str(m.get("name", "")), self._match(m, mp)))
        return out or None

    def _match(self, m: Mapping[str, Any], path: str) -> rc.RouteMatch:
        rm = rc.RouteMatch()
        uri = m.get("uri")
        if uri is None:
            rm.prefix = "/"
        elif uri.get("exact") is not None:
            rm.path = str(uri["exact"])
        elif uri.get("prefix") is not None:
            rm.prefix = str(uri["prefix"])
        else:
            rm.safe_regex.CopyFrom(regex(uri.get("regex"), path + ".uri.regex", self.checked))
        if m.get("ignoreUriCase"):
            rm.case_sensitive.value = False
        for field_name, header in (
            ("method", ":method"),
            ("authority", ":authority"),
            ("scheme", ":scheme"),
        ):
            if m.get(field_name) is not None:
                rm.headers.append(
                    rc.HeaderMatcher(
                        name=header,
                        string_match=string_matcher(
                            m[field_name], f"{path}.{field_name}", self.checked
                        ),
                    )
                )
        for group, invert in (("headers", False), ("withoutHeaders", True)):
            for name in sorted(m.get(group) or {}):
                hp = f"{path}.{group}.{name}"
                spec = m[group][name]
                if self.gateway != "mesh" and is_claim_route(name):
                    rm.dynamic_metadata.append(claim_matcher(name, spec, invert, hp, self.checked))
                    continue
                hm = rc.HeaderMatcher(name=name, invert_match=invert)
                if not spec:
                    hm.present_match = True  # `{}`: the header is present (or, inverted, absent)
                else:
                    hm.string_match.CopyFrom(string_matcher(spec, hp, self.checked))
                rm.headers.append(hm)
        for name in sorted(m.get("queryParams") or {}):
            qp = f"{path}.queryParams.{name}"
            spec = m["queryParams"][name]
            q = rc.QueryParameterMatcher(name=str(name))
            if spec.get("exact") == "":
                q.present_match = True  # Istio: an empty exact value means "present"
            else:
                q.string_match.CopyFrom(string_matcher(spec, qp, self.checked))
            rm.query_parameters.append(q)
        return rm

    def _destination_cluster(self, dest: Mapping[str, Any], path: str) -> tuple[str, str, int]:
        host = resolve_host(str(dest["host"]), self.vs.namespace, self.tr.mesh.domain)
        subset = str(dest.get("subset", ""))
        number = (dest.get("port") or {}).get("number")
        if number is None:
            target = self.tr.mesh.service(host)
            ports = [p.port for p in target.ports] if target is not None else []
            if self.port in ports or target is None:
                number = self.port
            elif len(ports) == 1:
                number = ports[0]
            else:
                raise Invalid(
                    path + ".port",
                    f"destination {host} has several ports ({', '.join(map(str, ports))})"
                    " and none is chosen",
                )
        return cluster_name(OUTBOUND, int(number), subset, host), host, int(number)

    def _action(self, r: rc.Route, http: Mapping[str, Any], path: str) -> None:
        if http.get("redirect"):
            self._redirect(r, http["redirect"], path + ".redirect")
        elif http.get("directResponse"):
            d = http["directResponse"]
            r.direct_response.status = int(d["status"])
            body = d.get("body") or {}
            if body.get("string") is not None:
                r.direct_response.body.inline_string = str(body["string"])
            elif body.get("bytes") is not None:
                try:
                    r.direct_response.body.inline_bytes = base64.b64decode(
                        str(body["bytes"]), validate=True
                    )
                except ValueError:
                    raise Invalid(
                        path + ".directResponse.body.bytes", "bytes must be base64"
                    ) from None
        else:  # the loader requires one of route, redirect, directResponse (or delegate)
            self._route(r, http, path)
        authority = self._headers(r, http.get("headers") or {}, path + ".headers")
        if authority and r.HasField("route"):
            # Istio: the route's authority wins over a destination's (a rewrite.authority
            # with it is refused by validation).
            r.route.host_rewrite_literal = authority
        if http.get("fault"):
            fault = self._fault(http["fault"], path + ".fault")
            r.typed_per_filter_config[FAULT_NAME].CopyFrom(pack(fault))
        if http.get("corsPolicy") and not self.grpc:
            cors = self._cors(http["corsPolicy"], path + ".corsPolicy")
            r.typed_per_filter_config[CORS_NAME].CopyFrom(pack(cors))

    def _redirect(self, r: rc.Route, red: Mapping[str, Any], path: str) -> None:
        ra = r.redirect
        if red.get("uri"):
            ra.path_redirect = str(red["uri"])
        elif red.get("prefixRewrite"):
            # Envoy swaps the matched prefix (or exact path) for this value.
            ra.prefix_rewrite = str(red["prefixRewrite"])
        if red.get("authority"):
            ra.host_redirect = str(red["authority"])
        if red.get("port"):
            ra.port_redirect = int(red["port"])
        if red.get("derivePort") == "FROM_REQUEST_PORT":
            raise Invalid(path + ".derivePort", "FROM_REQUEST_PORT is not supported")
        if red.get("scheme"):
            ra.scheme_redirect = str(red["scheme"])
        ra.response_code = _REDIRECT_CODES[int(red.get("redirectCode") or 301)]

    def _route(self, r: rc.Route, http: Mapping[str, Any], path: str) -> None:
        ra = r.route
        dests = [
            (k, d)
            for k, d in enumerate(http["route"])
            if len(http["route"]) == 1 or d.get("weight", 0)
        ]
        first_host = first_subset = ""
        first_port = 0
        if len(dests) == 1:
            k, d = dests[0]
            dp = f"{path}.route[{k}]"
            ra.cluster, first_host, first_port = self._destination_cluster(
                d.get("destination") or {}, dp + ".destination"
            )
            first_subset = str((d.get("destination") or {}).get("subset", ""))
            authority = self._headers(r, d.get("headers") or {}, dp + ".headers")
            if authority:
                ra.host_rewrite_literal = authority  # rewrite.authority, below, wins
        else:
            for k, d in dests:
                dp = f"{path}.route[{k}]"
                name, host, port = self._destination_cluster(
                    d.get("destination") or {}, dp + ".destination"
                )
                cw = ra.weighted_clusters.clusters.add(name=name)
                cw.weight.value = int(d["weight"])
                authority = self._headers(cw, d.get("headers") or {}, dp + ".headers")
                if authority:
                    cw.host_rewrite_literal = authority
                if not first_host:
                    first_host, first_port = host, port
                    first_subset = str((d.get("destination") or {}).get("subset", ""))
        ra.timeout.CopyFrom(
            duration(http["timeout"], path + ".timeout", self.checked)
            if "timeout" in http
            else duration_ns(0)
        )
        retries = http.get("retries")
        if retries is None:
            ra.retry_policy.CopyFrom(default_retry())
        else:
            rp = self._retry(retries, path + ".retries")
            if rp is not None:
                ra.retry_policy.CopyFrom(rp)
        rw = http.get("rewrite") or {}
        if rw.get("uri") is not None:
            if r.match.WhichOneof("path_specifier") == "safe_regex":
                # Envoy's prefix_rewrite needs a prefix or path match; rewrite the whole path.
                ra.regex_rewrite.pattern.regex = ".*"
                ra.regex_rewrite.substitution = str(rw["uri"])
            else:
                ra.prefix_rewrite = str(rw["uri"])
        elif rw.get("uriRegexRewrite"):
            rr = rw["uriRegexRewrite"]
            ra.regex_rewrite.pattern.CopyFrom(
                regex(rr.get("match"), path + ".rewrite.uriRegexRewrite.match", self.checked)
            )
            ra.regex_rewrite.substitution = str(rr.get("rewrite", ""))
        if rw.get("authority"):
            ra.host_rewrite_literal = str(rw["authority"])
        mirrors: list[tuple[Mapping[str, Any], percent_pb2.FractionalPercent, str]] = []
        if http.get("mirror"):
            if http.get("mirrorPercentage") is not None:
                pct = percent(
                    (http["mirrorPercentage"] or {}).get("value", 0), path + ".mirrorPercentage"
                )
            elif http.get("mirrorPercent") is not None or http.get("mirror_percent") is not None:
                legacy = http.get("mirrorPercent", http.get("mirror_percent"))
                pct = percent(legacy, path + ".mirrorPercent")
            else:
                pct = percent(100, path + ".mirror")
            mirrors.append((http["mirror"], pct, path + ".mirror"))
        for k, m in enumerate(http.get("mirrors") or ()):
            mp = f"{path}.mirrors[{k}]"
            pct = percentage_of(m, mp)
            mirrors.append((m.get("destination") or {}, pct, mp + ".destination"))
        for dest, pct, mp in mirrors:
            cluster, _, _ = self._destination_cluster(dest, mp)
            policy = ra.request_mirror_policies.add(cluster=cluster)
            policy.runtime_fraction.default_value.CopyFrom(pct)
        if first_host:
            ra.hash_policy.extend(self.tr.hash_policies_for(first_host, first_subset, first_port))

    def _retry(self, retries: Mapping[str, Any], path: str) -> rc.RetryPolicy | None:
        attempts = int(retries.get("attempts", 2))
        if attempts == 0:
            return None  # Istio: zero attempts turns retries off
        rp = rc.RetryPolicy()
        rp.num_retries.value = attempts
        on = [p.strip() for p in str(retries.get("retryOn") or "").split(",") if p.strip()]
        codes = sorted({int(p) for p in on if p.isdigit()})
        policies = [p for p in on if not p.isdigit()]
        if codes and "retriable-status-codes" not in policies:
            policies.append("retriable-status-codes")
        rp.retry_on = ",".join(policies) if policies else DEFAULT_RETRY_ON
        if codes:
            rp.retriable_status_codes.extend(codes)
        elif not policies:
            rp.retriable_status_codes.append(503)
        if retries.get("perTryTimeout") is not None:
            rp.per_try_timeout.CopyFrom(
                duration(retries["perTryTimeout"], path + ".perTryTimeout", self.checked)
            )
        if retries.get("backoff") is not None:
            rp.retry_back_off.base_interval.CopyFrom(
                duration(retries["backoff"], path + ".backoff", self.checked)
            )
        if retries.get("retryIgnorePreviousHosts", True):
            rp.retry_host_predicate.add(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=pack(previous_hosts_pb2.PreviousHostsPredicate()),
            )
            rp.host_selection_retry_max_attempts = 5
        return rp

    def _headers(self, target: Any, headers: Mapping[str, Any], path: str) -> str:
        """Header operations on a Route or a weighted cluster (both have the same fields).
        Returns the authority a request ``set`` (else ``add``) of ``:authority`` or ``Host``
        gives ("" for none): Istio makes it the host rewrite, not a header operation."""
        append = base_pb2.HeaderValueOption
        authority = {"set": "", "add": ""}
        for side in ("request", "response"):
            ops = headers.get(side) or {}
            add_to = getattr(target, f"{side}_headers_to_add")
            for op, action in (
                ("set", append.OVERWRITE_IF_EXISTS_OR_ADD),
                ("add", append.APPEND_IF_EXISTS_OR_ADD),
            ):
                for name in sorted(ops.get(op) or {}):
                    if side == "request" and is_authority_header(name):
                        authority[op] = str(ops[op][name])
                        continue
                    add_to.append(
                        append(
                            header=base_pb2.HeaderValue(key=name, value=str(ops[op][name])),
                            append_action=action,
                        )
                    )
            for name in ops.get("remove") or ():
                getattr(target, f"{side}_headers_to_remove").append(name)
        return authority["set"] or authority["add"]

    def _fault(self, fault: Mapping[str, Any], path: str) -> fault_pb2.HTTPFault:
        out = fault_pb2.HTTPFault()
        delay = fault.get("delay")
        if delay:
            out.delay.fixed_delay.CopyFrom(
                duration(delay["fixedDelay"], path + ".delay.fixedDelay", self.checked)
            )
            out.delay.percentage.CopyFrom(percentage_of(delay, path + ".delay"))
        abort = fault.get("abort")
        if abort:
            if abort.get("httpStatus") is not None:
                out.abort.http_status = int(abort["httpStatus"])
            elif abort.get("grpcStatus") is not None:
                out.abort.grpc_status = _GRPC_CODES[str(abort["grpcStatus"])]
            else:  # valid (Istio's API has it) but not translated
                raise Invalid(path + ".abort.http2Error", "http2Error is not supported")
            out.abort.percentage.CopyFrom(percentage_of(abort, path + ".abort"))
        return out

    def _cors(self, cors: Mapping[str, Any], path: str) -> cors_pb2.CorsPolicy:
        out = cors_pb2.CorsPolicy()
        for k, origin in enumerate(cors.get("allowOrigins") or ()):
            out.allow_origin_string_match.append(
                string_matcher(origin, f"{path}.allowOrigins[{k}]", self.checked)
            )
        for origin in cors.get("allowOrigin") or ():
            out.allow_origin_string_match.append(string_pb2.StringMatcher(exact=str(origin)))
        if cors.get("allowMethods"):
            out.allow_methods = ",".join(cors["allowMethods"])
        if cors.get("allowHeaders"):
            out.allow_headers = ",".join(cors["allowHeaders"])
        if cors.get("exposeHeaders"):
            out.expose_headers = ",".join(cors["exposeHeaders"])
        if cors.get("maxAge") is not None:
            out.max_age = str(duration(cors["maxAge"], path + ".maxAge", self.checked).seconds)
        if cors.get("allowCredentials") is not None:
            out.allow_credentials.value = bool(cors["allowCredentials"])
        return out
