"""The retention plan (pure): each keep rule, crashed saves, disk pressure, and each invariant of
DESIGN.md 3, pinned by a small example; then a Hypothesis property over random runs and policies.

Synthetic candidates are the right input here: ``plan_run`` and ``guards`` read nothing from disk, they
take ``Candidate`` values (what ``facts`` builds from real framework output; those tests go with
facts and delete). Paths are strings that never reach a filesystem.
"""

from __future__ import annotations

import dataclasses
import math

from hypothesis import event, given, settings
from hypothesis import strategies as st

from ckptwatch.config.retention import FreeSpace, RetentionConfig
from ckptwatch.model import Status
from ckptwatch.retention import guards
from ckptwatch.retention.guards import pin_reason, protections, violations
from ckptwatch.retention.policy import Candidate, Decision, DiskSpace, Plan, plan_run, span

T = 1_795_000_000.0  # a fixed "now" (2026-11-18): plans never read the clock
HOUR = 3600.0
DAY = 86400.0
GB = 10**9
C, INC, X, P = Status.COMPLETE, Status.INCOMPLETE, Status.CORRUPT, Status.IN_PROGRESS


def ck(step: int | None, status: Status = C, age: float = 0.0, *, size: int = GB, name: str | None = None,
       **kw: object) -> Candidate:
    """Checkpoint ``step`` whose newest file is ``age`` seconds old at T (older steps: larger age)."""
    path = f"/data/run/{name or f'checkpoint-{step}'}"
    return Candidate(path, step, status, T - age, size, **kw)  # type: ignore[arg-type]


def hourly(*steps: int, status: Status = C) -> list[Candidate]:
    """Complete checkpoints saved an hour apart, the last one an hour ago."""
    return [ck(s, status, age=(len(steps) - k) * HOUR) for k, s in enumerate(steps)]


def plan(cands: list[Candidate], now: float = T, disk: DiskSpace | None = None, **policy: object) -> Plan:
    pol = RetentionConfig(**policy)  # type: ignore[arg-type]
    out = plan_run(cands, pol, now, disk)
    assert violations(out, cands, pol) == []
    return out


def by_step(p: Plan) -> dict[int | None, Decision]:
    return {d.step: d for d in p.decisions}


def kept(p: Plan) -> list[int | None]:
    return [d.step for d in p.decisions if d.keep]


# --------------------------------------------------------------------------------------------------
# Keep rules


def test_keep_last_keeps_the_newest_n_complete_and_names_each_rank() -> None:
    p = plan(hourly(10, 20, 30, 40, 50), keep_last=3)
    assert kept(p) == [30, 40, 50]
    d = by_step(p)
    assert d[30].reasons == ("keep_last 3 of 3",) and d[40].reasons == ("keep_last 2 of 3",)
    assert d[50].reasons == ("newest complete", "keep_last 1 of 3") and d[50].protected
    assert d[10].reasons == ("no keep rule keeps it (keep_last 3)",) and not d[10].protected
    assert p.bytes_freed == 2 * GB and [x.step for x in p.deletions] == [10, 20]


def test_keep_last_counts_complete_checkpoints_only() -> None:
    """A crashed save between two complete ones does not use up a keep_last slot."""
    cands = [ck(10, age=4 * HOUR), ck(20, age=3 * HOUR), ck(30, INC, age=2 * HOUR), ck(40, age=HOUR)]
    assert kept(plan(cands, keep_last=2)) == [20, 30, 40]  # 30: kept, delete_incomplete_after is off
    assert by_step(plan(cands, keep_last=2))[30].reasons == ("crashed save: delete_incomplete_after is off",)


def test_keep_every_steps_keeps_milestones() -> None:
    p = plan(hourly(25, 50, 75, 100, 110), keep_every_steps=50)
    assert kept(p) == [50, 100, 110]
    assert by_step(p)[50].reasons == ("milestone 50",)
    assert by_step(p)[110].reasons == ("newest complete",)


