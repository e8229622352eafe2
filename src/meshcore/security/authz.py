"""Istio AuthorizationPolicy -> the Envoy filters Istio's builder gives one workload.

Semantics follow Istio's `pilot/pkg/security/authz` (builder, model) and are checked against
Istio's own goldens in ``tests/conformance/istio-authz``. Filters come out in Istio's order:
the CUSTOM pair (shadow RBAC, then ext_authz) per provider, then RBAC for AUDIT, DENY, ALLOW.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import any_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message

from meshcore.config.values import thaw
from meshcore.errors import ConfigError, ConfigProblem
from meshcore.names import (
    HTTP_EXT_AUTHZ,
    HTTP_RBAC,
    RE2_MAX_PROGRAM_SIZE,
    TCP_EXT_AUTHZ,
    TCP_RBAC,
)
from meshcore.security import _extauthz as ext
from meshcore.security import _model as m
from meshcore.security import _validate as v

__all__ = ["Authorizer", "AuthzDecision"]

HTTP_RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
TCP_RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
HTTP_EXT_AUTHZ_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
TCP_EXT_AUTHZ_TYPE = "type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz"
TCP_STAT_PREFIX = "tcp."
SHADOW_ALLOW_PREFIX = "istio_dry_run_allow_"
SHADOW_DENY_PREFIX = "istio_dry_run_deny_"
BAD_CUSTOM_SUFFIX = "-deny-due-to-bad-CUSTOM-action"
DRY_RUN_ANNOTATION = "istio.io/dry-run"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"

# Every message type we build or pack into an Any must be in the default descriptor pool (and
# json_format needs them to render `@type`); importing the generated modules registers them.
_PROTO_MODULES = (
    "envoy.extensions.filters.http.rbac.v3.rbac_pb2",
    "envoy.extensions.filters.network.rbac.v3.rbac_pb2",
    "envoy.extensions.filters.http.ext_authz.v3.ext_authz_pb2",
    "envoy.extensions.filters.network.ext_authz.v3.ext_authz_pb2",
    "envoy.extensions.path.match.uri_template.v3.uri_template_match_pb2",
    "envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2",
    "envoy.config.listener.v3.listener_components_pb2",
)


def _config_class(type_url: str) -> Any:
    _message_classes()  # registers every type we emit
    name = type_url.rpartition("/")[2]
    return message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(name))


def _message_classes() -> tuple[type[Message], type[Message]]:
    modules = {name: importlib.import_module(name) for name in _PROTO_MODULES}
    hcm = modules[_PROTO_MODULES[5]]
    listener = modules[_PROTO_MODULES[6]]
    return hcm.HttpFilter, listener.Filter


# Go's strconv.ParseBool, which Istio uses for the dry-run annotation.
_GO_BOOLS = {
    **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
    **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False),
}


@dataclass(frozen=True, slots=True)
class _Policy:
    namespace: str
    name: str
    action: str
    provider: str
    dry_run: bool
    rules: Sequence[Any] | None
    order: tuple[str, str, str, int]


def _rbac_action(action: str) -> str:
    # Istio builds CUSTOM rules as DENY (they only mark requests for ext_authz) and AUDIT as LOG.
    return {"ALLOW": "ALLOW", "DENY": "DENY", "AUDIT": "LOG", "CUSTOM": "DENY"}[action]


@dataclass(frozen=True, slots=True)
class AuthzDecision:
    """Istio's layered decision for one HTTP request, as the workload's Envoy makes it.

    ``action`` is the layer that decided: ``"CUSTOM"`` (the provider denied), ``"DENY"``,
    ``"ALLOW"`` (a policy matched, or none did while ALLOW policies select the workload), or
    None when no policy applies. ``policy_id`` is Istio's ``ns[NS]-policy[NAME]-rule[IDX]``
    of the deciding policy (None when an ALLOW layer denied because nothing matched).
    ``custom_provider`` names the ext_authz provider the request was sent to, if any;
    ``audit_policy_id`` is the AUDIT policy that matched (it never changes the decision);
    ``dry_run`` lists the dry-run layers' results as (action, allowed, policy id).
    """

    allowed: bool
    action: str | None = None
    policy_id: str | None = None
    custom_provider: str | None = None
    audit_policy_id: str | None = None
    dry_run: tuple[tuple[str, bool, str | None], ...] = ()


_LAYER = {"ALLOW": "ALLOW", "DENY": "DENY", "LOG": "AUDIT"}


def _istio_id(policy_id: str | None) -> str | None:
    """Istio's policy id without the CUSTOM prefix (``istio-ext-authz-PROVIDER-``) or the
    bad-provider suffix the builder adds."""
    if policy_id is None:
        return None
    start = policy_id.find("ns[")
    pid = policy_id[start:] if start > 0 else policy_id
    return pid.removesuffix(BAD_CUSTOM_SUFFIX)


def _custom_provider(policy_id: str) -> str:
    # istio-ext-authz-PROVIDER-ns[...]: the provider name may itself contain dashes.
    head = policy_id[len(ext.EXT_AUTHZ_MATCH_PREFIX) + 1 :]
    return head[: head.find("-ns[")] if "-ns[" in head else head


@dataclass(frozen=True, slots=True)
class _Stage:
    """One filter of the chain for :meth:`Authorizer.evaluate` (engine None: ext_authz)."""

    engine: Any
    custom_shadow: bool  # the CUSTOM shadow RBAC that marks requests for ext_authz
    action: str | None  # the enforced rules' RBAC action
    layer: str | None  # Istio's layer of the enforced rules
    shadow_layer: str | None  # Istio's layer of dry-run shadow rules


class AuthzChain:
    """The authorization filters of one filter chain (RBAC and ext_authz HttpFilter messages,
    or their network-filter forms, in order), compiled once and evaluated as Envoy runs them: Istio's layered
    decision. Immutable; the data plane builds one per inbound listener from the very filters
    Envoy receives."""

    __slots__ = ("_stages",)

    def __init__(self, stages: Sequence[_Stage]) -> None:
        self._stages = tuple(stages)

    @classmethod
    def from_filters(
        cls, filters: Iterable[Any], *, max_program_size: int = RE2_MAX_PROGRAM_SIZE
    ) -> AuthzChain:
        """``filters``: HttpFilter (or network Filter) messages; those that are neither RBAC
        nor ext_authz (the router, fault, CORS, tcp_proxy, ...) are skipped. Raises ConfigError/UnsupportedFeatureError from
        :meth:`meshcore.RbacEngine.from_proto` for a config the core cannot compile. Regexes
        may be as large as meshcore's Envoys accept (``max_program_size``)."""
        from meshcore._core.rbac import RbacEngine

        out: list[_Stage] = []
        for f in filters:
            name = getattr(f, "name", "")
            if name in (HTTP_EXT_AUTHZ, TCP_EXT_AUTHZ):
                out.append(_Stage(None, False, None, None, None))
                continue
            if name not in (HTTP_RBAC, TCP_RBAC):
                continue
            engine = RbacEngine.from_proto(
                getattr(f, "typed_config"),  # noqa: B009
                max_program_size=max_program_size,
            )
            custom = engine.shadow_rules_stat_prefix == ext.EXT_AUTHZ_SHADOW_PREFIX
            bad_custom = any(p.endswith(BAD_CUSTOM_SUFFIX) for p in engine.policy_ids)
            action = engine.action
            layer = None
            if action is not None:
                layer = "CUSTOM" if custom or bad_custom else _LAYER[action]
            shadow = engine.shadow_action
            shadow_layer = _LAYER[shadow] if shadow is not None and not custom else None
            out.append(_Stage(engine, custom, action, layer, shadow_layer))
        return cls(out)

    def __len__(self) -> int:
        return len(self._stages)

    @property
    def layers(self) -> tuple[tuple[Any, str | None, bool], ...]:
        """Each filter in order as (engine, Istio layer, CUSTOM shadow marker); engine None is
        an ext_authz filter. For batch evaluators (``meshcore.tools.replay``)."""
        return tuple((s.engine, s.layer, s.custom_shadow) for s in self._stages)

    def evaluate(self, *, custom_allowed: bool = False, **request: Any) -> AuthzDecision:
        """See :meth:`Authorizer.evaluate`."""
        audit: str | None = None
        dry_run: list[tuple[str, bool, str | None]] = []
        provider: str | None = None
        pending: str | None = None  # a CUSTOM policy matched: the next ext_authz filter runs
        allowed_by: str | None = None
        for stage in self._stages:
            engine = stage.engine
            if engine is None:  # ext_authz
                if pending is not None:
                    provider = _custom_provider(pending)
                    if not custom_allowed:
                        return AuthzDecision(
                            False, "CUSTOM", _istio_id(pending), provider, audit, tuple(dry_run)
                        )
                    pending = None
                continue
            d = engine.evaluate(**request)
            if stage.custom_shadow:
                pending = d.shadow_policy_id
            elif stage.shadow_layer is not None and d.shadow_allowed is not None:
                dry_run.append(
                    (stage.shadow_layer, d.shadow_allowed, _istio_id(d.shadow_policy_id))
                )
            if stage.layer is None:
                continue
            if not d.allowed:
                return AuthzDecision(
                    False, stage.layer, _istio_id(d.policy_id), provider, audit, tuple(dry_run)
                )
            if stage.action == "LOG" and d.policy_id is not None:
                audit = _istio_id(d.policy_id)
            elif stage.action == "ALLOW":
                allowed_by = _istio_id(d.policy_id)
        return AuthzDecision(
            True,
            "ALLOW" if allowed_by is not None else None,
            allowed_by,
            provider,
            audit,
            tuple(dry_run),
        )


