"""The data-plane side of meshcore: what runs next to (or inside) a workload's proxy."""

from meshcore.dataplane.certs import CertificateClient, WorkloadSecret

__all__ = ["CertificateClient", "WorkloadSecret"]
