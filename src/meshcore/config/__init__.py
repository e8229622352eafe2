"""Istio-style configuration: load YAML files and directories, validate, build a MeshModel.

>>> from meshcore.config import load
>>> mesh = load(["examples/"])          # raises ConfigError listing every problem
>>> mesh.service("reviews", "default").ports
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from meshcore.config import schema
from meshcore.config.changes import EVERYTHING, ChangeSet, ResourceKey, changed_keys
from meshcore.config.loader import (
    MAX_FILE_BYTES,
    Document,
    Piece,
    collector_paused,
    iter_config_files,
    parse_pieces,
    parse_yaml,
    read_documents,
    read_text,
)
from meshcore.config.model import (
    DEFAULT_ROOT_NAMESPACE,
    RESOURCE_CLASSES,
    AuthorizationPolicy,
    Checked,
    DestinationRule,
    MeshModel,
    PeerAuthentication,
    RequestAuthentication,
    Resource,
    Service,
    ServiceEntry,
    ServicePort,
    Sidecar,
    Subset,
    VirtualService,
    WorkloadEntry,
    WorkloadGroup,
)
from meshcore.config.rules import RULES
from meshcore.config.validate import (
    MAX_DEPTH,
    Checker,
    check_annotations,
    check_metadata,
    format_path,
    problems_of,
    too_deep,
)
from meshcore.config.values import DEFAULT_DOMAIN, freeze, resolve_host
from meshcore.errors import ConfigError, ConfigProblem

__all__ = [
    "AuthorizationPolicy",
    "ChangeSet",
    "Derivation",
    "DestinationRule",
    "IncrementalLoader",
    "MeshModel",
    "PeerAuthentication",
    "RequestAuthentication",
    "Resource",
    "Service",
    "ServiceEntry",
    "ServicePort",
    "Sidecar",
    "Subset",
    "ValidationReport",
    "VirtualService",
    "WorkloadEntry",
    "WorkloadGroup",
    "load",
    "load_objects",
    "resolve_host",
    "validate",
    "validate_object",
]

_TOP_LEVEL = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})
# Kinds whose spec carries required fields; for the others an absent spec means defaults
# (e.g. an AuthorizationPolicy with no spec is the "allow nothing" policy).
_SPEC_REQUIRED = frozenset({"VirtualService", "DestinationRule", "ServiceEntry", "WorkloadEntry"})


@dataclass(frozen=True, slots=True)
class ValidationReport:
    """What validation found: every error and warning, and the model when there is no error."""

    problems: tuple[ConfigProblem, ...]
    model: MeshModel | None

    @property
    def errors(self) -> tuple[ConfigProblem, ...]:
        return tuple(p for p in self.problems if p.severity == "error")

    @property
    def warnings(self) -> tuple[ConfigProblem, ...]:
        return tuple(p for p in self.problems if p.severity == "warning")

    @property
    def ok(self) -> bool:
        return not self.errors


def _resource(doc: Document, domain: str, problems: list[ConfigProblem]) -> Resource | None:
    """Validates one document; returns its resource (None when not a known kind or invalid)."""
    value = doc.value
    if value is None:
        return None  # an empty document (e.g. a trailing ---)
    if not isinstance(value, dict):
        problems.append(
            ConfigProblem(
                "a document must be a mapping with apiVersion, kind, metadata and spec",
                file=doc.file,
                line=doc.line,
            )
        )
        return None
    kind_name = value.get("kind")
    api_version = value.get("apiVersion")
    raw_meta = value.get("metadata")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    ident_name = str(meta.get("name", "")) if meta else ""
    ident_ns = str(meta.get("namespace") or "default") if meta else ""
    if not isinstance(kind_name, str) or not kind_name:
        problems.append(
            ConfigProblem(
                "kind is required", path="kind", name=ident_name, file=doc.file, line=doc.line
            )
        )
        return None
    kind = schema.KINDS.get(kind_name)
    if (
        kind is not None
        and isinstance(api_version, str)
        and _group(api_version) not in {_group(v) for v in kind.api_versions}
    ):
        kind = None  # another API's kind of that name (Gateway API's Gateway): not meshcore's
    if kind is None:
        problems.append(
            ConfigProblem(
                f"unknown kind {kind_name!r} (apiVersion {api_version!r}) is ignored",
                path="kind",
                kind=kind_name,
                namespace=ident_ns,
                name=ident_name,
                file=doc.file,
                line=doc.line_of(("kind",)),
                severity="warning",
            )
        )
        return None
    checker = Checker()
    if api_version not in kind.api_versions:
        checker.error(
            ("apiVersion",),
            f"apiVersion {api_version!r} does not serve {kind_name}; use {' or '.join(kind.api_versions)}",
        )
    top: frozenset[str] = _TOP_LEVEL
    root: tuple[str, ...] = ("spec",)
    spec = value.get("spec")
    if kind_name == "Secret":  # a Kubernetes Secret's fields are at the top level
        top, root = (_TOP_LEVEL - {"spec"}) | schema.SECRET_FIELDS, ()
        spec = {k: v for k, v in value.items() if k in schema.SECRET_FIELDS}
    for key in value:
        if key not in top:
            checker.error((str(key),), f"unknown top-level field {key!r}")
    checker.shape(value.get("metadata"), schema.OBJECT_META, ("metadata",))
    name, namespace = check_metadata(checker, value.get("metadata"), kind)
    if spec is None:
        if kind_name in _SPEC_REQUIRED:
            checker.error(("spec",), "spec is required")
        spec = {}
    checker.namespace = namespace
    check_annotations(
        checker, value.get("metadata"), kind_name, spec if isinstance(spec, dict) else {}
    )
    if checker.shape(spec, kind.spec, root) or isinstance(spec, dict):
        RULES[kind_name](checker, spec if isinstance(spec, dict) else {}, name)
    found = problems_of(checker, kind_name, namespace, name, doc.file, doc.line_of)
    problems.extend(found)
    if any(p.severity == "error" for p in found):
        return None
    cls = RESOURCE_CLASSES[kind_name]
    extra: dict[str, Any] = dict(checker.typed)
    if cls in (Service, VirtualService, DestinationRule):
        extra["domain"] = domain
    if cls in (VirtualService, DestinationRule, RequestAuthentication):
        extra["checked"] = Checked(MappingProxyType(checker.durations), frozenset(checker.regexes))
    return cls(
        kind=kind_name,
        api_version=str(api_version),
        name=name,
        namespace=namespace,
        spec=freeze(spec),
        labels=freeze(meta.get("labels") or {}),
        annotations=freeze(meta.get("annotations") or {}),
        file=doc.file,
        line=doc.line,
        **extra,
    )


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def _check_references(
    model: MeshModel,
    docs: Mapping[tuple[str, str, str], Document],
    known: dict[int, tuple[VirtualService, list[ConfigProblem]]] | None = None,
) -> list[ConfigProblem]:
    """Cross-resource checks (as istioctl analyze): destinations naming unknown hosts or subsets.

    Warnings, not errors: Istio accepts such config (VirtualServices are often applied before
    their DestinationRules), and requests routed to a missing subset fail with 503.

    ``known``: each VirtualService's warnings by object, reused for the same objects (when no
    Service, ServiceEntry or DestinationRule changed: the caller's to know) and refilled.
    """
    out: list[ConfigProblem] = []
    found: dict[int, tuple[VirtualService, list[ConfigProblem]]] = {}
    for vs in model.virtual_services:
        hit = known.get(id(vs)) if known is not None else None
        if hit is None or hit[0] is not vs:
            hit = (vs, _references_of(vs, model, docs.get(vs.key)))
        found[id(vs)] = hit
        out.extend(hit[1])
    if known is not None:
        known.clear()
        known.update(found)
    return out


def _references_of(
    vs: VirtualService, model: MeshModel, doc: Document | None
) -> list[ConfigProblem]:
    out: list[ConfigProblem] = []

    def warn(path: tuple[str | int, ...], message: str) -> None:
        out.append(
            ConfigProblem(
                message,
                path=format_path(path),
                kind=vs.kind,
                namespace=vs.namespace,
                name=vs.name,
                file=vs.file,
                line=doc.line_of(path) if doc is not None else vs.line,
                severity="warning",
            )
        )

    gateways = {(r.namespace, r.name) for r in model.resources if r.kind == "Gateway"}
    for i, bound in enumerate(vs.bound_gateways if vs.gateways else ()):
        ns, _, name = bound.partition("/")
        if bound != "mesh" and (ns, name) not in gateways:
            warn(
                ("spec", "gateways", i),
                f"Gateway {bound} is not in the config: these routes apply nowhere there",
            )
    for i, route in enumerate(vs.http):
        for j, rd in enumerate(route.get("route", ())):
            dest = rd.get("destination") or {}
            host = resolve_host(str(dest.get("host", "")), vs.namespace, model.domain)
            subset = dest.get("subset")
            path = ("spec", "http", i, "route", j, "destination")
            if host and not host.startswith("*") and not model.has_host(host):
                warn((*path, "host"), f"host {host!r} is not a known Service or ServiceEntry")
            if subset and not model.subset_defined(host, subset):
                warn(
                    (*path, "subset"),
                    f"subset {subset!r} of host {host!r} is not defined by any DestinationRule"
                    " (requests routed to it fail with 503)",
                )
    return out


# One document's validation: its resource (None when invalid or not a resource) and problems.
Validated = tuple[Resource | None, tuple[ConfigProblem, ...]]


def _validated(doc: Document, domain: str) -> Validated:
    found: list[ConfigProblem] = []
    res = _resource(doc, domain, found)
    return res, tuple(found)


@dataclass(slots=True)
class _Assembly:
    """The resources of validated documents, as :func:`_build` puts them together."""

    resources: list[Resource]
    docs_by_key: dict[ResourceKey, Document]
    problems: list[ConfigProblem]  # the documents' own, then the duplicates
    positions: list[int]  # per document: its resource's place in ``resources``, or -1
    duplicates: bool


def _assemble(docs: list[Document], checked: list[Validated]) -> _Assembly:
    out = _Assembly([], {}, [], [], False)
    resources, docs_by_key, problems, positions = (
        out.resources,
        out.docs_by_key,
        out.problems,
        out.positions,
    )
    seen: dict[ResourceKey, Resource] = {}
    for doc, (res, found) in zip(docs, checked, strict=True):
        problems.extend(found)
        if res is None:
            positions.append(-1)
            continue
        key = res.key
        first = seen.get(key)
        if first is not None:
            out.duplicates = True
            positions.append(-1)
            problems.append(
                ConfigProblem(
                    f"duplicate {res.kind} {res.namespace}/{res.name}: first defined at {first.file}:{first.line}",
                    path="metadata.name",
                    kind=res.kind,
                    namespace=res.namespace,
                    name=res.name,
                    file=res.file,
                    line=res.line,
                )
            )
            continue
        seen[key] = res
        docs_by_key[key] = doc
        positions.append(len(resources))
        resources.append(res)
    return out


# At most this many documents changed for a model to be derived by replacing their resources
# (MeshModel.replacing) rather than built again.
_REPLACE_AT_MOST = 256


def _reassemble(
    prev: _Assembly,
    prev_checked: list[Validated],
    docs: list[Document],
    checked: list[Validated],
) -> tuple[_Assembly, dict[int, Resource]] | None:
    """:func:`_assemble` of ``docs`` at the cost of the change, when they are the documents
    ``prev`` was assembled from but for a few, each validated without problems, before and
    after, into a resource of the same key (a document edited in place); also the resources
    replaced, by place. None otherwise (then assembled again)."""
    if prev.duplicates or len(checked) != len(prev_checked):
        return None
    changed = [i for i, (a, b) in enumerate(zip(prev_checked, checked, strict=True)) if a is not b]
    if len(changed) > _REPLACE_AT_MOST:
        return None
    replaced: dict[int, Resource] = {}
    docs_by_key = prev.docs_by_key
    for i in changed:
        (old, old_found), (new, found) = prev_checked[i], checked[i]
        if old is None or new is None or old_found or found or old.key != new.key:
            return None
        if not replaced:
            docs_by_key = dict(docs_by_key)
        replaced[prev.positions[i]] = new
        docs_by_key[new.key] = docs[i]
    resources = prev.resources
    if replaced:
        resources = list(resources)
        for at, new in replaced.items():
            resources[at] = new
    return _Assembly(resources, docs_by_key, prev.problems, prev.positions, False), replaced


def _build(
    docs: Iterable[Document],
    problems: list[ConfigProblem],
    *,
    domain: str,
    root_namespace: str,
    check_references: bool = True,
    validated: Iterable[Validated] | None = None,
    derived_from: tuple[MeshModel, ChangeSet] | None = None,
    references: dict[int, tuple[VirtualService, list[ConfigProblem]]] | None = None,
    assembled: tuple[_Assembly, dict[int, Resource] | None] | None = None,
) -> ValidationReport:
    """The model of ``docs`` (each validated here, or taken from ``validated``, one per doc;
    ``references``: see :func:`_check_references`; ``assembled``: the documents already put
    together, with the resources replaced in ``derived_from``'s model if derived so)."""
    docs = list(docs)
    if assembled is None:
        checked = (
            list(validated) if validated is not None else [_validated(d, domain) for d in docs]
        )
        assembled = _assemble(docs, checked), None
    parts, replaced = assembled
    problems.extend(parts.problems)
    if replaced is not None and derived_from is not None:
        model = MeshModel.replacing(derived_from[0], parts.resources, replaced, derived_from[1])
    else:
        model = MeshModel(
            parts.resources,
            domain=domain,
            root_namespace=root_namespace,
            derived_from=derived_from,
        )
    if check_references:
        problems.extend(_check_references(model, parts.docs_by_key, references))
    ok = not any(p.severity == "error" for p in problems)
    return ValidationReport(tuple(problems), model if ok else None)


def validate(
    paths: Iterable[str | os.PathLike[str]],
    *,
    domain: str = DEFAULT_DOMAIN,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> ValidationReport:
    """Loads and validates YAML files and directories; never raises for bad input. A file
    larger than ``max_file_bytes`` is a problem, not read."""
    with collector_paused():
        docs, problems = read_documents(paths, max_file_bytes=max_file_bytes)
        return _build(docs, problems, domain=domain, root_namespace=root_namespace)


class Derivation:
    """What a source that is read again and again (the directory loader, the etcd store,
    :class:`meshcore.store.source.EtcdSource`) keeps from one report to the next, so that
    each builds its next model alike: the last model given, the keys changed since (a
    :class:`ChangeSet`, kept across invalid configurations; everything before the first
    model), which the new model carries (:meth:`MeshModel.changes_since`) and is derived with,
    and each VirtualService's cross-reference warnings (dropped when a kind they are checked
    against changed)."""

    def __init__(self, domain: str, root_namespace: str) -> None:
        self.domain = domain
        self.root_namespace = root_namespace
        self.changes: ChangeSet = EVERYTHING
        self.model: MeshModel | None = None  # the last model given
        self._given = False  # whether the last report gave one
        # The last report's documents as validated and put together (what the next one is
        # derived from when only a few documents changed in place).
        self._checked: list[Validated] = []
        self._assembly: _Assembly | None = None
        # The cross-reference warnings of each VirtualService, by object (_check_references).
        self._references: dict[int, tuple[VirtualService, list[ConfigProblem]]] = {}

    def report(
        self,
        docs: list[Document],
        problems: list[ConfigProblem],
        checked: list[Validated],
        keys: set[ResourceKey],
    ) -> ValidationReport:
        """The report of ``docs`` (validated as ``checked``), the source having found the
        resources of ``keys`` changed since its last report."""
        if _HOSTS & {k[0] for k in keys}:
            self._references.clear()  # what destinations are checked against changed
        if self.model is None:
            self.changes = EVERYTHING
        elif self._given:  # the last report gave a model: changes count from it
            self.changes = ChangeSet(frozenset(keys))
        else:
            self.changes = self.changes | ChangeSet(frozenset(keys))
        assembled: tuple[_Assembly, dict[int, Resource] | None] | None = None
        if self._assembly is not None:
            assembled = _reassemble(self._assembly, self._checked, docs, checked)
        if assembled is None:
            assembled = _assemble(docs, checked), None
        if not self._given and assembled[1] is not None:
            assembled = assembled[0], None  # the last model given is not the last assembled
        report = _build(
            docs,
            problems,
            domain=self.domain,
            root_namespace=self.root_namespace,
            derived_from=None if self.model is None else (self.model, self.changes),
            references=self._references,
            assembled=assembled,
        )
        self._checked, self._assembly = checked, assembled[0]
        self._given = report.model is not None
        if report.model is not None:
            self.model = report.model
        return report


class IncrementalLoader:
    """:func:`validate` for a config that is read again and again (the control plane's watch):
    only files whose size or modification time changed are read again; in them, only the
    stretches between document markers whose text or position changed are parsed again
    (:func:`meshcore.config.loader.parse_pieces`) and only documents that changed (value or
    starting line, or that had problems) are validated again; unchanged documents keep their
    Resource objects. The report is the one :func:`validate` would give.

    Files are looked at once per change: :meth:`poll` (the watch's question, "did anything
    change?") stats them and :meth:`validate` reads those it found changed, without a second
    stat pass. After each :meth:`validate`, ``reread`` holds the files it read and ``changes``
    the keys of the resources changed since the last model it gave (a :class:`ChangeSet`, kept
    across invalid configurations; everything before the first model), which the new model
    also carries (:meth:`MeshModel.changes_since`).
    """

    def __init__(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        domain: str = DEFAULT_DOMAIN,
        root_namespace: str = DEFAULT_ROOT_NAMESPACE,
        max_file_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        self.paths = list(paths)
        self.domain = domain
        self.root_namespace = root_namespace
        self.max_file_bytes = max_file_bytes
        self._files: dict[str, _CachedFile] = {}
        self.reread: list[str] = []  # files read (or found gone) by the last validate()
        self._derivation = Derivation(domain, root_namespace)
        # The files and their stamps found by the last poll() (None: not polled since the
        # last validate(), which then looks itself).
        self._polled: list[tuple[Path, tuple[int, int]]] | None = None
        self._seen: list[tuple[Path, tuple[int, int]]] | None = None

    def poll(self) -> bool:
        """One stat pass over the files: True when a file was added, removed, or changed in
        size or modification time since the last look (the next :meth:`validate` reads those
        without looking again)."""
        found = self._stat()
        changed = found != self._seen
        self._seen = self._polled = found
        return changed

    def _stat(self) -> list[tuple[Path, tuple[int, int]]]:
        out = []
        for path in iter_config_files(self.paths):
            try:
                st = path.stat()
                stamp = (st.st_mtime_ns, st.st_size)
            except OSError:
                stamp = (-1, -1)
            out.append((path, stamp))
        return out

    def validate(self) -> ValidationReport:
        with collector_paused():
            return self._validate()

    def _validate(self) -> ValidationReport:
        docs: list[Document] = []
        checked: list[Validated] = []
        problems: list[ConfigProblem] = []
        files: dict[str, _CachedFile] = {}
        self.reread = []
        keys: set[ResourceKey] = set()
        found = self._polled if self._polled is not None else self._stat()
        self._seen, self._polled = found, None
        for path, stamp in found:
            name = str(path)
            cached = self._files.get(name)
            if cached is None or cached.stamp != stamp or stamp[0] < 0:
                self.reread.append(name)
                new = self._read(path, stamp, cached)
                keys |= changed_keys(_resources(cached), _resources(new))
                cached = new
            files[name] = cached
            docs.extend(cached.docs)
            problems.extend(cached.problems)
            checked.extend(cached.checked)
        for name, gone in self._files.items():
            if name not in files:  # removed
                self.reread.append(name)
                keys |= changed_keys(_resources(gone), ())
        self._files = files
        return self._derivation.report(docs, problems, checked, keys)

    @property
    def changes(self) -> ChangeSet:
        """The keys of the resources changed since the last model given (see the class)."""
        return self._derivation.changes

    @property
    def _model(self) -> MeshModel | None:
        """The last model given."""
        return self._derivation.model

    def _read(self, path: Path, stamp: tuple[int, int], old: _CachedFile | None) -> _CachedFile:
        text, unreadable = read_text(path, self.max_file_bytes)
        if text is None:
            return _CachedFile(stamp, [], unreadable, [], [])
        file_docs, file_problems, pieces = parse_pieces(
            text, str(path), old.pieces if old is not None else ()
        )
        before = old.docs if old is not None else []
        before_checked = old.checked if old is not None else []
        # A document with problems is checked again: its lines may have moved.
        file_checked = [
            before_checked[i]
            if i < len(before)
            and not before_checked[i][1]
            and (before[i] is d or (before[i].line == d.line and before[i].value == d.value))
            else _validated(d, self.domain)
            for i, d in enumerate(file_docs)
        ]
        return _CachedFile(stamp, file_docs, file_problems, file_checked, pieces)


# The kinds a VirtualService's destinations and gateways are checked against (_check_references).
_HOSTS = frozenset({"Service", "ServiceEntry", "DestinationRule", "Gateway"})


def _resources(cached: _CachedFile | None) -> list[Resource]:
    return [r for r, _ in cached.checked if r is not None] if cached is not None else []


@dataclass(frozen=True, slots=True)
class _CachedFile:
    stamp: tuple[int, int]  # modification time (ns) and size
    docs: list[Document]
    problems: list[ConfigProblem]  # parse problems
    checked: list[Validated]  # each document's validation
    pieces: list[Piece]


def _too_deep(doc: Document) -> ConfigProblem | None:
    """A manifest given as a Python value, nested deeper than YAML may be."""
    path = too_deep(doc.value)
    if path is None:
        return None
    return ConfigProblem(
        f"nesting deeper than {MAX_DEPTH} levels", path=format_path(path), file=doc.file
    )


def load(
    paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    *,
    domain: str = DEFAULT_DOMAIN,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> MeshModel:
    """Loads a mesh from YAML files and directories; ConfigError lists every problem."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    report = validate(
        paths, domain=domain, root_namespace=root_namespace, max_file_bytes=max_file_bytes
    )
    if report.model is None:
        raise ConfigError(report.errors)
    return report.model


def load_objects(
    objects: Iterable[Mapping[str, Any]],
    *,
    source: str = "<objects>",
    domain: str = DEFAULT_DOMAIN,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> MeshModel:
    """Builds a mesh from already-parsed manifests (dicts); ConfigError lists every problem."""
    docs = [Document(dict(o), source, 0, i) for i, o in enumerate(objects)]
    deep = [p for d in docs if (p := _too_deep(d)) is not None]
    if deep:
        raise ConfigError(deep)
    report = _build(docs, [], domain=domain, root_namespace=root_namespace)
    if report.model is None:
        raise ConfigError(report.errors)
    return report.model


def validate_object(
    obj: Mapping[str, Any] | str, *, source: str = "<object>", domain: str = DEFAULT_DOMAIN
) -> list[ConfigProblem]:
    """Validates one manifest on its own (as the admission webhook does): errors and warnings."""
    problems: list[ConfigProblem] = []
    if isinstance(obj, str):
        docs, problems = parse_yaml(obj, source)
    else:
        docs = [Document(dict(obj), source, 0, 0)]
        deep = _too_deep(docs[0])
        if deep is not None:
            return [deep]
    for doc in docs:
        _resource(doc, domain, problems)
    return problems


def check_resource(res: Resource) -> tuple[Checked, list[ConfigProblem]]:
    """The loader's checks of a resource that did not come through the loader (built by hand):
    what they parsed (durations, regexes) and the problems they found, at ``res``'s place."""
    problems: list[ConfigProblem] = []
    loaded = _resource(
        Document(res.manifest(), res.file, res.line, 0),
        getattr(res, "domain", DEFAULT_DOMAIN),
        problems,
    )
    checked = getattr(loaded, "checked", None)
    return checked if checked is not None else Checked(MappingProxyType({}), frozenset()), problems
