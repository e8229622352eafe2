"""xDS: Istio config translated to Envoy resources, snapshots, and the ADS server."""

from meshcore._extras import require

require("all", "meshcore.xds")
