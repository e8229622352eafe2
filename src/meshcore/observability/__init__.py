"""Metrics and logging of meshcore's control plane and data plane."""
