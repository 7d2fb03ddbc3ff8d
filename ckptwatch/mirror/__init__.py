"""Mirror: a verified off-box copy of every complete checkpoint, committed last, restorable.

Modules, one job each:

- storage: ``target`` (the storage Protocol and ``LocalTarget``, the reference backend),
  ``fsspec_target`` (S3-compatible object storage through s3fs: multipart uploads, parts in flight two at
  a time), ``targets`` (which backend a ``to`` value names), ``wrap`` (a pass-through Target, the base
  of the three wrappers: ``cancel`` for SIGTERM, ``throttle`` for ``max_rate``, ``progress`` for byte
  counters and percent steps);
- the copy: ``hashing`` (the one place the content hash is chosen), ``manifest`` (the copy's manifest,
  commit marker and journal: format, checks, I/O through a target), ``lock`` (one writer per copy: flock
  locally, a lease object on S3), ``copy`` (mirror one checkpoint: one read pass hashing while copying,
  resume file by file, markers last, conflicts), ``pointers`` / ``pointer_record`` (run-level pointers
  recorded once the copy they name is committed);
- reading copies back: ``restore`` (a committed copy or a whole run, every hash verified; ``verify_copy``
  checks a copy in place), ``status`` (``once --json``'s mirror object, from the target's markers);
- the service: ``service`` (the sink), ``lag`` (newest complete against newest mirrored);
- ``cli``: ``mirror``, ``restore`` and ``verify`` of a copy.

A copy of a checkpoint lives at ``<to>/<run>/<checkpoint>/`` (``<run>``: the run's path below the watched
root) in the checkpoint's native layout, plus names of ours inside it: the manifest
``.ckptwatch-mirror.json``, the commit marker ``.ckptwatch-mirror-committed`` and, while a copy is under
way, its journal and lock. A copy without the marker is not a backup and is never reported as one
(DESIGN.md invariant 4).
"""
