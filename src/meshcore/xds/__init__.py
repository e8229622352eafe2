"""xDS: Istio config translated to Envoy resources, snapshots, and the ADS server."""
