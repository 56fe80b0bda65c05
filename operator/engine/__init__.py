"""The flow engine: what every flow runs on (context, step runner, mover calls, fault points).

Layers, top to bottom: ``flows`` (one module per kind, a declared list of steps) →
``engine`` → ``kube`` (API client, Events, locks, references) and ``storage`` (Ceph,
files, repositories; no Kubernetes imports).
"""
