"""The Savepoint sandbox: real etcd, kube-apiserver, kube-controller-manager,
Ceph (memstore OSD), nfs-ganesha and a pod runner, all on 127.0.0.1.

Each component module exposes ``up(cfg)``, ``down(cfg)`` and ``status(cfg)``;
``cli`` strings them together.  Everything started is tracked by pid file under
the state directory so ``down`` can stop exactly what ``up`` started.
"""
