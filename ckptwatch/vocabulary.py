"""The stable vocabulary of problem and hazard kinds: severity and what to do.

This table is part of the ``--json`` contract (README "Problem and hazard kinds"): add kinds, never
rename them. Messages built by validators say *what* is wrong and *where*; the advice here says *what to
do*, so every message read at 3 a.m. ends with an action.

The findings themselves (``model.Problem``, ``model.Hazard``) are plain data: what a kind means for a
verdict (``severity_of``, ``status_from``, ``file_ok``) and what its message says in full
(``full_message``) are looked up here, so the model imports nothing of ours.
"""

from __future__ import annotations

from ckptwatch.model import FileCheck, Hazard, Problem, Record, Severity, Status, set_field


class Kind(Record):
    __slots__ = ("name", "severity", "meaning", "advice", "blocks_resume")
    name: str
    severity: Severity
    meaning: str
    advice: str
    # Hazards only: the trainer would load the wrong weights from this checkpoint, so `latest`, the
    # resume pointer and the alerts' "resume from" line skip it (``resume.resume_choice``).
    blocks_resume: bool

    def __init__(self, name: str, severity: Severity, meaning: str, advice: str,
                 blocks_resume: bool = False) -> None:
        set_field(self, "name", name)
        set_field(self, "severity", severity)
        set_field(self, "meaning", meaning)
        set_field(self, "advice", advice)
        set_field(self, "blocks_resume", blocks_resume)


_NOT_THIS = "Do not resume from this checkpoint; `ckptwatch latest RUN_DIR` names the newest complete one"

