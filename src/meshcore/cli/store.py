"""``meshcore apply``, ``delete`` and ``get`` against the etcd config store
(``--store etcd://HOST:PORT[,HOST:PORT...]/PREFIX``). Exit codes: 0 done, 1 invalid or a
conflict (nothing written), 2 usage or the store unreachable."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from meshcore._extras import require

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def add_parsers(sub: Any, command: Any) -> None:
    """The store commands on the top-level parser (``command(name, help)`` makes one)."""
    store_help = "the config store: etcd://HOST:PORT[,HOST:PORT...]/PREFIX (as serve --config)"

    a = command("apply", "validate resources, then write them all to the store in one transaction")
    a.add_argument("-f", "--filename", dest="files", action="append", required=True,
                   metavar="FILE|DIR", help="YAML/JSON files or directories (repeatable)")  # fmt: skip
    a.add_argument("--store", required=True, metavar="etcd://...", help=store_help)
    a.add_argument("--dry-run", action="store_true", help="validate and say what would change")
    a.add_argument("--force", action="store_true",
                   help="write even where metadata.resourceVersion is not the stored one")  # fmt: skip
    a.add_argument("--domain", default="cluster.local", help="the mesh's DNS domain")

    d = command("delete", "delete resources from the store in one transaction")
    d.add_argument("kind", nargs="?", help="a kind (e.g. VirtualService), with NAME")
    d.add_argument("name", nargs="?", help="the resource's name")
    d.add_argument("-n", "--namespace", default="default", help="the resource's namespace")
    d.add_argument("-f", "--filename", dest="files", action="append", default=[],
                   metavar="FILE|DIR", help="delete the resources these files name")  # fmt: skip
    d.add_argument("--store", required=True, metavar="etcd://...", help=store_help)
    d.add_argument("--dry-run", action="store_true", help="say what would be deleted")

    g = command("get", "list the resources in the store (with their resourceVersion)")
    g.add_argument("kind", nargs="?", help="only this kind (e.g. VirtualService)")
    g.add_argument("name", nargs="?", help="only this name")
    g.add_argument("-n", "--namespace", default=None, help="only this namespace")
    g.add_argument("--store", required=True, metavar="etcd://...", help=store_help)
    g.add_argument("-o", "--output", choices=("text", "yaml", "json"), default="text",
                   help="text: a table; yaml: a stream apply -f takes back; json: a List")  # fmt: skip


def _problem(p: Any) -> str:
    return f"{p.severity}: {p}"


def run(args: argparse.Namespace) -> int:
    require("etcd", f"meshcore {args.command}")
    import grpc

    from meshcore.store import StoreURLError, parse_store_url
    from meshcore.store.etcd import EtcdClient, StoreUnavailable

    try:
        url = parse_store_url(args.store)
    except StoreURLError as exc:
        print(f"meshcore {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from pathlib import Path

    absent = [f for f in getattr(args, "files", None) or () if not Path(f).exists()]
    if absent:
        for f in absent:
            print(f"meshcore {args.command}: no such file or directory: {f}", file=sys.stderr)
        return EXIT_USAGE
    client = EtcdClient(url.endpoints)
    try:
        if args.command == "apply":
            return _apply(args, url, client)
        if args.command == "delete":
            return _delete(args, url, client)
        return _get(args, url, client)
    except StoreUnavailable as exc:
        print(f"meshcore {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except grpc.RpcError as exc:
        print(f"meshcore {args.command}: etcd refused: {exc.details()}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        client.close()


def _report(command: str, outcome: Any, dry_run: bool) -> None:
    for item, verdict in outcome.results:
        print(f"{item.ident} {verdict}{' (dry run)' if dry_run else ''}")
    if not dry_run:
        print(f"meshcore {command}: store revision {outcome.revision}")


def _apply(args: argparse.Namespace, url: Any, client: Any) -> int:
    from meshcore.store.apply import Conflict, commit, read_items

    items, problems = read_items(args.files, url, domain=args.domain)
    errors = [p for p in problems if p.severity == "error"]
    for p in problems:
        print(_problem(p), file=sys.stderr if p.severity == "error" else sys.stdout)
    if errors:
        e = len(errors)
        print(f"meshcore apply: {e} error{'s' * (e != 1)}: nothing written", file=sys.stderr)
        return EXIT_INVALID
    if not items:
        print("meshcore apply: no resources in the files given", file=sys.stderr)
        return EXIT_USAGE
    try:
        outcome = commit(client, items, force=args.force, dry_run=args.dry_run)
    except Conflict as exc:
        print(f"meshcore apply: conflict, nothing written: {exc}", file=sys.stderr)
        return EXIT_INVALID
    _report("apply", outcome, args.dry_run)
    return EXIT_OK


def _delete(args: argparse.Namespace, url: Any, client: Any) -> int:
    from meshcore.config import schema
    from meshcore.store.apply import Conflict, Item, commit, read_items

    if bool(args.files) == bool(args.kind):
        print("meshcore delete: give KIND NAME or -f FILE|DIR", file=sys.stderr)
        return EXIT_USAGE
    if args.files:
        items, problems = read_items(args.files, url, delete=True)
        if problems:
            for p in problems:
                print(_problem(p), file=sys.stderr)
            return EXIT_INVALID
    else:
        kind = schema.KINDS.get(args.kind)
        if kind is None or not args.name:
            known = ", ".join(sorted(schema.KINDS))
            print(f"meshcore delete: give a kind ({known}) and a name", file=sys.stderr)
            return EXIT_USAGE
        group = kind.api_versions[0].rpartition("/")[0]
        key = url.key(group, args.kind, args.namespace, args.name)
        items = [Item(key, args.kind, args.namespace, args.name, None, None)]
    try:
        outcome = commit(client, items, dry_run=args.dry_run)
    except Conflict as exc:  # pragma: no cover - deletes name no version
        print(f"meshcore delete: {exc}", file=sys.stderr)
        return EXIT_INVALID
    _report("delete", outcome, args.dry_run)
    return EXIT_OK


def proxy_status(address: str, *, output: str = "text") -> int:
    """Every proxy of every replica on the store (registered under each replica's lease), with
    the replica it is connected to and its sync state per type."""
    require("etcd", "meshcore proxy-status --store")
    from meshcore.store import StoreURLError, parse_store_url
    from meshcore.store.etcd import EtcdClient, StoreUnavailable
    from meshcore.store.replicas import all_proxies

    try:
        url = parse_store_url(address)
    except StoreURLError as exc:
        print(f"meshcore proxy-status: {exc}", file=sys.stderr)
        return EXIT_USAGE
    client = EtcdClient(url.endpoints)
    try:
        proxies = all_proxies(client, url)
    except StoreUnavailable as exc:
        print(f"meshcore proxy-status: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        client.close()
    if output != "text":
        from meshcore.cli import emit

        emit({"proxies": proxies}, output)
        return EXIT_OK
    columns = ["CDS", "LDS", "EDS", "RDS", "SDS"]
    width = max([len("NAME"), *map(len, proxies)])
    rwidth = max([len("REPLICA"), *(len(str(p.get("replica", ""))) for p in proxies.values())])
    head = f"{'NAME':<{width}}  {'REPLICA':<{rwidth}}  " + "  ".join(f"{c:<8}" for c in columns)
    print(head.rstrip())
    for node_id, entry in sorted(proxies.items()):
        types = entry.get("types") or {}
        cells = "  ".join(f"{types.get(c, 'NOT SENT'):<8}" for c in columns)
        print(f"{node_id:<{width}}  {entry.get('replica', ''):<{rwidth}}  {cells}".rstrip())
    if not proxies:
        print("(no proxies connected to any replica)")
    return EXIT_OK


def _get(args: argparse.Namespace, url: Any, client: Any) -> int:
    from meshcore.store import split_key

    revision, kvs = client.range_prefix(url.config_prefix)
    found: list[dict[str, Any]] = []
    rows = []
    for kv in kvs:
        key = kv.key.decode("utf-8", "replace")
        parts = split_key(url, key)
        if parts is None:
            continue
        _, kind, namespace, name = parts
        if args.kind and kind.lower() != args.kind.lower():
            continue
        if args.name and name != args.name:
            continue
        if args.namespace and namespace != args.namespace:
            continue
        try:
            value = json.loads(kv.value)
        except ValueError:  # written by another client, not as JSON
            import yaml

            try:
                value = yaml.safe_load(kv.value)
            except yaml.YAMLError:
                value = None
        if isinstance(value, dict) and isinstance(value.get("metadata"), dict):
            value["metadata"]["resourceVersion"] = str(kv.mod_revision)
        else:
            value = {"key": key, "unreadable": True, "resourceVersion": str(kv.mod_revision)}
        found.append(value)
        rows.append((kind, namespace, name, str(kv.mod_revision)))
    if args.output == "json":
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": found}, indent=2))
    elif args.output == "yaml":
        import yaml

        print(yaml.safe_dump_all(found, sort_keys=False), end="")
    else:
        head = ("KIND", "NAMESPACE", "NAME", "RESOURCEVERSION")
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
        for r in [head, *rows]:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        print(f"(store revision {revision})", file=sys.stderr)
    return EXIT_OK
