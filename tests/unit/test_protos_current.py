"""The committed generated modules are what grpcio-tools makes of the committed .proto files."""

from pathlib import Path

from meshcore._protos import SRC, generate


def test_generated_modules_are_current(tmp_path: Path) -> None:
    for fresh in generate(tmp_path):
        committed = SRC / fresh.relative_to(tmp_path)
        assert committed.read_text() == fresh.read_text(), (
            f"run `make protos`: {committed} is stale"
        )