def test_keep_best_by_metric_min_and_max() -> None:
    losses = {10: 0.9, 20: 0.31, 30: 0.5, 40: 0.2, 50: None, 60: 0.7}
    cands = [ck(s, age=(70 - s) * HOUR, metric=v) for s, v in losses.items()]
    p = plan(cands, keep_best=2, metric="eval_loss")
    assert kept(p) == [20, 40, 60]
    assert by_step(p)[40].reasons == ("best 1 of 2 by eval_loss (0.2)",)
    assert by_step(p)[20].reasons == ("best 2 of 2 by eval_loss (0.31)",)
    assert by_step(p)[50].reasons == ("no keep rule keeps it (keep_best 2 by eval_loss (min))",
                                      "no eval_loss value recorded")
    accuracy = plan(cands, keep_best=1, metric="eval_accuracy", mode="max")
    assert kept(accuracy) == [10, 60]
    assert by_step(accuracy)[10].reasons == ("best 1 of 1 by eval_accuracy (0.9)",)


def test_keep_best_ignores_nan_and_only_ranks_complete_checkpoints() -> None:
    cands = [ck(10, age=3 * HOUR, metric=math.nan), ck(20, X, age=2 * HOUR, metric=0.01),
             ck(30, age=HOUR, metric=0.5), ck(40, metric=0.4)]
    p = plan(cands, keep_best=1, metric="eval_loss")
    assert by_step(p)[40].reasons == ("newest complete", "best 1 of 1 by eval_loss (0.4)")
    assert not by_step(p)[10].keep and not by_step(p)[30].keep


def test_keep_best_tie_goes_to_the_newer_checkpoint() -> None:
    cands = [ck(10, age=2 * HOUR, metric=0.3), ck(20, age=HOUR, metric=0.3), ck(30, metric=0.9)]
    assert kept(plan(cands, keep_best=1, metric="eval_loss")) == [20, 30]


def test_keep_within_keeps_everything_younger() -> None:
    cands = [ck(10, age=8 * HOUR), ck(20, age=6 * HOUR + 1), ck(30, age=5 * HOUR), ck(40, age=HOUR)]
    p = plan(cands, keep_within=6 * HOUR)
    assert kept(p) == [30, 40]
    assert by_step(p)[30].reasons == ("younger than 6h",)


def test_keep_interval_keeps_the_oldest_complete_in_each_interval() -> None:
    day0 = math.floor(T / DAY) * DAY  # interval boundaries are multiples of the interval since the epoch
    cands = [Candidate(f"/r/c-{s}", s, st_, day0 + off, GB) for s, st_, off in [
        (1, INC, 1 * HOUR),   # oldest of day 0, but not complete: not the one kept
        (2, C, 2 * HOUR),   # oldest complete of day 0
        (3, C, 20 * HOUR),
        (4, C, DAY + 5 * HOUR),  # day 1
        (5, C, DAY + 9 * HOUR)]]
    p = plan(cands, now=day0 + 2 * DAY, keep_interval=DAY)
    assert kept(p) == [1, 2, 4, 5]  # 1: crashed save kept (delete_incomplete_after off); 5: newest
    assert by_step(p)[2].reasons == ("one per 1d",) and by_step(p)[4].reasons == ("one per 1d",)


def test_any_rule_keeps_and_each_rule_says_so() -> None:
    cands = [ck(100, age=10 * DAY, metric=0.1), ck(150, age=5 * DAY, metric=0.5),
             ck(200, age=HOUR, metric=0.6)]
    p = plan(cands, keep_last=1, keep_every_steps=100, keep_best=1, metric="eval_loss", keep_within=DAY)
    assert by_step(p)[100].reasons == ("milestone 100", "best 1 of 1 by eval_loss (0.1)")
    assert by_step(p)[200].reasons == ("newest complete", "keep_last 1 of 1", "milestone 200",
                                       "younger than 1d")
    assert by_step(p)[150].reasons == (
        "no keep rule keeps it (keep_last 1, keep_every_steps 100, keep_best 1 by eval_loss (min), "
        "keep_within 1d)",)


def test_no_keep_rule_keeps_complete_checkpoints() -> None:
    """A table of only delete_incomplete_after deletes crashed saves, never complete ones for age."""
    cands = [ck(10, age=30 * DAY), ck(20, INC, age=29 * DAY), ck(30, age=HOUR)]
    p = plan(cands, delete_incomplete_after=6 * HOUR)
    assert kept(p) == [10, 30] and by_step(p)[10].reasons == ("no keep rule",)
    assert by_step(p)[20].reasons == ("crashed save, older than 6h, step 30 is complete",)


