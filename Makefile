# The two commands (see README.md).  Both install what they need and are idempotent.
.PHONY: demo test unit bench sandbox-up sandbox-down crds manifests rootfs chart krew

demo:  ## bring the sandbox up and run the main job
	hack/demo

test:  ## the whole suite: unit, storage (real Ceph/NFS), end to end (real API server)
	hack/run-tests

unit:  ## only the fast tier, no services
	hack/run-tests -m unit

bench:  ## every benchmark in one run (bench/run-all); log in .sandbox/bench/
	bench/run-all

sandbox-up:
	hack/sandbox up

sandbox-down:
	hack/sandbox down

crds:  ## regenerate crds/, the chart's copy and docs/api.md from the pydantic models
	.venv/bin/python -m savepoint.crdgen
	hack/sync-chart-crds

manifests:  ## render manifests/base from the chart (and argocd-cm.yaml from health.lua); run after changing either
	.venv/bin/python hack/render-manifests

rootfs:  ## build the image's root filesystem from the Dockerfile without Docker (cached; needs root)
	hack/image/rootfs build

chart:  ## package the Helm chart: dist/savepoint-<version>.tgz (helm package; CRDs and dashboard synced first)
	hack/sync-chart-crds --check
	mkdir -p dist
	"$${HELM:-$$(.venv/bin/python -c 'import sys; sys.path.insert(0, "hack"); from sandboxlib import config; print(config.load().bin / "helm")')}" package charts/savepoint --destination dist

krew:  ## the kubectl plugin for krew: dist/kubectl-savepoint-v<version>.tar.gz, its sha256 and dist/savepoint.yaml
	.venv/bin/python hack/krew
