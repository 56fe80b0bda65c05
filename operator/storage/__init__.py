"""Ceph RBD primitives for Savepoint's handlers and movers; no Kubernetes in here.

- ``errors``: ``StorageError`` and subclasses with condition reasons (pure).
- ``extents``: byte-range arithmetic (pure).
- ``ceph``: ceph-csi style credentials and config.json, connecting, pools.
- ``rbd``: image facts, snapshots, locks, clones, flatten, allocation maps.
- ``sparse``: sparse verified image copy and a sparseness-independent checksum.

``errors`` and ``extents`` import without python-rados; the others need
Debian's python3-rados/python3-rbd.  Import the submodules directly.
"""
