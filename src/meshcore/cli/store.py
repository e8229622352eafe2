"""``meshcore apply``, ``delete`` and ``get`` against the etcd config store
(``--store etcd://HOST:PORT[,HOST:PORT...]/PREFIX``). Exit codes: 0 done, 1 invalid or a
conflict (nothing written), 2 usage or the store unreachable."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from meshcore._extras import require

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2

if TYPE_CHECKING:
    from meshcore.store import EtcdTLS, StoreURL


def add_tls_flags(p: argparse.ArgumentParser) -> None:
    """etcd's client TLS on a command that takes a store, named as etcdctl's flags."""
    g = p.add_argument_group("etcd over TLS (as etcdctl's --cacert, --cert, --key)")
    g.add_argument("--etcd-cacert", metavar="FILE",
                   help="reach etcd over TLS, verifying it with this CA bundle (PEM); TLS is on "
                   "when any --etcd-* flag is given (without this one: the system's roots)")  # fmt: skip
    g.add_argument("--etcd-cert", metavar="FILE",
                   help="client certificate (PEM) for etcd's --client-cert-auth")  # fmt: skip
    g.add_argument("--etcd-key", metavar="FILE", help="the client certificate's key (PEM)")


def quiet_grpc() -> None:
    """A one-shot command prints the reason a store is unreachable itself: gRPC's own log
    lines about the same handshake (on stderr, from its C core) are left out unless the user
    sets GRPC_VERBOSITY. Takes effect when called before grpc is first imported."""
    import os

    os.environ.setdefault("GRPC_VERBOSITY", "NONE")


def tls_of(args: argparse.Namespace) -> EtcdTLS | None:
    """The ``--etcd-*`` flags; None without them. StoreURLError when they cannot be used."""
    from meshcore.store import EtcdTLS

    cacert, cert, key = (getattr(args, f"etcd_{n}", None) for n in ("cacert", "cert", "key"))
    if cacert is None and cert is None and key is None:
        return None
    tls = EtcdTLS(cacert, cert, key)
    tls.check()
    return tls


def tls_option(args: argparse.Namespace, store: str | None) -> EtcdTLS | None:
    """A command's ``--etcd-*`` flags (``store``: the option naming its store, None when the
    command was given none); a usage error when they are unusable or have no store to go to."""
    from meshcore.cli import _UsageError
    from meshcore.store import StoreURLError

    try:
        tls = tls_of(args)
    except StoreURLError as exc:
        raise _UsageError(str(exc)) from None
    if tls is not None and store is None:
        raise _UsageError("the --etcd-* flags are for an etcd store (--store or --config etcd://)")
    return tls


def add_rotation_flags(p: argparse.ArgumentParser) -> None:
    """``meshcore serve``'s root rotation of the replicas' shared self-signed CA. (The parser
    is built on a base install too: no meshcore.ca import here; the default stated is
    meshcore.ca.authority.ROOT_GRACE, which a test keeps equal.)"""
    p.add_argument("--root-grace", type=float, default=None, metavar="FRACTION",
                   help="replicas on etcd sharing a self-signed root: the leader rotates it "
                   "when less than this fraction of its lifetime is left (0 < FRACTION < 1; "
                   "default 0.2, Istio's CITADEL_SELF_SIGNED_CA_CERT_GRACE_PERIOD_"
                   "PERCENTILE 20)")  # fmt: skip
    p.add_argument("--root-ttl", default=None, metavar="DURATION",
                   help="the lifetime of a root the replicas generate, a Go duration over 1m "
                   "(default 87600h for the first root, as Istio's CITADEL_SELF_SIGNED_CA_"
                   "CERT_TTL; a rotation keeps the old root's lifetime)")  # fmt: skip


def rotation_options(args: argparse.Namespace, *, shared: bool) -> dict[str, Any]:
    """``--root-grace`` and ``--root-ttl`` as CAOptions fields; a usage error for a value
    that makes no sense, or for either flag without the replicas' shared self-signed root
    (``shared``) that they rotate."""
    import datetime

    from meshcore.ca.authority import CLOCK_SKEW
    from meshcore.cli import _UsageError
    from meshcore.config.validate import parse_duration

    grace, ttl = getattr(args, "root_grace", None), getattr(args, "root_ttl", None)
    if grace is None and ttl is None:
        return {}
    if not shared:
        raise _UsageError(
            "--root-grace and --root-ttl rotate the replicas' shared self-signed root: they "
            "need --config etcd://... and --ca-port, without --cacerts"
        )
    out: dict[str, Any] = {}
    if grace is not None:
        if not 0 < grace < 1:  # also refuses nan and inf
            raise _UsageError(
                f"--root-grace {grace}: give the fraction of the root's lifetime left when it "
                "is rotated, between 0 and 1 (e.g. 0.2)"
            )
        out["root_grace"] = grace
    if ttl is not None:
        ns = parse_duration(ttl)
        # A root starts CLOCK_SKEW in the past: a shorter one would be born expired.
        if ns is None or ns <= CLOCK_SKEW.total_seconds() * 1e9:
            raise _UsageError(
                f"--root-ttl {ttl!r}: give a duration longer than 1m, e.g. 87600h (10 years)"
            )
        out["root_ttl"] = datetime.timedelta(microseconds=ns // 1000)
    return out


def store_url(address: str, args: argparse.Namespace) -> StoreURL:
    """``--store``/``--config etcd://...`` with the command's ``--etcd-*`` flags;
    StoreURLError says what is wrong with either."""
    from dataclasses import replace

    from meshcore.store import parse_store_url

    return replace(parse_store_url(address), tls=tls_of(args))


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
    add_tls_flags(a)

    d = command("delete", "delete resources from the store in one transaction")
    d.add_argument("kind", nargs="?", help="a kind (e.g. VirtualService), with NAME")
    d.add_argument("name", nargs="?", help="the resource's name")
    d.add_argument("-n", "--namespace", default="default", help="the resource's namespace")
    d.add_argument("-f", "--filename", dest="files", action="append", default=[],
                   metavar="FILE|DIR", help="delete the resources these files name")  # fmt: skip
    d.add_argument("--store", required=True, metavar="etcd://...", help=store_help)
    d.add_argument("--dry-run", action="store_true", help="say what would be deleted")
    add_tls_flags(d)

    g = command("get", "list the resources in the store (with their resourceVersion)")
    g.add_argument("kind", nargs="?", help="only this kind (e.g. VirtualService)")
    g.add_argument("name", nargs="?", help="only this name")
    g.add_argument("-n", "--namespace", default=None, help="only this namespace")
    g.add_argument("--store", required=True, metavar="etcd://...", help=store_help)
    g.add_argument("-o", "--output", choices=("text", "yaml", "json"), default="text",
                   help="text: a table; yaml: a stream apply -f takes back; json: a List")  # fmt: skip
    add_tls_flags(g)


def _problem(p: Any) -> str:
    return f"{p.severity}: {p}"


def run(args: argparse.Namespace) -> int:
    require("etcd", f"meshcore {args.command}")
    quiet_grpc()
    import grpc

    from meshcore.store import StoreURLError
    from meshcore.store.etcd import EtcdClient, StoreUnavailable

    try:
        url = store_url(args.store, args)
    except StoreURLError as exc:
        print(f"meshcore {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from pathlib import Path

    absent = [f for f in getattr(args, "files", None) or () if not Path(f).exists()]
    if absent:
        for f in absent:
            print(f"meshcore {args.command}: no such file or directory: {f}", file=sys.stderr)
        return EXIT_USAGE
    try:
        client = EtcdClient(url.endpoints, tls=url.tls)
    except StoreUnavailable as exc:
        print(f"meshcore {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
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


def proxy_status(address: str, *, output: str = "text", tls: EtcdTLS | None = None) -> int:
    """Every proxy of every replica on the store (registered under each replica's lease), with
    the replica it is connected to and its sync state per type, and the replica that leads
    (``tls``: etcd over TLS)."""
    require("etcd", "meshcore proxy-status --store")
    quiet_grpc()
    from dataclasses import replace

    from meshcore.store import StoreURLError, parse_store_url
    from meshcore.store.etcd import EtcdClient, StoreUnavailable
    from meshcore.store.replicas import all_proxies, leader_of

    try:
        url = replace(parse_store_url(address), tls=tls)
    except StoreURLError as exc:
        print(f"meshcore proxy-status: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        client = EtcdClient(url.endpoints, tls=url.tls)
        try:
            proxies = all_proxies(client, url)
            leader = leader_of(client, url)
        finally:
            client.close()
    except StoreUnavailable as exc:
        print(f"meshcore proxy-status: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if output != "text":
        from meshcore.cli import emit

        emit({"proxies": proxies, "leader": leader}, output)
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
    print(f"(leader: {leader or 'none'})", file=sys.stderr)
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
