"""Istio security resources translated to Envoy: AuthorizationPolicy -> RBAC / ext_authz filters.

``Authorizer`` needs the control-plane extra (``xds-protos``, ``protobuf``); the validation in
``meshcore.security._validate`` does not, and ``meshcore validate`` uses it on a base install.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshcore.security.authz import Authorizer

__all__ = ["Authorizer"]


def __getattr__(name: str) -> Any:
    if name == "Authorizer":
        return importlib.import_module("meshcore.security.authz").Authorizer
    raise AttributeError(f"module 'meshcore.security' has no attribute {name!r}")