def test_decisions_come_back_in_the_candidates_order() -> None:
    cands = hourly(10, 20, 30, 40)
    shuffled = [cands[2], cands[0], cands[3], cands[1]]
    p = plan(shuffled, keep_last=2)
    assert [d.path for d in p.decisions] == [c.path for c in shuffled]
    assert kept(p) == [30, 40]


# --------------------------------------------------------------------------------------------------
# Crashed saves


def test_crashed_save_is_deleted_when_old_and_a_newer_complete_exists() -> None:
    cands = [ck(40, age=8 * HOUR), ck(50, INC, age=7 * HOUR), ck(60, X, age=7 * HOUR)]
    p = plan(cands, keep_last=5, delete_incomplete_after=6 * HOUR)
    assert by_step(p)[50].reasons == ("newer than the newest complete (step 40)",) and by_step(p)[50].keep
    cands.append(ck(70, age=HOUR))
    p = plan(cands, keep_last=5, delete_incomplete_after=6 * HOUR)
    assert [d.step for d in p.deletions] == [50, 60]
    assert by_step(p)[50].reasons == ("crashed save, older than 6h, step 70 is complete",)
    assert by_step(p)[60].reasons == ("corrupt save, older than 6h, step 70 is complete",)


def test_crashed_save_is_kept_while_young_or_when_the_option_is_off() -> None:
    cands = [ck(40, INC, age=5 * HOUR), ck(50, age=HOUR)]
    young = plan(cands, keep_last=1, delete_incomplete_after=6 * HOUR)
    assert by_step(young)[40].reasons == ("crashed save, not older than delete_incomplete_after 6h",)
    off = plan(cands, keep_last=1)
    assert by_step(off)[40].keep
    assert by_step(off)[40].reasons == ("crashed save: delete_incomplete_after is off",)


def test_abandoned_temp_without_a_step_is_ordered_by_mtime() -> None:
    """A step-less temp dir older than the newest complete is a crashed save; a newer one is protected."""
    cands = [ck(None, INC, age=9 * HOUR, name="tmp-checkpoint-a"), ck(40, age=8 * HOUR),
             ck(None, INC, age=7 * HOUR, name="tmp-checkpoint-b")]
    p = plan(cands, keep_last=1, delete_incomplete_after=6 * HOUR)
    assert [d.path for d in p.deletions] == ["/data/run/tmp-checkpoint-a"]
    assert p.decisions[2].reasons == ("newer than the newest complete (step 40)",)


# --------------------------------------------------------------------------------------------------
# Disk pressure


def _pressure_run() -> list[Candidate]:
    # steps 10..80, one every hour; 50 is a milestone of keep_every_steps 50; each 1 GB
    return hourly(10, 20, 30, 40, 50, 60, 70, 80)


def test_min_free_deletes_oldest_kept_first_and_stops_when_met() -> None:
    disk = DiskSpace(total=100 * GB, free=7 * GB)  # 10% = 10 GB: 3 GB short
    p = plan(_pressure_run(), disk=disk, keep_last=6, keep_every_steps=50, min_free=FreeSpace(percent=10))
    # keep_last 6 deletes 10 and 20 (2 GB); pressure deletes one more: the oldest kept, not the milestone
    assert [d.step for d in p.deletions] == [10, 20, 30]
    assert by_step(p)[30].reasons == ("disk below min_free 10%: oldest kept first",
                                      "overrides keep_last 6 of 6")
    assert p.shortfall == 0


