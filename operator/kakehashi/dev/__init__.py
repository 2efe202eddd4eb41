"""`kakehashi dev`: real local learning and production clusters, S3 and an OCI registry.

Everything runs as plain processes on loopback, built from pinned Go modules (see `tools/`),
so the platform is developed and tested against real servers on a machine with no Docker.
"""
