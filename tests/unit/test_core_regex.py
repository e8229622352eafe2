"""The RE2 dialect as the Rust core compiles it: the same code validates config and matches."""

import pytest

from meshcore import _core


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        (r"/api/v\d+", "/api/v12", True),
        (r"/api/v\d+", "/api/v12/", False),  # full match, as Envoy's safe_regex
        (r"\d", "٣", False),  # RE2's \d is ASCII
        (r"\w+", "é", False),
        (r"(?i)ABC", "abc", True),
        (r"a|b", "ab", False),
    ],
)
def test_full_match_semantics(pattern: str, text: str, expected: bool) -> None:
    assert _core.regex_full_match(pattern, text) is expected


@pytest.mark.parametrize(
    ("pattern", "fragment"),
    [
        (r"(a)\1", "backreferences are not supported by RE2"),
        (r"(?=x)", "look-around"),
        (r"(?<!x)y", "look-around"),
        ("a{1001}", "bad repetition operator"),
        ("(", "invalid regex"),
    ],
)
def test_rejections_name_the_problem(pattern: str, fragment: str) -> None:
    with pytest.raises(ValueError, match="invalid regex") as info:
        _core.check_regex(pattern)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)
