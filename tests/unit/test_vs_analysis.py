"""VirtualService rules that can never be used are warned about as Istio's validation does
(``analyzeUnreachableHTTPRules``, VirtualServiceUnreachableRule and
VirtualServiceIneffectiveMatch), never refused."""

from __future__ import annotations

from typing import Any

from meshcore.config import validate_object


def warnings(spec: dict[str, Any]) -> list[tuple[str, str]]:
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
          "metadata": {"name": "r", "namespace": "d"}, "spec": {"hosts": ["r"], **spec}}  # fmt: skip
    found = validate_object(vs)
    assert not [p for p in found if p.severity == "error"], found
    return [(p.path, p.message) for p in found if p.severity == "warning"]


DEST = [{"destination": {"host": "r"}}]


def test_rule_after_catch_all_unused() -> None:
    assert warnings(
        {
            "http": [
                {"route": DEST},
                {"name": "late", "match": [{"uri": {"exact": "/"}}], "route": DEST},
            ]
        }
    ) == [
        (
            "spec.http[1]",
            'virtualService rule "late" not used (route without matches defined before)',
        )
    ]
    assert warnings({"tcp": [{"route": DEST}, {"route": DEST}]}) == [
        ("spec.tcp[1]", "virtualService rule #1 not used (only the last rule can have no matches)")
    ]


def test_duplicate_match_ignores_its_name() -> None:
    m1 = {"name": "a", "uri": {"exact": "/x"}}
    m2 = {"name": "b", "uri": {"exact": "/x"}}
    assert sorted(
        warnings({"http": [{"match": [m1], "route": DEST}, {"match": [m2], "route": DEST}]})
    ) == [
        ("spec.http[1]", "virtualService rule #1 not used (all matches used by prior rules)"),
        (
            "spec.http[1].match[0]",
            'virtualService rule #1 match "b" is not used (duplicate/overlapping match in rule #0)',
        ),
    ]


def test_prefix_covered_by_earlier_prefix() -> None:
    http = [
        {"match": [{"uri": {"prefix": "/api"}}], "route": DEST},
        {"match": [{"uri": {"prefix": "/api/v2"}, "method": {"exact": "GET"}}], "route": DEST},
    ]
    assert warnings({"http": http}) == [
        (
            "spec.http[1]",
            "virtualService rule #1 match #0 of prefix /api/v2 is not used (duplicate/overlapping match in rule #0 of prefix /api on #0)",
        )
    ]
    # a header on the later match makes it reachable; so does a POST method
    http[1]["match"][0]["headers"] = {"x": {"exact": "1"}}
    assert warnings({"http": http}) == []
    http[1]["match"][0].pop("headers")
    http[1]["match"][0]["method"] = {"exact": "POST"}
    assert warnings({"http": http}) == []


def test_match_with_keys_of_mixed_types_is_refused_not_a_crash() -> None:
    """A match whose keys mix text and numbers (found by the config fuzz test) is refused by
    the shape walk; the analysis beside it used to crash sorting those keys."""
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
          "metadata": {"name": "r", "namespace": "d"},
          "spec": {"hosts": ["r"], "http": [{"match": [{"": None, 0: None}], "route": DEST}]}}  # fmt: skip
    found = validate_object(vs)
    assert [p.path for p in found if p.severity == "error"]