class Authorizer:
    """The authorization filters Istio would give one workload.

    Build with :meth:`from_policies`; :meth:`filters` returns Envoy protobuf messages.
    ``problems`` lists what Istio would log and work around (a bad CUSTOM provider becomes
    DENY rules, an unparsable dry-run annotation is enforced): every such fallback fails closed.
    """

    def __init__(
        self,
        policies: Sequence[_Policy],
        *,
        trust_domain: str,
        trust_domain_aliases: Sequence[str],
        providers: Mapping[str, ext.BuiltExtAuthz],
        problems: list[ConfigProblem],
    ) -> None:
        self._policies = tuple(policies)
        self._bundle = m.TrustDomainBundle(trust_domain, trust_domain_aliases)
        self._providers = providers
        self._problems = problems
        self._cache: dict[bool, list[Message]] = {}
        self._compiled: AuthzChain | None = None

    @classmethod
    def from_policies(
        cls,
        policies: Iterable[Any],
        *,
        namespace: str,
        labels: Mapping[str, str] | None = None,
        trust_domain: str = "cluster.local",
        trust_domain_aliases: Sequence[str] = (),
        providers: Any = None,
        root_namespace: str = "istio-system",
        services: Iterable[str] | None = None,
    ) -> Authorizer:
        """Select the policies that apply to the workload and validate them.

        ``policies`` are AuthorizationPolicy manifests (parsed YAML mappings) or loaded
        resources with a ``manifest()`` method (``meshcore.config``), or one such manifest;
        empty documents are skipped. A policy the loader validated (it carries
        ``checked_warnings``) is trusted, not checked again; its warnings join ``problems``.
        ``providers`` is MeshConfig's ``extensionProviders`` (a list of ``{name,
        envoyExtAuthzHttp|envoyExtAuthzGrpc}``), or a mapping name -> provider body.
        ``services`` (``namespace/hostname`` entries) is the service registry providers are
        looked up in; without it, any provider service is taken as written.
        Raises :class:`ConfigError` listing every invalid policy field that applies.
        """
        if isinstance(policies, Mapping) or hasattr(policies, "manifest"):
            policies = [policies]  # one manifest on its own
        labels = dict(labels or {})
        selected: list[_Policy] = []
        problems: list[ConfigProblem] = []
        errors: list[ConfigProblem] = []
        for index, manifest in enumerate(policies):
            policy = _select(
                manifest,
                index,
                namespace=namespace,
                labels=labels,
                root_namespace=root_namespace,
                errors=errors,
                problems=problems,
            )
            if policy is not None:
                selected.append(policy)
        if errors:
            raise ConfigError(errors)
        # Istio orders by creation time, then name and namespace; root namespace first.
        selected.sort(key=lambda p: (p.namespace != root_namespace, p.order))
        built = ext.process_providers(providers, services)
        return cls(
            selected,
            trust_domain=trust_domain,
            trust_domain_aliases=list(trust_domain_aliases),
            providers=built,
            problems=problems,
        )

    @property
    def problems(self) -> Sequence[ConfigProblem]:
        """Warnings: what Istio would log while building (each handled by failing closed)."""
        for tcp in (False, True):
            self.filters(tcp)  # building is what finds provider problems
        return tuple(self._problems)

    @property
    def policy_names(self) -> Sequence[str]:
        """``namespace/name`` of the policies that select this workload, in build order."""
        return tuple(f"{p.namespace}/{p.name}" for p in self._policies)

    def filters(self, tcp: bool = False) -> list[Message]:
        """HTTP filters (HttpFilter) or, with ``tcp=True``, network filters (Filter).

        Each call returns fresh copies, so callers may modify them.
        """
        if tcp not in self._cache:
            self._cache[tcp] = self._build(tcp)
        out: list[Message] = []
        for msg in self._cache[tcp]:
            fresh = type(msg)()
            fresh.CopyFrom(msg)
            out.append(fresh)
        return out

    def evaluate(self, *, custom_allowed: bool = False, **request: Any) -> AuthzDecision:
        """Istio's layered decision for one HTTP request: CUSTOM, then DENY, then ALLOW (AUDIT
        never changes it), evaluated by running :meth:`filters` in order as Envoy does, each
        RBAC filter compiled into an :class:`meshcore.RbacEngine`.

        ``request`` takes the keyword arguments of :meth:`meshcore.RbacEngine.evaluate`
        (omitted attributes are absent). ``custom_allowed`` is the CUSTOM provider's answer
        for requests sent to it (denied by default: fail closed).
        """
        if self._compiled is None:  # compiled once per Authorizer (the filters never change)
            self._compiled = AuthzChain.from_filters(self.filters())
        return self._compiled.evaluate(custom_allowed=custom_allowed, **request)

    def filter_dicts(self, tcp: bool = False) -> list[dict[str, Any]]:
        """The same filters in proto-JSON form (camelCase, defaults omitted: the shape of
        Istio's goldens)."""
        if tcp not in self._cache:
            self._cache[tcp] = self._build(tcp)
        return [json_format.MessageToDict(msg) for msg in self._cache[tcp]]

    def _warn(self, problem: ConfigProblem) -> None:
        # HTTP and TCP builds meet the same provider problems: report each once.
        if problem not in self._problems:
            self._problems.append(problem)

    # --- building ---------------------------------------------------------------------------

    def _build(self, tcp: bool) -> list[Message]:
        http_filter, network_filter = _message_classes()
        cls = network_filter if tcp else http_filter
        out: list[Message] = []
        for spec in self._build_specs(tcp):
            config = dict(spec["typed_config"])
            type_url = config.pop("@type")
            typed_config = any_pb2.Any()
            # Constructors take the nested field-name dicts directly (and walk them in C).
            # Deterministic: map entries sorted, so equal configs give equal bytes (and hashes).
            typed_config.Pack(_config_class(type_url)(**config), deterministic=True)
            out.append(cls(name=spec["name"], typed_config=typed_config))
        return out

    def _build_specs(self, tcp: bool) -> list[dict[str, Any]]:
        by_action: dict[str, list[_Policy]] = {"CUSTOM": [], "AUDIT": [], "DENY": [], "ALLOW": []}
        for p in self._policies:
            by_action[p.action].append(p)
        filters = self._build_custom(by_action["CUSTOM"], tcp)
        for action in ("AUDIT", "DENY", "ALLOW"):
            built = self._build_rules(by_action[action], action, tcp)
            if built is None:
                continue
            enforce, shadow = built
            filters.append(self._rbac_filter(enforce, shadow, tcp))
        return filters

    def _build_rules(
        self, policies: Sequence[_Policy], action: str, tcp: bool
    ) -> tuple[m.Json | None, m.Json | None] | None:
        if not policies:
            return None
        rbac_action = _rbac_action(action)
        enforce: m.Json = {"action": rbac_action, "policies": {}}
        shadow: m.Json = {"action": rbac_action, "policies": {}}
        has_enforce = has_shadow = False
        for p in policies:
            target = shadow if p.dry_run else enforce
            has_shadow |= p.dry_run
            has_enforce |= not p.dry_run
            self._add_policy(p, target["policies"], "", tcp, strict=action == "ALLOW")
        return (enforce if has_enforce else None, shadow if has_shadow else None)

    def _add_policy(
        self, p: _Policy, into: dict[str, m.Json], prefix: str, tcp: bool, strict: bool
    ) -> None:
        rules = p.rules or []
        for i, rule in enumerate(rules):
            if rule is None:
                continue  # logged at selection time
            model = m.Model(rule, p.namespace)
            model.migrate_trust_domain(self._bundle)
            try:
                generated = model.generate(tcp, strict)
            except m.HttpOnlyError:
                # An ALLOW rule that needs HTTP attributes can never match a TCP connection.
                continue
            into[f"{prefix}ns[{p.namespace}]-policy[{p.name}]-rule[{i}]"] = generated
        if not rules:
            into[f"{prefix}ns[{p.namespace}]-policy[{p.name}]-rule[0]"] = m.MATCH_NEVER

    def _rbac_filter(self, enforce: m.Json | None, shadow: m.Json | None, tcp: bool) -> m.Json:
        config: m.Json = {"@type": TCP_RBAC_TYPE if tcp else HTTP_RBAC_TYPE}
        if enforce is not None:
            config["rules"] = enforce
        if shadow is not None:
            config["shadow_rules"] = shadow
        # Istio reads the action of possibly-absent shadow rules, which defaults to ALLOW.
        shadow_action = shadow["action"] if shadow is not None else "ALLOW"
        stat = {"ALLOW": SHADOW_ALLOW_PREFIX, "DENY": SHADOW_DENY_PREFIX}.get(shadow_action, "")
        if stat:
            config["shadow_rules_stat_prefix"] = stat
        if tcp:
            config["stat_prefix"] = TCP_STAT_PREFIX
        return {"name": TCP_RBAC if tcp else HTTP_RBAC, "typed_config": config}

    def _build_custom(self, policies: Sequence[_Policy], tcp: bool) -> list[m.Json]:
        if not policies:
            return []
        enforce: dict[str, dict[str, m.Json]] = {}
        shadow: dict[str, dict[str, m.Json]] = {}
        for p in policies:
            enforce.setdefault(p.provider, {})
            shadow.setdefault(p.provider, {})
            target = shadow if p.dry_run else enforce
            prefix = f"{ext.EXT_AUTHZ_MATCH_PREFIX}-{p.provider}-"
            self._add_policy(p, target[p.provider], prefix, tcp, strict=False)
        providers = sorted(enforce)
        rbac_type = TCP_RBAC_TYPE if tcp else HTTP_RBAC_TYPE
        rbac_name = TCP_RBAC if tcp else HTTP_RBAC

        def bad(provider: str) -> m.Json:
            # Deny what the CUSTOM policies would have sent to the provider: fail closed.
            policies_ = {k + BAD_CUSTOM_SUFFIX: v for k, v in enforce[provider].items()}
            config: m.Json = {
                "@type": rbac_type,
                "rules": {"action": "DENY", "policies": policies_},
            }
            if tcp:
                config["stat_prefix"] = TCP_STAT_PREFIX
            return {"name": rbac_name, "typed_config": config}

        if len(providers) > 1:
            self._warn(
                ConfigProblem(
                    "multiple CUSTOM authorization providers per workload are not supported, "
                    f"found {providers}; generated DENY rules instead",
                    "spec.provider.name",
                    v.KIND,
                    severity="warning",
                )
            )
            return [bad(provider) for provider in providers]

        filters: list[m.Json] = []
        for provider in providers:
            built = self._providers.get(provider)
            if built is None or built.problems:
                reason = (
                    f"extension provider {provider!r} is not defined"
                    if built is None
                    else f"extension provider {provider!r} is invalid: {'; '.join(built.problems)}"
                )
                self._warn(
                    ConfigProblem(
                        reason + "; generated DENY rules instead",
                        f"extensionProviders[{provider}]",
                        severity="warning",
                    )
                )
                filters.append(bad(provider))
                continue
            ext_config = built.tcp if tcp else built.http
            if ext_config is None:
                continue  # an HTTP provider has nothing to say about TCP connections
            rbac: m.Json = {
                "@type": rbac_type,
                "shadow_rules": {"action": "DENY", "policies": enforce[provider]},
                "shadow_rules_stat_prefix": ext.EXT_AUTHZ_SHADOW_PREFIX,
            }
            # Dry-run CUSTOM policies go to `rules` (an Istio quirk: they still call ext_authz).
            if shadow[provider]:
                rbac["rules"] = {"action": "DENY", "policies": shadow[provider]}
            if tcp:
                rbac["stat_prefix"] = TCP_STAT_PREFIX
            ext_typed = dict(ext_config)
            ext_typed["filter_enabled_metadata"] = ext.filter_enabled_metadata(rbac_name, provider)
            ext_typed["@type"] = TCP_EXT_AUTHZ_TYPE if tcp else HTTP_EXT_AUTHZ_TYPE
            filters.append({"name": rbac_name, "typed_config": rbac})
            filters.append(
                {"name": TCP_EXT_AUTHZ if tcp else HTTP_EXT_AUTHZ, "typed_config": ext_typed}
            )
        return filters


