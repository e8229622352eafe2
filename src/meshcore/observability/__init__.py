"""Metrics and logging of meshcore's control plane and data plane."""

from meshcore._extras import require

require("all", "meshcore.observability")
