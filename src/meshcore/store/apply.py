"""Writing resources to the etcd store: validated first (as the admission webhook validates
them), then all in ONE transaction, or none.

Optimistic concurrency: a resource carrying ``metadata.resourceVersion`` (as ``meshcore get``
prints it: the key's ``mod_revision``; ``"0"``: must not exist yet) is written only if the
stored key still has that revision; otherwise the whole batch fails and says which resource
moved (``force`` writes anyway). A resource without one is written over whatever is stored,
but the batch is still one transaction against what was read just before (a concurrent write
in between makes it read and try again).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from meshcore.config import _validated
from meshcore.config.loader import Document, iter_config_files, parse_yaml, read_text
from meshcore.config.values import DEFAULT_DOMAIN
from meshcore.errors import ConfigProblem
from meshcore.store import StoreURL
from meshcore.store.etcd import EtcdClient, rpc

ATTEMPTS = 5


class Conflict(Exception):
    """A resource's stored revision moved since the caller read it."""


@dataclass(frozen=True, slots=True)
class Item:
    """One resource to write (or delete): where it came from and its key."""

    key: str
    kind: str
    namespace: str
    name: str
    value: bytes | None  # None: delete
    expected: int | None  # the resourceVersion the caller read (None: not given)
    file: str = ""
    line: int = 0

    @property
    def ident(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass
class Outcome:
    """What a batch did (or would do, dry-run): per resource 'created', 'configured',
    'unchanged', 'deleted' or 'not found', and the store revision after it."""

    results: list[tuple[Item, str]] = field(default_factory=list)
    revision: int = 0


def read_items(
    paths: Iterable[str], url: StoreURL, *, domain: str = DEFAULT_DOMAIN, delete: bool = False
) -> tuple[list[Item], list[ConfigProblem]]:
    """The resources of the files (validated as the webhook does, each problem with its file
    and line), as store items; every problem of every file, and duplicates in the batch."""
    items: list[Item] = []
    problems: list[ConfigProblem] = []
    seen: dict[str, Item] = {}
    for path in iter_config_files(paths):
        text, unreadable = read_text(path)
        if text is None:
            problems.extend(unreadable)
            continue
        docs, parse_problems = parse_yaml(text, str(path))
        problems.extend(parse_problems)
        for doc in docs:
            if doc.value is None:
                continue
            item, found = _item(doc, url, domain, delete)
            problems.extend(found)
            if item is None:
                continue
            first = seen.get(item.key)
            if first is not None:
                problems.append(
                    ConfigProblem(
                        f"{item.ident} is in the batch twice (first at {first.file}:{first.line})",
                        path="metadata.name",
                        kind=item.kind,
                        namespace=item.namespace,
                        name=item.name,
                        file=item.file,
                        line=item.line,
                    )
                )
                continue
            seen[item.key] = item
            items.append(item)
    return items, problems


def _item(
    doc: Document, url: StoreURL, domain: str, delete: bool
) -> tuple[Item | None, list[ConfigProblem]]:
    value = doc.value
    if delete:  # only the identity matters
        found: list[ConfigProblem] = []
    else:
        found = list(_validated(doc, domain)[1])
    if any(p.severity == "error" for p in found) or not isinstance(value, dict):
        if not found:
            found.append(
                ConfigProblem("a document must be a mapping", file=doc.file, line=doc.line)
            )
        return None, found
    raw = value.get("metadata")
    meta: dict[str, Any] = raw if isinstance(raw, dict) else {}
    kind, name = value.get("kind"), meta.get("name")
    namespace = meta.get("namespace") or "default"
    api = value.get("apiVersion")
    if not all(isinstance(x, str) and x for x in (kind, name, namespace, api)):
        found.append(
            ConfigProblem(
                "apiVersion, kind and metadata.name are needed to store a resource",
                file=doc.file,
                line=doc.line,
            )
        )
        return None, found
    expected: int | None = None
    rv = meta.get("resourceVersion")
    if rv is not None:
        try:
            expected = int(str(rv))
        except ValueError:
            found.append(
                ConfigProblem(
                    f"resourceVersion {rv!r} is not a store revision (meshcore get prints it)",
                    path="metadata.resourceVersion",
                    kind=str(kind),
                    namespace=str(namespace),
                    name=str(name),
                    file=doc.file,
                    line=doc.line_of(("metadata", "resourceVersion")),
                )
            )
            return None, found
    group = str(api).rpartition("/")[0]
    stored = None if delete else encode(value)
    key = url.key(group, str(kind), str(namespace), str(name))
    return Item(
        key, str(kind), str(namespace), str(name), stored, expected, doc.file, doc.line
    ), found


def encode(value: dict[str, Any]) -> bytes:
    """The bytes stored for a resource: its JSON (fields in the order written), without the
    store's own resourceVersion."""
    meta = value.get("metadata")
    if isinstance(meta, dict) and "resourceVersion" in meta:
        value = {**value, "metadata": {k: v for k, v in meta.items() if k != "resourceVersion"}}
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def commit(
    client: EtcdClient, items: list[Item], *, force: bool = False, dry_run: bool = False
) -> Outcome:
    """Writes (or deletes) every item in one transaction; Conflict names the resources whose
    stored revision is not the one their resourceVersion says (nothing is written then)."""
    for _ in range(ATTEMPTS):
        current = _read(client, items)
        moved = [
            (i, current[i.key][0])
            for i in items
            if i.expected is not None and not force and current[i.key][0] != i.expected
        ]
        if moved:
            raise Conflict(
                "; ".join(
                    f"{i.ident} ({i.file}:{i.line}) was read at resourceVersion {i.expected} "
                    f"but the store has {'nothing' if now == 0 else now}"
                    for i, now in moved
                )
                + ": get it again and re-apply your change, or apply --force"
            )
        outcome = Outcome()
        compare, ops = [], []
        for i in items:
            mod, value = current[i.key]
            compare.append(
                rpc.Compare(
                    result=rpc.Compare.EQUAL,
                    target=rpc.Compare.MOD,
                    key=i.key.encode(),
                    mod_revision=mod,
                )
            )
            if i.value is None:
                verdict = "deleted" if mod else "not found"
                if mod:
                    ops.append(
                        rpc.RequestOp(
                            request_delete_range=rpc.DeleteRangeRequest(key=i.key.encode())
                        )
                    )
            elif mod == 0:
                verdict = "created"
                ops.append(
                    rpc.RequestOp(request_put=rpc.PutRequest(key=i.key.encode(), value=i.value))
                )
            elif value == i.value:
                verdict = "unchanged"
            else:
                verdict = "configured"
                ops.append(
                    rpc.RequestOp(request_put=rpc.PutRequest(key=i.key.encode(), value=i.value))
                )
            outcome.results.append((i, verdict))
        if dry_run or not ops:
            outcome.revision = max((m for m, _ in current.values()), default=0)
            return outcome
        resp = client.txn(compare, ops)
        if resp.succeeded:
            outcome.revision = int(resp.header.revision)
            return outcome
        # Someone wrote in between (and the caller named no version for those): again.
    raise Conflict(f"the store kept changing under the batch ({ATTEMPTS} attempts)")


def _read(client: EtcdClient, items: list[Item]) -> dict[str, tuple[int, bytes]]:
    """Every item's key at one revision: (mod_revision (0: absent), value)."""
    ops = [rpc.RequestOp(request_range=rpc.RangeRequest(key=i.key.encode())) for i in items]
    resp = client.txn([], ops)
    out: dict[str, tuple[int, bytes]] = {}
    for i, r in zip(items, resp.responses, strict=True):
        kvs = r.response_range.kvs
        out[i.key] = (int(kvs[0].mod_revision), bytes(kvs[0].value)) if kvs else (0, b"")
    return out


def listed(client: EtcdClient, url: StoreURL, under: str = "") -> tuple[int, list[Any]]:
    """(store revision, KeyValues under the config prefix (and ``under`` below it))."""
    return client.range_prefix(url.config_prefix + under)
