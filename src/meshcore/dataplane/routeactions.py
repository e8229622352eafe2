"""A route's actions as the data plane uses them (retries, hash policies, prefix rewrites),
from what the core's RouteConfiguration decoder read (``RouteMatch.action``): one decoder per
proto, these are only its values turned into the data plane's types; what the data plane cannot
do is refused at its field path."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshcore.errors import ConfigProblem, UnsupportedFeatureError


@dataclass(frozen=True, slots=True)
class HashPolicy:
    kind: str  # "header", "source_ip", "query_parameter", "cookie"
    name: str = ""
    terminal: bool = False
    # A cookie policy with a ttl (whole seconds): Envoy generates the cookie when the request
    # has none, with this path and these attributes (name, value).
    cookie_ttl: int | None = None
    cookie_path: str = ""
    cookie_attributes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retry_on: tuple[str, ...]
    num_retries: int
    per_try_timeout: float | None
    retriable_status_codes: tuple[int, ...] = ()
    # retry_host_predicate previous_hosts (Istio sets it): a retry avoids the hosts tried
    # already, picking again up to host_selection_retry_max_attempts times (Envoy's default 1).
    previous_hosts: bool = False
    host_selection_attempts: int = 1

    def retriable(self, status: int | None) -> bool:
        """Whether a response (``status``) or a connection failure (None) is retried, per
        Envoy's ``retry_on`` conditions."""
        on = self.retry_on
        if status is None:
            return bool({"connect-failure", "reset", "5xx", "gateway-error"} & set(on))
        if "5xx" in on and status >= 500:
            return True
        if "gateway-error" in on and status in (502, 503, 504):
            return True
        if "retriable-4xx" in on and status == 409:
            return True
        return "retriable-status-codes" in on and status in self.retriable_status_codes


PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"


def retry_policy(action: Mapping[str, Any]) -> RetryPolicy | None:
    """The route's retry policy, as the core's RouteConfiguration decoder read it."""
    rp: Mapping[str, Any] | None = action.get("retry_policy")
    if rp is None:
        return None
    on = tuple(x.strip() for x in (rp["retry_on"] or "").split(",") if x.strip())
    num = rp["num_retries"]
    per_try = rp["per_try_timeout"]
    return RetryPolicy(
        on, 1 if num is None else int(num),  # Envoy's default: 1
        float(per_try) if per_try else None,
        tuple(int(c) for c in rp["retriable_status_codes"]),
        previous_hosts=PREVIOUS_HOSTS in rp["retry_host_predicates"],
        host_selection_attempts=int(rp["host_selection_retry_max_attempts"]) or 1,
    )  # fmt: skip


def hash_policies(action: Mapping[str, Any], path: str, name: str) -> tuple[HashPolicy, ...]:
    """The route's hash policies, as the core's decoder read them; the kinds (and the header
    ``regex_rewrite``) the data plane cannot hash on are refused."""
    out = []
    for i, (kind, key, terminal, ttl, cookie_path, attrs, regex_rewrite) in enumerate(
        action["hash_policy"]
    ):
        problem: tuple[str, str] | None = None
        if kind == "header" and regex_rewrite:
            problem = ("a header hash policy's regex_rewrite is not supported by meshcore.dataplane",
                       ".header.regex_rewrite")  # fmt: skip
        elif kind == "header":
            out.append(HashPolicy("header", str(key).lower(), bool(terminal)))
        elif kind == "cookie":
            out.append(HashPolicy("cookie", str(key), bool(terminal), ttl, str(cookie_path),
                                  tuple((str(n), str(v)) for n, v in attrs)))  # fmt: skip
        elif kind in ("source_ip", "query_parameter"):
            out.append(HashPolicy(str(kind), str(key), bool(terminal)))
        else:
            problem = (f"hash policy {kind!r} is not supported by meshcore.dataplane", "")
        if problem is not None:
            raise UnsupportedFeatureError(
                [
                    ConfigProblem(
                        problem[0],
                        f"{path}.route.hash_policy[{i}]{problem[1]}",
                        kind="RDS",
                        name=name,
                    )
                ]
            )
    return tuple(out)


def rewrite_from(path_match: tuple[str, str]) -> str | None:
    """What prefix_rewrite replaces: the route's prefix or exact path (Envoy rewrites those
    two matches only)."""
    kind, value = path_match
    return value if kind in ("prefix", "path") else None
