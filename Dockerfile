# The Savepoint image: the operator (`savepoint-operator`) and the data mover
# (`python -m savepoint.mover`, also `savepoint-mover`) in one image.
#
#   docker build -t ghcr.io/savepoint-dev/savepoint:0.1.0 .
#
# Every install step is hack/image/install.sh, which tests/sandbox/test_image.py
# also runs in a debootstrapped bookworm root filesystem (no container engine
# runs on the development machines). Pin the base by digest when releasing:
#   docker build --build-arg BASE_IMAGE=debian:bookworm-slim@sha256:... .
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="savepoint" \
      org.opencontainers.image.description="Savepoint operator and mover: revert-to-snapshot, share backup/restore and RBD image snapshots for Ceph RBD and NFS" \
      org.opencontainers.image.source="https://github.com/savepoint-dev/savepoint" \
      org.opencontainers.image.licenses="Apache-2.0"

SHELL ["/bin/sh", "-eu", "-c"]

# Debian packages (python3-rbd, python3-rados, ceph-common, rsync, acl, attr)
# and the non-root user 65532; apt lists are removed in the same layer.
COPY hack/image/install.sh /usr/local/lib/savepoint/install.sh
RUN /usr/local/lib/savepoint/install.sh system

# The operator, into /opt/savepoint/venv (made with --system-site-packages so
# Debian's rbd and rados modules import). Only what the package needs is copied.
COPY pyproject.toml /usr/local/src/savepoint/pyproject.toml
COPY operator /usr/local/src/savepoint/operator
RUN /usr/local/lib/savepoint/install.sh app /usr/local/src/savepoint \
 && /usr/local/lib/savepoint/install.sh verify

ENV PATH=/opt/savepoint/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Numeric, so Kubernetes' runAsNonRoot can check it. Mover Jobs run as this
# user too unless their securityContext says otherwise.
USER 65532:65532
WORKDIR /tmp

# The operator by default; mover Jobs set `command: [python, -m, savepoint.mover]`.
ENTRYPOINT ["savepoint-operator"]
