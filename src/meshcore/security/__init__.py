"""Istio security resources translated to Envoy: AuthorizationPolicy -> RBAC / ext_authz filters.

Needs the control-plane extra (``xds-protos``, ``protobuf``).
"""

from meshcore.security.authz import Authorizer

__all__ = ["Authorizer"]