PROBLEM_KINDS: dict[str, Kind] = {
    k.name: k
    for k in [
        # --- corruption: bytes on disk are wrong ---
        Kind("empty_file", Severity.CORRUPT, "a file that must hold data is 0 bytes", _NOT_THIS),
        Kind("truncated", Severity.CORRUPT, "a file is shorter than its own header says", _NOT_THIS),
        Kind("trailing_data", Severity.CORRUPT, "a file is longer than its own header says", _NOT_THIS),
        Kind("bad_header", Severity.CORRUPT, "a file's header is malformed (garbage length, wrong magic)",
             _NOT_THIS),
        Kind("bad_json", Severity.CORRUPT, "a JSON file does not parse or lacks required fields", _NOT_THIS),
        Kind("bad_zip", Severity.CORRUPT, "a torch.save zip has no valid central directory or records",
             _NOT_THIS),
        Kind("bad_pickle", Severity.CORRUPT, "a pickle stream is malformed or exceeds the safety caps",
             _NOT_THIS),
        Kind("unsafe_pickle", Severity.CORRUPT,
             "a pickle names a global that runs code when the file is loaded (builtins.exec, os.system, "
             "subprocess, importlib, ...; docs/unsafe-pickles.md has the list). Severity corrupt: no trainer "
             "saves such a pickle, so the file was tampered with or is not what the trainer wrote, and a "
             "resume that loads it (torch.load with weights_only=False, pickle.load) runs the payload",
             "Do not load this file or resume from this checkpoint. Inspect it without loading it "
             "(python -m pickletools FILE) and restore the checkpoint from a copy you trust"),
        Kind("bad_protobuf", Severity.CORRUPT, "a MindSpore protobuf checkpoint does not parse", _NOT_THIS),
        Kind("size_mismatch", Severity.CORRUPT,
             "a tensor or storage has fewer bytes than its dtype x shape needs", _NOT_THIS),
        Kind("missing_record", Severity.CORRUPT, "a storage the pickle references is absent from the zip",
             _NOT_THIS),
        Kind("missing_tensor", Severity.CORRUPT, "an index lists a tensor its shard does not hold",
             _NOT_THIS),
        Kind("crc_mismatch", Severity.CORRUPT,
             "a checksum stored in the file does not match its bytes (--deep)", _NOT_THIS),
        Kind("hash_mismatch", Severity.CORRUPT,
             "a file's SHA-256 differs from its integrity manifest (--deep)", _NOT_THIS),
        Kind("step_mismatch", Severity.CORRUPT,
             "metadata inside the checkpoint names another step than its name",
             "Check which step this directory really holds before resuming from it"),
        Kind("zero_filled", Severity.WARNING,
             "the tail of a file is a sparse hole: either a writer that preallocated the file died "
             "(safetensors 0.8.0-rc builds), or a sparse copy (cp --sparse, rsync -S) of a legitimately "
             "all-zero tail",
             "If this file was not copied sparsely, re-save it: the tail was never written. Verify with a "
             "load test before resuming"),
        Kind("nan_inf", Severity.WARNING, "a tensor holds NaN or Inf values (--deep --scan-values)",
             "The run may have diverged before this save; compare with an earlier checkpoint"),
        Kind("all_zero_tensor", Severity.WARNING, "a weight tensor is all zeros (--deep --scan-values)",
             "Check that the model was really trained before this save"),
        Kind("read_error", Severity.CORRUPT, "the disk returned an I/O error while reading",
             "Check the disk (dmesg, SMART) and restore this checkpoint from a backup"),
        # --- incompleteness: something that must be there is not ---
        Kind("missing_file", Severity.INCOMPLETE,
             "a file every complete checkpoint of this layout has is absent", _NOT_THIS),
        Kind("missing_rank", Severity.INCOMPLETE, "a rank's files are absent", _NOT_THIS),
        Kind("missing_shard", Severity.INCOMPLETE, "a shard named by an index or metadata file is absent",
             _NOT_THIS),
        Kind("no_commit_marker", Severity.INCOMPLETE,
             "the file the framework writes last (its commit marker) is absent", _NOT_THIS),
        Kind("stale_commit_marker", Severity.INCOMPLETE,
             "the commit marker is older than files it covers: a newer save overwrote them and did not "
             "finish", _NOT_THIS),
        Kind("abandoned_temp", Severity.INCOMPLETE,
             "a temp/staging file or marker older than stale_after: a save was killed half-way", _NOT_THIS),
        Kind("unreadable", Severity.INCOMPLETE,
             "a file cannot be read by ckptwatch (permissions); this is not corruption",
             "Give the ckptwatch user read access (group or ACL) so it can verify this checkpoint"),
        Kind("exceeds_limits", Severity.INCOMPLETE,
             "reading a file would take more time or memory than one file may cost "
             "(service.max_seconds_per_file, max_memory_per_file); it is not verified, and not resumable",
             "Inspect the file: a real checkpoint file needs milliseconds and a few MB, so this one is "
             "probably corrupt or hostile; if it is genuine (an unusually large header or central "
             "directory), raise max_seconds_per_file or max_memory_per_file in [service] and run again"),
        Kind("no_weights", Severity.INCOMPLETE, "a checkpoint holds no model weights in any known form",
             _NOT_THIS),
        Kind("unsafe_path", Severity.INCOMPLETE,
             "metadata names a file outside the checkpoint (absolute path or ..), or a symlink in a "
             "checkpoint leads outside the watched root; it is not read",
             "Replace the link with the real file (or watch the directory it points into); do not resume "
             "from this checkpoint until it is judged"),
        Kind("not_regular_file", Severity.INCOMPLETE,
             "a FIFO, directory, device, socket or symlink loop is where a checkpoint file belongs; it is "
             "never read",
             "Remove it and re-save the checkpoint (or restore the real file); do not resume from this "
             "checkpoint"),
        Kind("check_failed", Severity.INCOMPLETE,
             "ckptwatch itself failed while checking this checkpoint or run (a bug); the others were judged",
             "Report it with the message (rerun `ckptwatch once` with CKPTWATCH_DEBUG=1 for the traceback); "
             "do not resume from this checkpoint until it is judged"),
        # --- transient: being written or deleted; judged again once settled ---
        Kind("in_progress", Severity.TRANSIENT,
             "files were modified within settle_seconds, or a temp/staging marker is present",
             "Nothing to do yet; ckptwatch judges it once writes settle"),
        Kind("deleted", Severity.TRANSIENT, "a file or directory vanished during the scan (rotation?)",
             "Nothing to do if the trainer rotates checkpoints; it is re-checked on the next scan"),
        # --- warnings: reported, do not change the verdict ---
        Kind("unreferenced_file", Severity.WARNING,
             "a data file no metadata refers to (stale or empty bucket)",
             "Usually harmless; if it is a leftover of an older, larger save, remove it by hand"),
        Kind("size_total_mismatch", Severity.WARNING, "an index's total_size differs from the shards' data",
             "Usually harmless (shared storages); re-save if loading fails"),
        Kind("needs_weights_only_false", Severity.WARNING,
             "a pickle names globals outside what torch.load(weights_only=True) accepts (e.g. "
             "transformers.TrainingArguments): loading it needs weights_only=False, which trusts the file. "
             "Advisory: normal for training_args.bin and RNG state",
             "Load such files only from a source you trust, or allow-list the named globals with "
             "torch.serialization.add_safe_globals"),
        Kind("symlink_outside_root", Severity.WARNING,
             "a symlink points outside the watched root; not followed",
             "Point the watch at the real location, or keep checkpoints inside the root"),
        Kind("symlink_loop", Severity.WARNING, "a symlink loop; not followed", "Remove or fix the link"),
        Kind("dangling_symlink", Severity.INCOMPLETE, "a symlink whose target does not exist", _NOT_THIS),
        Kind("too_deep", Severity.WARNING,
             "directories nested deeper than any checkpoint format uses (or a path longer than the system "
             "allows); what lies below was not examined",
             "Usually harmless; remove the nested directories if they do not belong to the checkpoint"),
        Kind("bad_name", Severity.WARNING, "a file or directory name is not valid UTF-8",
             "Rename it; some tools cannot open it"),
        Kind("unknown_world_size", Severity.WARNING,
             "the number of ranks could not be inferred; rank completeness was not checked",
             "Set expected_ranks for this watch (or --expected-ranks)"),
        Kind("pointer_unreadable", Severity.WARNING, "a framework `latest` pointer file does not parse",
             "Fix or rewrite the pointer before resuming"),
    ]
}

