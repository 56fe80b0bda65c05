"""Talking to Kubernetes: the API client, Events, volume locks, reference resolution, ceph-csi config."""
