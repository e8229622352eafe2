"""Regenerates the Python modules of meshcore's own .proto files with grpcio-tools.

``python -m meshcore._protos`` (``make protos``) writes them beside their .proto;
``generate(out_dir)`` writes them elsewhere (the tests compare the two).
"""

from __future__ import annotations

import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent
PROTOS = ("meshcore/ca/_proto/ca.proto",)


def generate(out_dir: Path = SRC) -> list[Path]:
    from grpc_tools import protoc  # dev dependency: grpcio-tools

    include = Path(protoc.__file__).parent / "_proto"
    for proto in PROTOS:
        code = protoc.main(
            [
                "protoc",
                f"-I{SRC}",
                f"-I{include}",
                f"--python_out={out_dir}",
                f"--pyi_out={out_dir}",
                str(SRC / proto),
            ]
        )
        if code != 0:
            raise RuntimeError(f"protoc failed on {proto}")
    return [
        out_dir / p.replace(".proto", suffix) for p in PROTOS for suffix in ("_pb2.py", "_pb2.pyi")
    ]


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(SRC.parent) if path.is_relative_to(SRC.parent) else path)
    sys.exit(0)