def test_min_free_deletes_milestones_last_and_never_a_protected_one() -> None:
    cands = _pressure_run()
    cands[1] = dataclasses.replace(cands[1], pinned="paper figure 3\nsecond line")  # step 20
    disk = DiskSpace(total=100 * GB, free=GB)
    rules = {"keep_every_steps": 50, "keep_within": 30 * DAY}  # keep_within keeps every one of them
    # deletable: 10, 30, 40, 60, 70 (oldest first), then milestone 50; 20 is pinned, 80 the newest complete
    p = plan(cands, disk=disk, **rules, min_free=FreeSpace(bytes=6 * GB))
    assert [d.step for d in p.deletions] == [10, 30, 40, 60, 70] and p.shortfall == 0
    assert by_step(p)[50].reasons == ("milestone 50", "younger than 30d")
    assert by_step(p)[20].reasons == ("pinned: paper figure 3", "younger than 30d") and by_step(p)[20].keep
    assert by_step(p)[10].reasons == ("disk below min_free 6000000000 bytes: oldest kept first",
                                      "overrides younger than 30d")
    short = plan(cands, disk=disk, **rules, min_free=FreeSpace(bytes=9 * GB))
    assert [d.step for d in short.deletions] == [10, 30, 40, 50, 60, 70]
    assert short.shortfall == 2 * GB  # deleting 20 and 80 would free it, and no invariant lets them go
    assert by_step(short)[50].reasons == ("disk below min_free 9000000000 bytes: oldest kept first",
                                          "overrides milestone 50", "overrides younger than 30d")


def test_min_free_takes_non_milestones_before_any_milestone() -> None:
    disk = DiskSpace(total=100 * GB, free=0)
    p = plan(_pressure_run(), disk=disk, keep_every_steps=50, keep_last=8, min_free=FreeSpace(bytes=6 * GB))
    # 10, 20, 30, 40, 60, 70 go before milestone 50, even though 50 is older than 60 and 70
    assert [d.step for d in p.deletions] == [10, 20, 30, 40, 60, 70]
    p = plan(_pressure_run(), disk=disk, keep_every_steps=50, keep_last=8, min_free=FreeSpace(bytes=7 * GB))
    assert [d.step for d in p.deletions] == [10, 20, 30, 40, 50, 60, 70]


def test_min_free_does_nothing_when_rules_already_free_enough_or_without_a_disk() -> None:
    disk = DiskSpace(total=100 * GB, free=5 * GB)
    p = plan(_pressure_run(), disk=disk, keep_last=2, min_free=FreeSpace(bytes=10 * GB))
    assert [d.step for d in p.deletions] == [10, 20, 30, 40, 50, 60] and p.shortfall == 0
    assert all("min_free" not in r for d in p.decisions for r in d.reasons)
    no_disk = plan(_pressure_run(), keep_last=8, min_free=FreeSpace(bytes=10**15))
    assert no_disk.deletions == () and no_disk.shortfall == 0


def test_min_free_never_deletes_crashed_saves() -> None:
    """Crashed saves are evidence: deleting them is delete_incomplete_after's call, not disk pressure's."""
    cands = [ck(10, INC, age=3 * HOUR), ck(20, age=2 * HOUR), ck(30, age=HOUR)]
    p = plan(cands, disk=DiskSpace(total=10 * GB, free=0), min_free=FreeSpace(bytes=5 * GB))
    assert [d.step for d in p.deletions] == [20] and p.shortfall == 4 * GB


# --------------------------------------------------------------------------------------------------
# Invariants (DESIGN.md 3): each one holds against a rule that would otherwise delete the checkpoint


EVERYTHING_GOES = {"keep_last": 1, "delete_incomplete_after": 0.0, "min_free": FreeSpace(bytes=10**15)}
FULL_DISK = DiskSpace(total=10**15, free=0)


def _only_kept(cands: list[Candidate], **extra: object) -> dict[int | None, Decision]:
    """Decisions under a policy that deletes everything it may: keep_last 1, crashed saves at once, and a
    disk that can never be freed enough."""
    p = plan(cands, now=T + DAY, disk=FULL_DISK, **{**EVERYTHING_GOES, **extra})
    assert p.shortfall > 0
    return {d.step: d for d in p.decisions if d.keep}


def test_invariant_newest_complete_is_never_deleted() -> None:
    d = _only_kept(hourly(10, 20, 30))
    assert list(d) == [30] and d[30].reasons[0] == "newest complete" and d[30].protected


def test_invariant_newest_complete_by_mtime_when_there_are_no_steps() -> None:
    cands = [ck(None, age=3 * HOUR, name="a"), ck(None, age=HOUR, name="b"), ck(None, age=2 * HOUR, name="c")]
    p = plan(cands, now=T + DAY, disk=FULL_DISK, **EVERYTHING_GOES)
    assert [d.path for d in p.decisions if d.keep] == ["/data/run/b"]


