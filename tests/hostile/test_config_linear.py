"""Reading and validating take time linear in the input (issue 11: duplicate-key detection
was quadratic, 40k keys 7.9 s, and stalled ``meshcore serve``). N and 4N of the same shape
are timed (CPU time of this process, the best of three, so other work on the machine counts
little); linear gives a ratio near 4, quadratic 16. The bound is generous so as not to be
flaky, and far below what quadratic gives."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path

from meshcore._core import yaml as core_yaml
from meshcore.config import validate

RATIO = 8.0


def _best(fn: Callable[[], object], runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.process_time()
        fn()
        best = min(best, time.process_time() - started)
    return best


def _ratio(make: Callable[[int], Callable[[], object]], n: int) -> tuple[float, float]:
    small, large = make(n), make(4 * n)
    small()  # warm up
    return _best(small), _best(large)


def _keys(n: int) -> str:
    return "".join(f"key{i}: {i}\n" for i in range(n))


def test_one_mapping_with_many_keys_parses_in_linear_time() -> None:
    t1, t4 = _ratio(lambda n: functools.partial(core_yaml.parse_yaml, _keys(n)), 10_000)
    assert t4 < RATIO * t1 + 0.05, (t1, t4)


def test_many_duplicate_keys_in_linear_time() -> None:
    t1, t4 = _ratio(lambda n: functools.partial(core_yaml.parse_yaml, _keys(n) * 2), 5_000)
    assert t4 < RATIO * t1 + 0.05, (t1, t4)


def test_flow_mapping_and_long_sequences_in_linear_time() -> None:
    def make(n: int) -> Callable[[], object]:
        flow = ", ".join(f"k{i}: [{i}, x]" for i in range(n))
        block = "".join(f"- {i}\n" for i in range(n))
        return lambda text=f"a: {{{flow}}}\nb:\n{block}": core_yaml.parse_yaml(text)

    t1, t4 = _ratio(make, 5_000)
    assert t4 < RATIO * t1 + 0.05, (t1, t4)


def test_validating_many_documents_in_linear_time(tmp_path: Path) -> None:
    def make(n: int) -> Callable[[], object]:
        path = tmp_path / f"mesh-{n}.yaml"
        path.write_text(
            "".join(
                f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\n"
                f"spec: {{selector: {{app: s{i}}}, ports: [{{name: http, port: 80}}]}}\n"
                f"---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n"
                f"metadata: {{name: s{i}}}\nspec:\n  hosts: [s{i}]\n  http:\n"
                f"  - route: [{{destination: {{host: s{i}}}}}]\n    timeout: 2s\n"
                for i in range(n)
            )
        )
        return lambda: validate([path])

    t1, t4 = _ratio(make, 300)
    assert t4 < RATIO * t1 + 0.05, (t1, t4)


def test_a_problem_per_key_of_a_large_mapping_in_linear_time(tmp_path: Path) -> None:
    """Each problem's line is looked up by its field path: in a mapping of many keys that
    was a scan per problem (20,000 bad label keys took 19.5 s, 5,000 took 1.2 s)."""

    def make(n: int) -> Callable[[], object]:
        path = tmp_path / f"labels-{n}.yaml"
        path.write_text(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  labels:\n"
            + "".join(f"    -bad{i}: v\n" for i in range(n))
            + "spec: {ports: [{port: 80}]}\n"
        )
        return lambda: validate([path])

    t1, t4 = _ratio(make, 2_000)
    assert t4 < RATIO * t1 + 0.05, (t1, t4)
