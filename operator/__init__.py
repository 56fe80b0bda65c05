"""Savepoint: OpenStack-grade volume revert, share backup and RBD image snapshots for Kubernetes."""

__version__ = "0.1.0"