def test_invariant_unsettled_and_newer_than_the_newest_complete_are_kept() -> None:
    cands = [ck(10, age=3 * HOUR), ck(5, P, age=2 * DAY), ck(20, INC, age=2 * HOUR), ck(30, X, age=HOUR)]
    d = _only_kept(cands)
    assert list(d) == [10, 5, 20, 30]
    assert d[5].reasons == ("not settled (in_progress)",)  # older step, but still being written
    assert d[20].reasons == ("newer than the newest complete (step 10)",)
    assert d[30].reasons == ("newer than the newest complete (step 10)",)


def test_invariant_no_complete_checkpoint_protects_everything() -> None:
    d = _only_kept([ck(10, INC, age=DAY), ck(20, X, age=HOUR)])
    assert [x.reasons for x in d.values()] == [("no complete checkpoint in the run",)] * 2


def test_invariant_recorded_best_is_kept_while_keep_best_is_on() -> None:
    cands = [ck(10, age=3 * HOUR, best=True, metric=0.9), ck(20, age=2 * HOUR, metric=0.1),
             ck(30, metric=0.5)]
    on = _only_kept(cands, keep_best=1, metric="eval_loss")
    assert list(on) == [10, 30]  # 20 is the best by the rule, but a rule gives way to disk pressure
    assert on[10].reasons == ("the run's recorded best checkpoint",) and on[10].protected
    assert list(_only_kept(cands)) == [30]  # keep_best off: the recorded best is not protected


def test_invariant_framework_pointers_are_kept() -> None:
    cands = [ck(10, age=3 * HOUR, pointed_by=("DeepSpeed latest", "ckptwatch-latest")), ck(20, age=HOUR)]
    d = _only_kept(cands)
    assert d[10].reasons == ("named by DeepSpeed latest", "named by ckptwatch-latest")


def test_invariant_pinned_is_kept_and_the_pin_text_is_the_reason() -> None:
    cands = [ck(10, age=3 * HOUR, pinned="release candidate\n"), ck(20, age=2 * HOUR, pinned=""),
             ck(30, age=HOUR)]
    d = _only_kept(cands)
    assert d[10].reasons == ("pinned: release candidate",)
    assert d[20].reasons == ("pinned (empty .ckptwatch-keep)",)


def test_pin_text_is_shown_printable_and_short() -> None:
    """Anyone who can write in the root writes the pin: no terminal escapes, no page-long reasons."""
    assert pin_reason("\x1b[31mred\x1b[0m") == "pinned: ?[31mred?[0m"
    assert pin_reason("\n\n  second  \nthird") == "pinned: second"
    assert pin_reason("x" * 500) == "pinned: " + "x" * 77 + "..."


def test_invariant_symlinked_or_outside_the_root_is_kept() -> None:
    d = _only_kept([ck(10, age=3 * HOUR, unsafe_path=True), ck(20, age=HOUR)])
    assert d[10].reasons == ("reached through a symlink or outside the watched root",)


def test_invariant_unmirrored_is_kept_once_a_mirror_is_configured() -> None:
    cands = [ck(10, age=4 * HOUR, mirrored=False), ck(20, age=3 * HOUR, mirrored=True),
             ck(30, age=2 * HOUR, mirrored=None), ck(40, age=HOUR, mirrored=True)]
    d = _only_kept(cands)
    assert list(d) == [10, 40] and d[10].reasons == ("not yet mirrored and verified",)


def test_invariant_the_checkpoint_a_resume_uses_is_kept() -> None:
    """The newest complete one has a blocking hazard (stub weights): latest names step 20, keep it too."""
    cands = [ck(10, age=3 * HOUR), ck(20, age=2 * HOUR), ck(30, age=HOUR, blocks_resume=True)]
    d = _only_kept(cands)
    assert list(d) == [20, 30]
    assert d[20].reasons == ("newest resumable (the newer complete ones have blocking hazards)",)


