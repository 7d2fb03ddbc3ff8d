"""Mirror: a verified off-box copy of every complete checkpoint, committed last, restorable.

Modules, one job each: ``hashing`` (the one place the content hash is chosen), ``manifest`` (the copy's
manifest and commit marker: format, checks, read and write through a target), ``target`` (the storage
Protocol and ``LocalTarget``, the reference backend), ``copy`` (mirror one checkpoint: one read pass
hashing while copying, resume file by file, markers last, conflicts), ``restore`` (bring a committed
copy back verifying every hash; ``verify_copy`` checks a copy in place), ``cli`` (``mirror``,
``restore`` and ``verify`` of a copy).

A copy of ``<run>/<checkpoint>`` lives at ``<to>/<run>/<checkpoint>/`` in the checkpoint's native layout,
plus two names of ours inside it: the manifest ``.ckptwatch-mirror.json`` and the commit marker
``.ckptwatch-mirror-committed`` (and, while a copy is under way, its journal). A copy without the marker
is not a backup and is never reported as one (DESIGN.md invariant 4).
"""