def _select(
    manifest: Any,
    index: int,
    *,
    namespace: str,
    labels: Mapping[str, str],
    root_namespace: str,
    errors: list[ConfigProblem],
    problems: list[ConfigProblem],
) -> _Policy | None:
    """The policy if it applies to the workload; validation problems go to ``errors``."""
    where = f"policies[{index}]"
    if manifest is None:
        return None  # an empty YAML document (e.g. after a trailing `---`)
    if getattr(manifest, "checked_warnings", None) is not None:
        return _select_checked(
            manifest,
            index,
            namespace=namespace,
            labels=labels,
            root_namespace=root_namespace,
            problems=problems,
        )
    file, line = "", 0
    to_manifest = getattr(manifest, "manifest", None)
    if callable(to_manifest):
        # A loaded resource (meshcore.config): its plain manifest, and where it came from.
        file, line = (
            str(getattr(manifest, "file", "") or ""),
            int(getattr(manifest, "line", 0) or 0),
        )
        manifest = to_manifest()
    if not isinstance(manifest, Mapping):
        errors.append(ConfigProblem("must be a mapping (a parsed manifest)", where))
        return None
    meta = manifest.get("metadata")
    name = str(meta.get("name") or "") if isinstance(meta, Mapping) else ""
    ns = str(meta.get("namespace") or "") if isinstance(meta, Mapping) else ""
    checker = v.Checker(ns, name or where, file, line)
    if manifest.get("kind") != v.KIND:
        checker.error("kind", f"expected {v.KIND}, found {manifest.get('kind')!r}")
    if manifest.get("apiVersion") not in v.API_VERSIONS:
        checker.error("apiVersion", f"expected one of {sorted(v.API_VERSIONS)}")
    if not name:
        checker.error("metadata.name", "must be set")
    if not ns:
        # A policy without a namespace would silently apply nowhere (or in the wrong place).
        checker.error("metadata.namespace", "must be set")
    if not checker.problems and ns not in (namespace, root_namespace):
        return None  # another namespace's policy: not ours to judge
    spec = checker.mapping(manifest.get("spec"), "spec")
    if spec is not None:
        v.check_selection(checker, spec)
    if checker.problems or spec is None:
        errors.extend(checker.problems)
        return None
    if not _selects(spec, ns, namespace, labels):
        return None
    v.check_spec(checker, spec)
    if checker.problems:
        errors.extend(checker.problems)
        return None

    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    dry_run = False
    if isinstance(annotations, Mapping) and DRY_RUN_ANNOTATION in annotations:
        raw = str(annotations[DRY_RUN_ANNOTATION])
        if raw in _GO_BOOLS:
            dry_run = _GO_BOOLS[raw]
        else:
            problems.append(
                ConfigProblem(
                    f"invalid {DRY_RUN_ANNOTATION} value {raw!r}; the policy is enforced",
                    f"metadata.annotations[{DRY_RUN_ANNOTATION}]",
                    v.KIND,
                    ns,
                    name,
                    severity="warning",
                )
            )
    problems.extend(checker.warnings)
    rules = spec.get("rules")
    provider = spec.get("provider") or {}
    stamp = str(meta.get("creationTimestamp") or "") if isinstance(meta, Mapping) else ""
    return _Policy(
        namespace=ns,
        name=name,
        action=str(spec.get("action") or "ALLOW"),
        provider=str(provider.get("name") or "") if isinstance(provider, Mapping) else "",
        dry_run=dry_run,
        rules=rules,
        order=(stamp, name, ns, index),
    )