def test_violations_catches_a_plan_that_deletes_what_it_must_not() -> None:
    """The checker can fail: a hand-made plan deleting the newest complete, and a vanished path."""
    cands = hourly(10, 20)
    pol = RetentionConfig(keep_last=1)
    bad = Plan((Decision(cands[0].path, 10, False, ("x",), GB),
                Decision(cands[1].path, 20, False, ("x",), GB),
                Decision("/data/run/gone", None, False, ("x",), GB)))
    found = violations(bad, cands, pol)
    assert found == [f"{cands[1].path}: planned for deletion but protected: newest complete",
                     "/data/run/gone: planned for deletion but not among the run's checkpoints "
                     "(vanished or never seen); plan again from a fresh listing"]
    # delete's last check: a fresh listing shows a newer complete checkpoint; the old plan is still safe
    assert violations(plan_run(cands, pol, T), [*cands, ck(30, age=0.0)], pol) == []


def test_span_names_the_largest_whole_unit() -> None:
    assert [span(s) for s in (6 * HOUR, DAY, 90 * 60, 45, 1.5, 36 * HOUR)] == ["6h", "1d", "90m", "45s",
                                                                                "1.5s", "36h"]


# --------------------------------------------------------------------------------------------------
# Property: random runs, random policies, random disks


POINTERS = ("DeepSpeed latest", "ckptwatch-latest", "last.ckpt")


@st.composite
def runs(draw: st.DrawFn) -> list[Candidate]:
    """Up to 14 checkpoints; protections are drawn rarely enough that rules and pressure have work."""
    n = draw(st.integers(0, 14))
    rarely = st.integers(0, 7).map(lambda k: k == 0)
    out = []
    for k in range(n):
        out.append(Candidate(
            path=f"/data/run/c{k}",
            step=draw(st.none() | st.integers(0, 40).map(lambda s: s * 5)),  # gaps, duplicates, None
            status=draw(st.sampled_from([C, C, C, C, INC, X, P])),
            mtime=T - draw(st.integers(0, 96)) * 30 * 60,  # half-hour grid: equal mtimes happen
            bytes=draw(st.integers(0, 5)) * GB,
            metric=draw(st.none() | st.sampled_from([0.1, 0.2, 0.5, 0.5, math.nan, math.inf])),
            pinned=draw(st.sampled_from(["", "keep me", "\x1b]0;x\x07"])) if draw(rarely) else None,
            pointed_by=tuple(draw(st.lists(st.sampled_from(POINTERS), max_size=2, unique=True)))
            if draw(rarely) else (),
            best=draw(rarely),
            unsafe_path=draw(rarely),
            mirrored=draw(st.sampled_from([None, None, True, True, True, True, True, False])),
            blocks_resume=draw(rarely)))
    return out


def _maybe(values: st.SearchStrategy) -> st.SearchStrategy:
    return st.none() | values


def _mostly(values: st.SearchStrategy) -> st.SearchStrategy:
    """None one time in five (``st.none() | x`` draws None about half the time)."""
    return st.tuples(st.integers(0, 4), values).map(lambda t: t[1] if t[0] else None)


policies = st.builds(
    RetentionConfig,
    keep_last=_maybe(st.integers(1, 4)),
    keep_every_steps=_maybe(st.sampled_from([5, 10, 25])),
    keep_best=_maybe(st.integers(1, 3)),
    metric=st.just("eval_loss"),
    mode=st.sampled_from(["min", "max"]),
    keep_within=_maybe(st.sampled_from([HOUR, 6 * HOUR, DAY])),
    keep_interval=_maybe(st.sampled_from([HOUR, 6 * HOUR, DAY])),
    delete_incomplete_after=_maybe(st.sampled_from([0.0, HOUR, 6 * HOUR])),
    # mostly set: every example also plans without min_free (the rules alone), and checks that plan too
    min_free=_mostly(st.builds(FreeSpace, bytes=st.integers(0, 30).map(lambda g: g * GB))
                     | st.builds(FreeSpace, percent=st.sampled_from([5.0, 10.0, 50.0]))),
)
disks = _mostly(st.builds(DiskSpace, total=st.just(40 * GB), free=st.integers(0, 16).map(lambda g: g * GB)))


def _pressure_order(c: Candidate, policy: RetentionConfig) -> tuple[bool, tuple]:
    every = policy.keep_every_steps
    milestone = every is not None and c.step is not None and c.step % every == 0
    return (milestone, guards.recency(c))


