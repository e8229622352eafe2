"""A list of iptables rules per IP family, and the texts made from it.

The order of rules, the ``-N`` lines and the table order follow Istio's rule builder
(``tools/istio-iptables/pkg/builder``), so that a dry run prints what Istio's golden files hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# Chains and targets iptables has built in: never created (-N) nor deleted (-X) by us.
BUILTIN = frozenset(
    {"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING", "ACCEPT", "RETURN", "DROP"}
)
# Stands for the family's own address inside a dual-stack rule.
IP_VERSION_SPECIFIC = "PLACEHOLDER_IP_VERSION_SPECIFIC"
ISTIO_PREFIX = "ISTIO_"


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: its table, its chain and its full parameters (``-A CHAIN ...`` or
    ``-I CHAIN POS ...``)."""

    table: str
    chain: str
    params: tuple[str, ...]

    @property
    def spec(self) -> tuple[str, ...]:
        """The rule's match and target, without -A/-I, chain and position."""
        return self.params[3:] if self.params[0] == "-I" else self.params[2:]

    @property
    def jump(self) -> str | None:
        """The target when it is the rule's last word (``-j CHAIN``), as Istio looks for it."""
        if len(self.params) >= 2 and self.params[-2] == "-j":
            return self.params[-1]
        return None

    def jumps_into_istio(self) -> bool:
        spec = self.spec
        return any(
            w == "-j" and i + 1 < len(spec) and spec[i + 1].startswith(ISTIO_PREFIX)
            for i, w in enumerate(spec)
        )


@dataclass(slots=True)
class RuleBuilder:
    """Rules for IPv4 and (when enabled) IPv6, in the order they are added."""

    ipv6: bool
    v4: list[Rule] = field(default_factory=list)
    v6: list[Rule] = field(default_factory=list)

    def append_v4(self, chain: str, table: str, *params: str) -> None:
        self.v4.append(Rule(table, chain, ("-A", chain, *params)))

    def append_v6(self, chain: str, table: str, *params: str) -> None:
        if self.ipv6:
            self.v6.append(Rule(table, chain, ("-A", chain, *params)))

    def append(self, chain: str, table: str, *params: str) -> None:
        self.append_v4(chain, table, *params)
        self.append_v6(chain, table, *params)

    def insert_v4(self, chain: str, table: str, position: int, *params: str) -> None:
        self.v4.append(Rule(table, chain, ("-I", chain, str(position), *params)))

    def insert_v6(self, chain: str, table: str, position: int, *params: str) -> None:
        if self.ipv6:
            self.v6.append(Rule(table, chain, ("-I", chain, str(position), *params)))

    def insert(self, chain: str, table: str, position: int, *params: str) -> None:
        self.insert_v4(chain, table, position, *params)
        self.insert_v6(chain, table, position, *params)

    def append_versioned(self, ipv4: str, ipv6: str, chain: str, table: str, *params: str) -> None:
        """A dual-stack rule whose IP_VERSION_SPECIFIC word is each family's own address."""
        self.append_v4(chain, table, *(ipv4 if p == IP_VERSION_SPECIFIC else p for p in params))
        self.append_v6(chain, table, *(ipv6 if p == IP_VERSION_SPECIFIC else p for p in params))

    def family(self, version: int) -> list[Rule]:
        return self.v4 if version == 4 else self.v6


def created_chains(rules: Iterable[Rule]) -> dict[str, list[str]]:
    """The chains a restore creates, per table, in Istio's order: chains holding rules first
    (in the order of their first rule), then chains only jumped to."""
    rules = list(rules)
    seen: set[tuple[str, str]] = set()
    out: dict[str, list[str]] = {}
    candidates = [(r.table, r.chain) for r in rules]
    candidates += [(r.table, j) for r in rules if (j := r.jump) is not None]
    for table, chain in candidates:
        if (table, chain) in seen:
            continue
        seen.add((table, chain))
        if chain not in BUILTIN:
            out.setdefault(table, []).append(chain)
    return out


def restore_text(rules: Sequence[Rule]) -> str:
    """The iptables-restore input (for ``--noflush``) that creates the chains and adds the
    rules; tables in name order, empty tables left out."""
    lines: dict[str, list[str]] = {}
    for table, chains in created_chains(rules).items():
        lines.setdefault(table, []).extend(f"-N {c}" for c in chains)
    for r in rules:
        lines.setdefault(r.table, []).append(" ".join(r.params))
    return _tables_text(lines)


def _tables_text(lines: dict[str, list[str]]) -> str:
    out: list[str] = []
    for table in sorted(lines):
        if lines[table]:
            out += [f"* {table}", *lines[table], "COMMIT"]
    return "".join(line + "\n" for line in out)


def undo_rules(rules: Sequence[Rule]) -> list[Rule]:
    """What removes ``rules``, newest first, as Istio's ``UndoRules``: rules in built-in chains
    and jumps into ISTIO_ chains; other rules inside ISTIO_ chains go with the chain's flush."""
    return [
        r for r in reversed(rules) if not r.chain.startswith(ISTIO_PREFIX) or r.jumps_into_istio()
    ]


def delete_line(rule: Rule) -> str:
    return " ".join(("-D", rule.chain, *rule.spec))


def check_args(rule: Rule) -> list[str]:
    """``iptables`` arguments that check the rule is present (-C)."""
    return ["-t", rule.table, "-C", rule.chain, *rule.spec]


def cleanup_text(
    rules: Sequence[Rule], present_rules: set[Rule], present_chains: set[tuple[str, str]]
) -> str:
    """The iptables-restore input that removes what ``restore_text(rules)`` added, limited to
    what is present: delete our rules, then flush and delete our chains."""
    lines: dict[str, list[str]] = {}
    for r in undo_rules(rules):
        if r in present_rules:
            lines.setdefault(r.table, []).append(delete_line(r))
    for table, chains in created_chains(rules).items():
        ours = [c for c in reversed(chains) if (table, c) in present_chains]
        lines.setdefault(table, []).extend(f"-F {c}" for c in ours)
        lines[table].extend(f"-X {c}" for c in ours)
    return _tables_text(lines)