def _select_checked(
    res: Any,
    index: int,
    *,
    namespace: str,
    labels: Mapping[str, str],
    root_namespace: str,
    problems: list[ConfigProblem],
) -> _Policy | None:
    """:func:`_select` for a policy the loader validated (``meshcore.config``'s
    AuthorizationPolicy, carrying the warnings its validation found): trusted, not checked
    again; the warnings are reported as a checked manifest's would be."""
    ns, name = res.namespace, res.name
    if ns not in (namespace, root_namespace):
        return None
    spec = res.spec
    if not _selects(spec, ns, namespace, labels):
        return None
    file, line = str(res.file or ""), int(res.line or 0)
    problems.extend(
        ConfigProblem(message, path, v.KIND, ns, name, file, line, "warning")
        for path, message in res.checked_warnings
    )
    provider = spec.get("provider") or {}
    return _Policy(
        namespace=ns,
        name=name,
        action=str(spec.get("action") or "ALLOW"),
        provider=str(provider.get("name") or ""),
        dry_run=bool(res.dry_run),  # validation refused values Go's ParseBool does not read
        rules=thaw(spec.get("rules")),
        order=("", name, ns, index),  # loaded resources carry no creationTimestamp
    )


def _selects(
    spec: Mapping[str, Any], policy_ns: str, namespace: str, labels: Mapping[str, str]
) -> bool:
    refs = list(spec.get("targetRefs") or [])
    if spec.get("targetRef"):
        refs.append(spec["targetRef"])
    if refs:
        # targetRefs bind policies to gateways and waypoints; a workload is selected only as
        # the Gateway it implements, in the policy's own namespace.
        gateway = labels.get(GATEWAY_NAME_LABEL)
        return policy_ns == namespace and any(
            isinstance(ref, Mapping)
            and ref.get("kind") == "Gateway"
            and ref.get("group", "gateway.networking.k8s.io") == "gateway.networking.k8s.io"
            and gateway is not None
            and ref.get("name") == gateway
            for ref in refs
        )
    match_labels = (spec.get("selector") or {}).get("matchLabels") or {}
    return all(labels.get(k) == val for k, val in match_labels.items())