def _check(cands: list[Candidate], policy: RetentionConfig, now: float, disk: DiskSpace | None) -> Plan:
    """Every property a plan must have; returns the plan."""
    p = plan_run(cands, policy, now, disk)

    # the invariants, the plan's shape, and every decision explained
    assert violations(p, cands, policy) == []
    assert [d.path for d in p.decisions] == [c.path for c in cands]
    assert all(d.reasons for d in p.decisions)
    for d, c, g in zip(p.decisions, cands, protections(cands, policy), strict=True):
        assert d.protected == bool(g) and d.reasons[:len(g)] == g and (d.keep or not g)
        assert (d.step, d.bytes) == (c.step, c.bytes)
        if not d.keep and c.status is not Status.COMPLETE:
            after = policy.delete_incomplete_after
            assert after is not None and now - c.mtime > after
        if not d.keep and c.status is Status.COMPLETE and not policy.keep_rules:
            assert d.reasons[0].startswith("disk below min_free")  # no keep rule: only pressure deletes

    # min_free only adds deletions to what the rules delete, and no more than it needs
    rules_only = dataclasses.replace(policy, min_free=None)
    base = plan_run(cands, rules_only, now, disk)
    assert base.shortfall == 0 and violations(base, cands, rules_only) == []
    pressure = [i for i, (a, b) in enumerate(zip(base.decisions, p.decisions, strict=True)) if a != b]
    assert all(base.decisions[i].keep and not p.decisions[i].keep
               and p.decisions[i].reasons[0].startswith("disk below min_free") for i in pressure)
    if policy.min_free is None or disk is None:
        assert pressure == [] and p.shortfall == 0
        return p
    required = policy.min_free.required(disk.total)
    after = disk.free + p.bytes_freed
    assert p.shortfall == max(0, required - after)
    if disk.free + base.bytes_freed >= required:
        assert pressure == []
    event(f"pressure deletions: {min(len(pressure), 3)}; shortfall: {bool(p.shortfall)}")
    if pressure:
        # minimal: without its largest pressure deletion the plan would fall short
        assert after - max(cands[i].bytes for i in pressure) < required
        # and it took them in the documented order: a prefix of oldest-first, milestones-last
        eligible = sorted((i for i, d in enumerate(base.decisions)
                           if d.keep and not d.protected and cands[i].status is Status.COMPLETE),
                          key=lambda i: _pressure_order(cands[i], policy))
        assert eligible[:len(pressure)] == sorted(pressure, key=lambda i: _pressure_order(cands[i], policy))
    if p.shortfall:
        # short of the target only when every complete checkpoint no invariant protects is already gone
        assert all(not d.keep for d, c in zip(p.decisions, cands, strict=True)
                   if c.status is Status.COMPLETE and not d.protected)
    return p


@settings(max_examples=400, deadline=None)
@given(cands=runs(), policy=policies, disk=disks, later=st.integers(0, 48))
def test_no_plan_ever_breaks_an_invariant(cands: list[Candidate], policy: RetentionConfig,
                                          disk: DiskSpace | None, later: int) -> None:
    """Random runs, policies (min_free usually set) and disks (usually known): see ``_check``."""
    _check(cands, policy, T + later * HOUR, disk)


@settings(max_examples=300, deadline=None)
@given(cands=runs(), policy=policies, later=st.integers(0, 48), free=st.integers(0, 8),
       data=st.data())
def test_disk_pressure_deletes_what_it_must_and_no_more(cands: list[Candidate], policy: RetentionConfig,
                                                        later: int, free: int, data: st.DataObject) -> None:
    """The same properties with a target that the rules alone miss: min_free set between "the rules
    free enough" and "more than the whole run could free", so pressure always has work."""
    now = T + later * HOUR
    base = plan_run(cands, dataclasses.replace(policy, min_free=None), now, None)
    have = free * GB + base.bytes_freed
    extra = data.draw(st.integers(1, sum(c.bytes for c in cands) // GB + 2), label="GB missing") * GB
    p = _check(cands, dataclasses.replace(policy, min_free=FreeSpace(bytes=have + extra)), now,
               DiskSpace(total=10**15, free=free * GB))
    assert p.shortfall > 0 or p.bytes_freed > base.bytes_freed
