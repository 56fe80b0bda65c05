"""Every condition and Event reason Savepoint uses, in one place.

Reasons are an API: users alert on them and the troubleshooting guide is
ordered by them, so they are CamelCase constants, never ad-hoc strings. Each
says whether the operator *waits* (``Pending``, retried with backoff until
``spec.deadlineSeconds``), *fails* at once (the seeds' 400/404/409/413) or,
when deleting, keeps retrying in ``ErrorDeleting``; and each carries the
one-line explanation rendered into ``docs/api.md``.
"""

from __future__ import annotations

from enum import StrEnum


class Handling(StrEnum):
    """What a resource does when it meets a reason."""

    PROGRESS = "Progress"  # normal life cycle
    WAIT = "Wait"  # the situation can change: Pending, retry until the deadline
    FAIL = "Fail"  # the situation cannot change: Failed at once
    RETRY_DELETE = "RetryDelete"  # deleting the data failed: ErrorDeleting, retried, the object stays


class Reason(StrEnum):
    """A condition/Event reason with its handling and explanation."""

    handling: Handling
    description: str

    def __new__(cls, value: str, handling: Handling, description: str) -> Reason:
        member = str.__new__(cls, value)
        member._value_ = value
        member.handling = handling
        member.description = description
        return member

    # life cycle
    PENDING = "Pending", Handling.PROGRESS, "Accepted; the operator has not started working on it yet."
    IN_PROGRESS = "InProgress", Handling.PROGRESS, "The action is running."
    SUCCEEDED = "Succeeded", Handling.PROGRESS, "The action finished successfully."
    AVAILABLE = "Available", Handling.PROGRESS, "The backup or image exists and can be used."
    DELETING = "Deleting", Handling.PROGRESS, "Removing the data this resource owns before the object goes."
    RETAINED = "Retained", Handling.PROGRESS, "Deleted with deletionPolicy Retain: the data was kept."
    ADOPTED = "Adopted", Handling.PROGRESS, "Picked up again after an operator restart; temporary objects resumed or cleaned up."
    FALLBACK_TO_COPY = "FallbackToCopy", Handling.PROGRESS, "The clone path failed; copying the data instead (the message says why)."
    ABORTING = "Aborting", Handling.PROGRESS, "A step failed after the action took its lock (or it was deleted midway): the steps done so far are being undone; a restart finishes the undo."
    INTERNAL_ERROR = "InternalError", Handling.WAIT, "An unexpected error (the message has it); retried with backoff, and undone once the deadline passes."
    FULL_READ = "FullRead", Handling.PROGRESS, "No usable base for an incremental backup; reading everything (the message says why)."

    # waiting: can change by itself or by a user's action
    VOLUME_BUSY = "VolumeBusy", Handling.WAIT, "Another Savepoint action holds the volume's lock; this one waits for it."
    VOLUME_IN_USE = "VolumeInUse", Handling.WAIT, "A pod mounts the volume, it is attached, or it has RBD watchers; stop the workload or use force where allowed."
    PVC_NOT_BOUND = "PvcNotBound", Handling.WAIT, "The PersistentVolumeClaim is not bound to a volume yet."
    SNAPSHOT_NOT_READY = "SnapshotNotReady", Handling.WAIT, "The VolumeSnapshot is not readyToUse yet."
    BACKUP_NOT_AVAILABLE = "BackupNotAvailable", Handling.WAIT, "The ShareBackup is not Available yet (still being created, or busy)."
    MOVER_LIMIT = "MoverLimit", Handling.WAIT, "The operator's concurrency limit for mover Jobs is reached; waiting for a free slot."

    # failing: the request cannot succeed as written
    INVALID_SPEC = "InvalidSpec", Handling.FAIL, "The spec breaks a rule the API server could not check; the message names it."
    PVC_NOT_FOUND = "PvcNotFound", Handling.FAIL, "The PersistentVolumeClaim does not exist in this namespace."
    UNSUPPORTED_VOLUME = "UnsupportedVolume", Handling.FAIL, "The claim's PersistentVolume is not Ceph RBD, CephFS or NFS, or not of the kind this action needs."
    REFERENCE_NOT_ALLOWED = "ReferenceNotAllowed", Handling.FAIL, "Raw rbd/nfs references are not allowed in this namespace (operator setting)."
    VOLUME_IN_ERROR_STATE = "VolumeInErrorState", Handling.WAIT, "The volume carries a savepoint.dev/state error annotation from an earlier failure; reset it first."
    SNAPSHOT_NOT_FOUND = "SnapshotNotFound", Handling.FAIL, "The snapshot does not exist."
    SNAPSHOT_NOT_OF_VOLUME = "SnapshotNotOfVolume", Handling.FAIL, "The snapshot was not taken of this volume."
    SNAPSHOT_NOT_LATEST = "SnapshotNotLatest", Handling.FAIL, "Only the volume's most recent snapshot can be reverted to; the message names the newer one."
    SIZE_MISMATCH = "SizeMismatch", Handling.FAIL, "Source and target sizes differ (e.g. the volume was extended after the snapshot or backup)."
    TARGET_TOO_SMALL = "TargetTooSmall", Handling.FAIL, "The restore target is smaller than the backed-up volume or share."
    QUOTA_EXCEEDED = "QuotaExceeded", Handling.FAIL, "The namespace's backup count or backup gigabytes quota would be exceeded; the message gives usage and limit."
    BACKUP_NOT_FOUND = "BackupNotFound", Handling.FAIL, "The ShareBackup does not exist in this namespace."
    BACKUP_DATA_MISSING = "BackupDataMissing", Handling.FAIL, "The backup's data is missing or incomplete in the repository."
    VERIFICATION_FAILED = "VerificationFailed", Handling.FAIL, "Checksums did not match; the message names the files or chunks."
    PERMISSION_DENIED = "PermissionDenied", Handling.FAIL, "Ceph refused the operation (e.g. the user's caps do not allow writing the pool)."
    CLONE_FAILED = "CloneFailed", Handling.FAIL, "Snapshot, clone or flatten failed and method Clone does not fall back to a copy."
    IMAGE_HAS_CLONES = "ImageHasClones", Handling.RETRY_DELETE, "The image cannot be deleted while clones depend on its snapshot."
    MOVER_FAILED = "MoverFailed", Handling.FAIL, "The mover Job failed; the message has its termination message."
    CEPH_CLUSTER_UNKNOWN = "CephClusterUnknown", Handling.FAIL, "The volume's Ceph clusterID is not in ceph-csi's config.json that the operator reads."
    CEPH_CREDENTIALS_MISSING = "CephCredentialsMissing", Handling.FAIL, "The ceph-csi Secret the operator reads lacks userID/userKey."
    CEPH_ERROR = "CephError", Handling.FAIL, "An unexpected error from Ceph; the message has it."
    ABORTED = "Aborted", Handling.FAIL, "Deleted before it finished: what it had done was undone (the message says what)."
    DEADLINE_EXCEEDED = "DeadlineExceeded", Handling.FAIL, "spec.deadlineSeconds passed while waiting or working."
    DELETION_FAILED = "DeletionFailed", Handling.RETRY_DELETE, "Removing the data failed; the message says why."
    DESTINATION_EXISTS = "DestinationExists", Handling.FAIL, "The named destination image exists already and was not made by this action; it is left alone."
    MOVER_NOT_OURS = "MoverNotOurs", Handling.FAIL, "A Job of the mover's name exists but was not made for this action; it is left alone."
    MOVER_POD_REFUSED = "MoverPodRefused", Handling.WAIT, "The mover's pod is refused by admission (e.g. Pod Security of the operator's namespace); the step fails after mover.startTimeout."
    MOVER_UNSCHEDULABLE = "MoverUnschedulable", Handling.WAIT, "No node can run the mover's pod (the scheduler's message says why); the step fails after mover.startTimeout."
    MOVER_IMAGE_PULL_FAILED = "MoverImagePullFailed", Handling.WAIT, "The mover image cannot be pulled; the step fails after mover.startTimeout."
    MOVER_QUOTA_EXCEEDED = "MoverQuotaExceeded", Handling.WAIT, "A ResourceQuota of the operator's namespace refuses the mover's pod (e.g. it requires requests); the step fails after mover.startTimeout."

    # failing: what a backup repository holds is not what Savepoint wrote, or not the asker's (trust model)
    BAD_BACKUP_MANIFEST = "BadBackupManifest", Handling.FAIL, "A backup.json, chunk map or other file read from the repository is malformed or out of bounds; the message names the file and field. Nothing was written."
    BACKUP_OWNER_MISMATCH = "BackupOwnerMismatch", Handling.FAIL, "The repository directory is unmarked or belongs to another object (the message says whose); Savepoint never deletes or overwrites it."
    BAD_BACKUP_PATH = "BadBackupPath", Handling.FAIL, "The backup's repository path is not NAMESPACE/SOURCE-UID/NAME of this namespace and object, or goes through a symlink."
    UNSUPPORTED_IMAGE_FEATURES = "UnsupportedImageFeatures", Handling.FAIL, "The RBD image lacks a feature the action needs (exclusive-lock, which Savepoint holds while it writes); the message says how to enable it."

    # SavepointSchedule (a controller: these are the reasons of its Ready and LastRunFailed conditions)
    SCHEDULED = "Scheduled", Handling.PROGRESS, "The schedule is active; the message says when it runs next."
    SUSPENDED = "Suspended", Handling.PROGRESS, "spec.suspend is true: no new runs (retention still prunes)."
    PREVIOUS_RUN_ACTIVE = "PreviousRunActive", Handling.WAIT, "concurrencyPolicy Forbid: a slot waits while the previous run's child still runs."
    MISSED_RUNS = "MissedRuns", Handling.PROGRESS, "Slots were skipped (operator down, a run outlasting its period, startingDeadlineSeconds); the newest one ran once."
    RUN_SUCCEEDED = "RunSucceeded", Handling.PROGRESS, "The latest run's child succeeded."
    CHILD_NAME_TAKEN = "ChildNameTaken", Handling.FAIL, "An object of the run's child name exists that the schedule did not make; it is left alone and the run fails."
    CHILD_DELETED = "ChildDeleted", Handling.FAIL, "The run's child was deleted before it finished."
    CHILD_FAILED = "ChildFailed", Handling.FAIL, "The run's child failed (its own reason is in the LastRunFailed message when it gave one)."
