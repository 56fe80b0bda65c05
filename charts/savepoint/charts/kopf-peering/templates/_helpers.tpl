{{/* kopf-peering ships CRDs only (crds/peering.yaml): nothing to render. */}}