HAZARD_KINDS: dict[str, Kind] = {
    k.name: k
    for k in [
        Kind("stub_weights_shadow_adapter", Severity.WARNING,
             "a full-weights file beside a PEFT adapter: the Trainer loads it first (non-strict) and never "
             "loads the adapter (transformers#24551)",
             "Move the full-weights file out of the checkpoint before resuming, or resume the adapter "
             "explicitly", blocks_resume=True),
        Kind("empty_adapter", Severity.WARNING,
             "an adapter weights file of about 1 KB or less holds no LoRA weights",
             "Check the PEFT save; resuming from it trains a fresh adapter", blocks_resume=True),
        Kind("adapter_config_drift", Severity.WARNING,
             "r, lora_alpha or target_modules (or use_rslora, use_dora, modules_to_save, rank_pattern, "
             "alpha_pattern) changed between consecutive checkpoints of one run: the adapter was re-created "
             "with other settings when the run resumed",
             "Resume with the adapter_config.json the run was trained with (build the adapter from the "
             "checkpoint's adapter_config.json, not from the script's settings)"),
        Kind("adapter_unchanged", Severity.WARNING,
             "adapter weights are byte-identical to the previous checkpoint's: the adapter is not training",
             "Check that the adapter parameters are trainable and reach the optimizer"),
        Kind("adapter_b_zero", Severity.WARNING,
             "every LoRA B matrix is zero past step 0: the adapter was never trained or was re-initialised",
             "Check the resume path: a fresh add_adapter() before loading discards the trained weights",
             blocks_resume=True),
        Kind("latest_points_to_incomplete", Severity.WARNING,
             "the framework's latest pointer names a checkpoint that is not complete",
             "Resume from the checkpoint ckptwatch names instead (pass it explicitly to the trainer)"),
        Kind("latest_points_to_missing", Severity.WARNING,
             "the framework's latest pointer names a checkpoint that does not exist",
             "Resume from the checkpoint ckptwatch names instead (pass it explicitly to the trainer)"),
        Kind("newest_not_resumable", Severity.WARNING,
             "the newest checkpoint is not complete; a trainer that picks the highest step will fail or load "
             "garbage",
             "Resume from the checkpoint ckptwatch names instead (pass it explicitly to the trainer)"),
    ]
}


def markdown_table() -> str:
    """The README's table of kinds (a test keeps the README equal to this)."""
    rows = ["| problem kind | severity | meaning | what to do |", "|---|---|---|---|"]
    rows += [f"| `{k.name}` | {k.severity.value} | {k.meaning} | {k.advice} |"
             for k in PROBLEM_KINDS.values()]
    rows += ["", "| hazard kind | blocks `latest` | meaning | what to do |", "|---|---|---|---|"]
    rows += [f"| `{k.name}` | {'yes' if k.blocks_resume else 'no'} | {k.meaning} | {k.advice} |"
             for k in HAZARD_KINDS.values()]
    return "\n".join(rows)


def severity_of(kind: str) -> Severity:
    """The severity of a problem kind; a kind the table does not know counts as corruption."""
    k = PROBLEM_KINDS.get(kind)
    return k.severity if k else Severity.CORRUPT


def blocks_resume(kind: str) -> bool:
    """Does a hazard of this kind make its checkpoint unfit to resume from (see ``Kind.blocks_resume``)?"""
    k = HAZARD_KINDS.get(kind)
    return k.blocks_resume if k else False


def advice_for(kind: str) -> str:
    """What to do about a problem or hazard kind ("" for a kind the table does not know)."""
    k = PROBLEM_KINDS.get(kind) or HAZARD_KINDS.get(kind)
    return k.advice if k else ""


def full_message(finding: Problem | Hazard) -> str:
    """The finding's message followed by its kind's advice: what is wrong, where, and what to do."""
    advice = advice_for(finding.kind)
    return f"{finding.message}. {advice}" if advice else finding.message


def file_ok(check: FileCheck) -> bool:
    """True when a reader found nothing worse than warnings, so later checks may trust its facts."""
    return not any(severity_of(p.kind) in (Severity.CORRUPT, Severity.INCOMPLETE, Severity.TRANSIENT)
                   for p in check.problems)


def status_from(problems: tuple[Problem, ...] | list[Problem]) -> Status:
    """The verdict a set of problems implies: transient beats corrupt beats incomplete beats complete.

    Why transient wins: a file still being written looks truncated; judging it corrupt would alert on
    every healthy save (DESIGN.md invariant 2).
    """
    severities = {severity_of(p.kind) for p in problems}
    if Severity.TRANSIENT in severities:
        return Status.IN_PROGRESS
    if Severity.CORRUPT in severities:
        return Status.CORRUPT
    if Severity.INCOMPLETE in severities:
        return Status.INCOMPLETE
    return Status.COMPLETE
