"""ckptwatch benchmarks: each target as a ratio against a standard tool timed in the same run.

    python -m bench.run                 # all five benchmarks at full size (about 7 minutes)
    python -m bench.run --quick         # small sizes, 3 repeats: a smoke test (about 1.5 minutes)
    python -m bench.run --only tree     # one benchmark (tree | header | deep | service | retention;
                                        # --only repeats)
    python -m bench.run --only mirror   # 7: mirror, restore and S3 upload of 4 GiB (not in the default set)

Prints a table (ours, the yardstick, ours / yardstick, the target) and writes ``bench/out/latest.json``
plus the profiles in ``bench/out/``. See bench/README.md for what each benchmark measures and why.

This process imports neither torch nor numpy: files that need them are written by child processes
(``bench.make_hf``, ``bench.make_files``) and in-process timings run in a fresh child interpreter
(``bench.inproc``). Generated data lives in ``--workdir`` (default /tmp/ckptwatch-bench); the big files
and the checkpoint tree are deleted at the end unless ``--keep`` (the 20-file Trainer template, 0.4 MB,
is kept so the next run does not train again).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import OLD, PY, REPO, check_call, child_env, hf_template, loadavg, log, measure, run_once

OUT = REPO / "bench" / "out"
PROF = OUT  # profiles go beside the --json file


def inproc(mode: str, path: str, repeat: int, *extra: str) -> dict:
    """Run ``bench.inproc`` in a fresh interpreter and return its JSON result."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tf:
        out = tf.name
    try:
        check_call([PY, "-m", "bench.inproc", mode, path, "--out", out, "--repeat", str(repeat), *extra],
                   f"in-process {mode}")
        with open(out) as f:
            return json.load(f)
    finally:
        os.unlink(out)


def code_fingerprint() -> str:
    """Hash of ckptwatch/**/*.py: a benchmark whose code changed while it ran is flagged (shared repo)."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted((REPO / "ckptwatch").rglob("*.py")):
        h.update(str(p.relative_to(REPO)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def drop(d: dict) -> dict:
    """A stats dict without the list of every run (kept in latest.json, too long for the table)."""
    return {k: v for k, v in d.items() if k != "all"}


# --------------------------------------------------------------------------------------------------
# Benchmark 1: structural pass over N Trainer checkpoints


def build_tree(template: Path, root: Path, n: int, copy: bool) -> Path:
    """``root/run/checkpoint-1..n``: hard links (or copies) of the template, each with its own
    ``trainer_state.json`` whose ``global_step`` matches the directory name; every mtime an hour old."""
    shutil.rmtree(root, ignore_errors=True)
    run = root / "run"
    run.mkdir(parents=True)
    stamp = time.time() - OLD
    names = sorted(os.listdir(template))
    for name in names:
        os.utime(template / name, (stamp, stamp))
    state = json.loads((template / "trainer_state.json").read_text())
    for i in range(1, n + 1):
        d = run / f"checkpoint-{i}"
        d.mkdir()
        for name in names:
            if name == "trainer_state.json":
                state["global_step"] = i
                p = d / name
                p.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
                os.utime(p, (stamp, stamp))
            elif copy:
                shutil.copy2(template / name, d / name)
            else:
                os.link(template / name, d / name)
        os.utime(d, (stamp, stamp))
    os.utime(run, (stamp, stamp))
    os.utime(root, (stamp, stamp))
    return root


def bench_tree(args: argparse.Namespace, work: Path) -> dict:
    n = args.checkpoints
    template = hf_template(work)
    files_per = len(os.listdir(template))
    t = time.perf_counter()
    root = build_tree(template, work / "tree", n, args.tree_copy)
    log(f"tree: {n} checkpoints x {files_per} files built in {time.perf_counter() - t:.1f} s "
        f"({'copies' if args.tree_copy else 'hard links'})")
    r = args.repeat
    res: dict = {"checkpoints": n, "files_per_checkpoint": files_per, "files": n * files_per,
                 "tree_mode": "copy" if args.tree_copy else "hardlink", "root": str(root),
                 "template_files": sorted(os.listdir(template)), "loadavg_before": loadavg()}
    find_argv = ["find", str(root), "-type", "f", "-printf", "%s %T@\n"]
    log("tree: yardstick find -printf")
    res["find"] = measure(find_argv, r)
    log("tree: check_root in-process")
    res["inproc"] = inproc("tree", str(root), r, "--profile", "--sample", str(root / "run" / "checkpoint-1"))
    log("tree: CLI once --json")
    res["cli"] = measure([PY, "-m", "ckptwatch", "once", "--settle", "0", "--json", str(root)], r)
    res["find_after"] = measure(find_argv, r)
    # `verify` of ONE checkpoint of the run: it should cost about one checkpoint, not the whole run.
    newest = str(root / "run" / f"checkpoint-{n}")
    log("tree: CLI verify of the newest checkpoint only")
    res["cli_verify_one"] = measure([PY, "-m", "ckptwatch", "verify", "--settle", "0", newest], min(r, 3),
                                    warmup=0)
    res["find_one"] = measure(["find", newest, "-type", "f", "-printf", "%s %T@\n"], r)
    res["loadavg_after"] = loadavg()
    ip = res["inproc"]
    ok = (ip["checkpoints"] == n and ip["statuses"] == {"complete": n}
          and ip["latest_resumable"] == str(root / "run" / f"checkpoint-{n}")
          and res["cli"]["exit_codes"] == [0])
    res["valid"] = ok
    if not ok:
        log(f"tree: WARNING unexpected verdicts {ip['statuses']} {ip['problem_kinds']} cli exit "
            f"{res['cli']['exit_codes']}")
    (PROF / "profile-tree.txt").write_text(ip.get("profile_cumtime", "") + "\n\n"
                                           + ip.get("profile_tottime", "") + "\n")
    return res


# --------------------------------------------------------------------------------------------------
# Benchmark 2: header check of a 10 GB, 1,000-tensor safetensors file


def make_sparse_safetensors(path: Path, data_bytes: int, tensors: int, write_tail: bool) -> dict:
    """A valid safetensors header for ``tensors`` F32 tensors covering ``data_bytes``; the data is a hole
    (``truncate``). With ``write_tail`` the last 4 KiB are real (random) bytes, so the file does not end in
    an unwritten region, which is what a completely written file looks like to the sparse-tail check."""
    per = (data_bytes // tensors) // 4096 * 4096  # bytes per tensor, whole 4 KiB pages
    elems = per // 4
    header: dict = {"__metadata__": {"format": "pt"}}
    for i in range(tensors):
        header[f"model.layers.{i // 10}.block.{i % 10}.weight"] = {
            "dtype": "F32", "shape": [elems // 1024, 1024], "data_offsets": [i * per, (i + 1) * per]}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    size = 8 + len(raw) + per * tensors
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        f.truncate(size)
        if write_tail:
            os.pwrite(f.fileno(), os.urandom(4096), size - 4096)
    stamp = time.time() - OLD
    os.utime(path, (stamp, stamp))
    st = os.stat(path)
    return {"path": str(path), "bytes": size, "header_bytes": len(raw), "tensors": tensors,
            "allocated_bytes": st.st_blocks * 512, "tail_written": write_tail}


def verify_json(path: str) -> dict:
    r = subprocess.run([PY, "-m", "ckptwatch", "verify", "--settle", "0", "--json", path], cwd=REPO,
                       env=child_env(), capture_output=True, text=True, check=False)
    try:
        cp = json.loads(r.stdout)["checkpoint"]
        return {"exit": r.returncode, "status": cp["status"],
                "problems": [{"kind": p["kind"], "message": p["message"]} for p in cp["problems"]]}
    except (ValueError, KeyError):
        return {"exit": r.returncode, "stderr": r.stderr[-2000:]}


def importtime_top(argv: list[str], top: int = 15) -> dict:
    """``python -X importtime``: the modules with the largest self time, and the total."""
    r = subprocess.run([PY, "-X", "importtime", *argv], cwd=REPO, env=child_env(), capture_output=True,
                       text=True, check=False)
    rows = []
    for line in r.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            rows.append((int(m.group(1)), int(m.group(2)), len(m.group(3)), m.group(4)))
    total = sum(cum for _, cum, depth, _ in rows if depth == 1)
    own = sum(s for s, _, _, name in rows if name.startswith("ckptwatch"))
    return {"total_import_us": total, "ckptwatch_self_us": own, "modules": len(rows),
            "top_self_us": [{"module": name, "self_us": s, "cumulative_us": c}
                            for s, c, _, name in sorted(rows, reverse=True)[:top]]}


def bench_header(args: argparse.Namespace, work: Path) -> dict:
    r = max(args.repeat, 10)  # cheap: more runs for a steadier median
    data_bytes = int(args.header_gb * 1e9)
    base = work / "header"
    shutil.rmtree(base, ignore_errors=True)
    # One file per directory: `verify FILE` discovers FILE's parent and judges every loose weight file there.
    full = make_sparse_safetensors(base / "tail-written" / "model.safetensors", data_bytes,
                                   args.header_tensors, True)
    hole = make_sparse_safetensors(base / "all-hole" / "model.safetensors", data_bytes, args.header_tensors,
                                   False)
    log(f"header: {full['bytes'] / 1e9:.1f} GB sparse safetensors, {args.header_tensors} tensors, "
        f"header {full['header_bytes']} bytes")
    res: dict = {"file": full, "file_all_hole": hole, "loadavg_before": loadavg()}
    res["verdict"] = verify_json(full["path"])
    res["verdict_all_hole"] = verify_json(hole["path"])
    log("header: yardsticks python -c pass, safe_open(numpy)")
    res["python_pass"] = measure([PY, "-c", "pass"], r)
    safe_open_src = ("import sys; from safetensors import safe_open\n"
                     "with safe_open(sys.argv[1], framework='numpy') as f:\n"
                     "    [(f.get_slice(k).get_shape(), f.get_slice(k).get_dtype()) for k in f.keys()]")
    res["safe_open_proc"] = measure([PY, "-c", safe_open_src, full["path"]], r)
    log("header: CLI verify")
    res["cli"] = measure([PY, "-m", "ckptwatch", "verify", "--settle", "0", full["path"]], r)
    res["cli_all_hole"] = measure([PY, "-m", "ckptwatch", "verify", "--settle", "0", hole["path"]], r)
    log("header: in-process check_safetensors and safe_open")
    res["inproc"] = inproc("header", full["path"], 20, "--profile")
    res["safe_open_inproc"] = inproc("safe_open", full["path"], 20)
    res["importtime"] = importtime_top(["-m", "ckptwatch", "verify", "--settle", "0", full["path"]])
    res["loadavg_after"] = loadavg()
    res["valid"] = res["verdict"].get("status") == "complete" and res["cli"]["exit_codes"] == [0]
    prof = (res["inproc"].get("profile_tottime", "") + "\n\n-X importtime, largest self times (us):\n"
            + "\n".join(f"{m['self_us']:8d} {m['cumulative_us']:8d}  {m['module']}"
                        for m in res["importtime"]["top_self_us"]))
    (PROF / "profile-header.txt").write_text(prof + "\n")
    return res


# --------------------------------------------------------------------------------------------------
# Benchmark 3: --deep throughput against cat


def deep_file(work: Path, kind: str, mib: int) -> Path:
    d = work / "deep" / kind
    path = d / ("model.safetensors" if kind == "safetensors" else "model.pt")
    marker = d / ".mib"
    if path.is_file() and marker.is_file() and marker.read_text() == str(mib):
        return path
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    log(f"deep: writing a {mib} MiB {kind} file with the real library (child process)")
    t = time.perf_counter()
    check_call([PY, "-m", "bench.make_files", kind, str(path), str(mib)], f"make {kind}", timeout=600)
    log(f"deep: {path} written in {time.perf_counter() - t:.1f} s")
    stamp = time.time() - OLD
    os.utime(path, (stamp, stamp))
    marker.write_text(str(mib))
    return path


def bench_deep(args: argparse.Namespace, work: Path) -> dict:
    need = (args.deep_st_mib + args.deep_pt_mib) * (1 << 20) + (1 << 30)
    free = shutil.disk_usage(work).free
    res: dict = {"disk_free_before": free, "loadavg_before": loadavg()}
    if free < need:
        res["error"] = f"only {free / 2**30:.1f} GiB free in {work}; need {need / 2**30:.1f} GiB"
        log(f"deep: SKIPPED: {res['error']}")
        return res
    r = args.repeat
    files = {"safetensors": deep_file(work, "safetensors", args.deep_st_mib),
             "torch": deep_file(work, "torch", args.deep_pt_mib)}
    for kind, path in files.items():
        size = path.stat().st_size
        log(f"deep: {kind} {size / 2**30:.2f} GiB: warming the page cache")
        for _ in range(2):
            run_once(["cat", str(path)])
        one: dict = {"path": str(path), "bytes": size}
        one["cat"] = measure(["cat", str(path)], r)
        log(f"deep: {kind}: in-process deep check")
        one["inproc"] = inproc("deep", str(path), r, "--kind", kind, "--profile")
        log(f"deep: {kind}: CLI verify --deep")
        one["cli"] = measure([PY, "-m", "ckptwatch", "verify", "--deep", "--settle", "0", str(path)], r)
        one["cat_after"] = measure(["cat", str(path)], r)
        for key in ("cat", "cli", "cat_after"):
            one[key]["mb_per_s"] = size / one[key]["median"] / 1e6
        one["valid"] = one["inproc"]["problems"] == [] and one["cli"]["exit_codes"] == [0]
        res[kind] = one
    res["loadavg_after"] = loadavg()
    res["valid"] = all(res[k]["valid"] for k in files)
    (PROF / "profile-deep.txt").write_text("\n\n".join(
        f"{k}: {res[k]['inproc'].get('profile_tottime', '')}" for k in files) + "\n")
    return res


# --------------------------------------------------------------------------------------------------
# Summary table


def rows(results: dict) -> list[dict]:
    out = []

    def add(bench: str, what: str, ours: float | None, ours_txt: str, yard: float | None, yard_txt: str,
            ratio: float | None, target_txt: str, met: bool | None, note: str = "") -> None:
        out.append({"bench": bench, "measure": what, "ours": ours, "ours_text": ours_txt, "yardstick": yard,
                    "yardstick_text": yard_txt, "ratio": ratio, "target": target_txt, "met": met,
                    "note": note})

    t = results.get("tree")
    if t:
        n, fp = t["checkpoints"], t["files_per_checkpoint"]
        find = t["find"]["median"]
        ip = t["inproc"]["check_root_s"]["median"]
        cli = t["cli"]["median"]
        scale = 1000 / n  # the target is for 1,000 checkpoints
        add("1 tree", f"check_root in-process, {n} ckpts x {fp} files", ip,
            f"{ip:.2f} s ({ip / n * 1e3:.2f} ms/ckpt)",
            find, f"find -printf {find:.3f} s", ip / find, "< 2 s per 1,000 ckpts", ip * scale < 2.0)
        add("1 tree", "CLI once --json (whole process)", cli,
            f"{cli:.2f} s (rss {t['cli']['peak_rss_kib'] / 1024:.0f} MiB)",
            find, f"find -printf {find:.3f} s", cli / find, "< 2 s per 1,000 ckpts", cli * scale < 2.0)
        if "cli_verify_one" in t:
            v1, f1 = t["cli_verify_one"]["median"], t["find_one"]["median"]
            add("1 tree", f"CLI verify of 1 checkpoint in the {n}-ckpt run", v1, f"{v1:.2f} s", f1,
                f"find -printf {f1 * 1e3:.1f} ms", v1 / f1, "(context)", None)
    rp = results.get("rootpass")
    if rp:
        f, files = rp["find_wall"], rp["tree"]["files"]
        for key, what in (("warm", "service rescan (all cached)"),
                          ("first", "service first pass (empty cache)"),
                          ("cold", "check_root, no cache (once)")):
            w = rp[f"{key}_wall"]
            add("1b rootpass", f"{what}, {files:,} files", w, f"{w:.2f} s (cpu {rp[f'{key}_cpu']:.2f} s)", f,
                f"find -printf {f:.2f} s", w / f, "<= 2.5x (goal 1.5x)" if key == "warm" else "(context)",
                w / f <= 2.5 if key == "warm" else None)
        if "base_warm_wall" in rp:
            bw = rp["base_warm_wall"]
            add("1b rootpass", f"baseline's service rescan ({rp['baseline']})", bw,
                f"{bw:.2f} s (cpu {rp['base_warm_cpu']:.2f} s)", f, f"find -printf {f:.2f} s", bw / f,
                "(context)", None)
        add("1b rootpass", "RSS after the warm pass", rp["rss_warm_mib"], f"{rp['rss_warm_mib']:.0f} MiB "
            f"({rp['cache_rss_per_checkpoint_bytes']:.0f} B/ckpt over imports)", rp["rss_imports_mib"],
            f"imports {rp['rss_imports_mib']:.0f} MiB", None, "(context)", None)
    h = results.get("header")
    if h:
        cli, pas, so = h["cli"]["median"], h["python_pass"]["median"], h["safe_open_proc"]["median"]
        rss = h["cli"]["peak_rss_kib"] / 1024
        gb = h["file"]["bytes"] / 1e9
        add("2 header", f"CLI verify, {gb:.0f} GB / {h['file']['tensors']} tensors", cli,
            f"{cli * 1e3:.0f} ms",
            pas, f"python -c pass {pas * 1e3:.0f} ms", cli / pas, "< 50 ms", cli < 0.050)
        add("2 header", "CLI verify vs safe_open(numpy) process", cli, f"{cli * 1e3:.0f} ms",
            so, f"safe_open proc {so * 1e3:.0f} ms", cli / so, "(context)", None)
        add("2 header", "CLI verify peak RSS", rss, f"{rss:.0f} MiB", h["python_pass"]["peak_rss_kib"] / 1024,
            f"python -c pass {h['python_pass']['peak_rss_kib'] / 1024:.0f} MiB",
            rss / (h["python_pass"]["peak_rss_kib"] / 1024), "< 200 MB", rss * 2**20 < 200e6)
        ip = h["inproc"]["check_safetensors_s"]["median"]
        sop = h["safe_open_inproc"]["safe_open_s"]["median"]
        add("2 header", "check_safetensors in-process", ip, f"{ip * 1e3:.2f} ms", sop,
            f"safe_open in-proc {sop * 1e3:.2f} ms", ip / sop, "< 50 ms", ip < 0.050)
        torch = h["inproc"]["torch_imported"]
        add("2 header", "torch imported by the verify path", torch, "yes" if torch else "no", None, "-", None,
            "no", not torch, ", ".join(h["inproc"]["heavy_modules"]))
    d = results.get("deep")
    if d and "error" not in d:
        for kind in ("safetensors", "torch"):
            one = d.get(kind)
            if not one:
                continue
            cat = one["cat"]["mb_per_s"]
            gib = one["bytes"] / 2**30
            label = "check_safetensors(deep)" if kind == "safetensors" else "check_torch_file(deep)"
            ipm = one["inproc"]["mb_per_s"]
            add("3 deep", f"{label} in-process, {gib:.2f} GiB", ipm, f"{ipm:,.0f} MB/s", cat,
                f"cat {cat:,.0f} MB/s", ipm / cat, ">= 0.8 x cat", ipm / cat >= 0.8,
                f"CRC-32 by {one['inproc']['crc_impl']}" if kind == "torch" else "")
            cm = one["cli"]["mb_per_s"]
            add("3 deep", f"CLI verify --deep {kind}, {gib:.2f} GiB", cm, f"{cm:,.0f} MB/s", cat,
                f"cat {cat:,.0f} MB/s", cm / cat, ">= 0.8 x cat", cm / cat >= 0.8)
    s = results.get("service")
    if s:
        from bench import service

        service.rows(s, add)
    m = results.get("mirror")
    if m:
        gib = m["bytes"] / 2**30
        for name, r in m["results"].items():
            if "error" in r:
                continue
            o, t = r["ours"], r["yardstick"]
            add("7 mirror", f"{o['label']}, {gib:.2f} GiB / {m['files']} files", o["median"],
                f"{o['median']:.2f} s", t["median"], f"{t['label']} {t['median']:.2f} s",
                o["median"] / t["median"], f"speed >= {r['floor']} x the tool's", r["met"],
                f"tool/ours {r['ratio']:.2f}")
            if "rss" in r:
                mb = r["rss"]["peak_bytes"] / 1e6
                add("7 mirror", "  peak RSS of that mirror", mb, f"{mb:.0f} MB", None, "-", None, "< 200 MB",
                    r["rss"]["met"])
    r = results.get("retention")
    if r:
        ip = r["inproc"]
        n, plan, srt, chk = ip["checkpoints"], ip["plan_s"]["median"], ip["sort_s"]["median"], \
            ip["violations_s"]["median"]
        add("6 retention", f"plan_run, {n:,} ckpts, every rule + min_free", plan,
            f"{plan * 1e3:.1f} ms ({plan / n * 1e6:.1f} us/ckpt)", srt,
            f"sorted(key=recency) {srt * 1e3:.2f} ms", plan / srt, "< 0.2 s", plan < 0.2,
            f"{ip['deleted_by_rules']} deleted by rules, {ip['deleted_by_pressure']} by min_free, "
            f"{ip['kept']} kept ({ip['protected']} protected)")
        add("6 retention", f"guards.violations over the plan (delete's last check), {n:,} ckpts", chk,
            f"{chk * 1e3:.1f} ms", srt, f"sorted(key=recency) {srt * 1e3:.2f} ms", chk / srt, "(context)",
            None)
        dl = r.get("delete")
        if dl:
            loop, worker, rm = dl["loop_ms"]["median"], dl["worker_s"]["median"], dl["rm_rf_s"]["median"]
            gb = dl["bytes"] / 1e9
            add("6 retention", f"sink.judged deleting a {gb:.0f} GB, {dl['files']:,}-file ckpt: loop time",
                loop / 1e3, f"{loop:.2f} ms (max {dl['loop_ms']['max']:.2f})", rm, f"rm -rf {rm:.2f} s",
                loop / 1e3 / rm, "< 10 ms", dl["loop_ms"]["max"] < 10.0)
            add("6 retention", "  the worker: fresh re-check, trash rename, removal", worker,
                f"{worker:.2f} s", rm, f"rm -rf {rm:.2f} s", worker / rm, "(context)", None)
    return out


def print_table(table: list[dict]) -> None:
    head = ("bench", "measure", "ours", "yardstick (same run)", "ours/tool", "target", "met")
    body = [(r["bench"], r["measure"] + (f" [{r['note']}]" if r["note"] else ""), r["ours_text"],
             r["yardstick_text"], "-" if r["ratio"] is None else f"{r['ratio']:.2f}", r["target"],
             "-" if r["met"] is None else ("yes" if r["met"] else "NO")) for r in table]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format(*head))
    print(line.format(*("-" * w for w in widths)))
    for b in body:
        print(line.format(*b))


def machine() -> dict:
    info: dict = {"python": platform.python_version(), "kernel": platform.release(), "nproc": os.cpu_count()}
    try:
        cpu = Path("/proc/cpuinfo").read_text()
        m = re.search(r"model name\s*:\s*(.+)", cpu)
        info["cpu"] = m.group(1).strip() if m else None
        mem = re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text())
        info["mem_gib"] = round(int(mem.group(1)) / 2**20, 1) if mem else None
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "ckptwatch"], cwd=REPO,
                               capture_output=True, text=True, check=False).stdout
        info["git"] = commit + ("+dirty ckptwatch/" if dirty.strip() else "")
        info["ckptwatch_code_sha256"] = code_fingerprint()
    except OSError:
        pass
    crc = subprocess.run([PY, "-c", "from ckptwatch.formats._stream import CRC_IMPL; print(CRC_IMPL)"],
                         cwd=REPO,
                         env=child_env(), capture_output=True, text=True, check=False).stdout.strip()
    info["ckptwatch_crc_impl"] = crc
    return info


def bench_retention(args: argparse.Namespace, work: Path) -> dict:
    """Benchmark 6: planning retention for a run of ``--retention-checkpoints`` (pure, in-process)."""
    log(f"retention: plan_run over a synthetic run of {args.retention_checkpoints} checkpoints")
    res: dict = {"loadavg_before": loadavg()}
    res["inproc"] = inproc("retention", "-", max(args.repeat, 20), "--checkpoints",
                           str(args.retention_checkpoints), "--profile")
    res["loadavg_after"] = loadavg()
    ip = res["inproc"]
    res["valid"] = (ip["checkpoints"] == args.retention_checkpoints and ip["violations"] == []
                    and ip["deleted_by_pressure"] > 0 and ip["shortfall"] == 0)
    (PROF / "profile-retention.txt").write_text(ip.get("profile_tottime", "") + "\n")
    from bench.prune import measure_delete

    gb = args.prune_gb
    log(f"retention: deleting a {gb:g} GB checkpoint of {args.prune_files} files through the sink")
    res["delete"] = measure_delete(work, int(gb * 1e9), args.prune_files, 3 if args.quick else args.repeat)
    return res


def bench_mirror(args: argparse.Namespace, work: Path) -> dict:
    """Benchmark 7, mirror / restore / S3 upload of a big checkpoint: in ``bench/mirror.py``."""
    from bench import mirror

    gib = args.mirror_gib or (0.25 if args.quick else 4.0)
    doc = mirror.run_all(["local", "restore", "s3"], gib, args.mirror_files, min(args.repeat, 3), None, work,
                         args.keep)
    return {**doc, "valid": all("error" not in r for r in doc["results"].values())}


def bench_rootpass(args: argparse.Namespace, work: Path) -> dict:
    """Benchmark 1b, the service's whole-root pass cold and warm against find: in ``bench/rootpass.py``."""
    from bench import rootpass

    return rootpass.bench_rootpass(args, work, PROF)


def bench_service(args: argparse.Namespace, work: Path) -> dict:
    """Benchmark 4, the service (``ckptwatch run``): in ``bench/service.py``."""
    from bench import service

    return service.bench_service(args, work)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append",
                    choices=("tree", "rootpass", "header", "deep", "service", "retention", "mirror"),
                    help="run only this benchmark (repeatable); default: all but rootpass and mirror")
    ap.add_argument("--quick", action="store_true",
                    help="small sizes and 3 repeats (100 checkpoints, 1 GB header file, 256 MiB deep files)")
    ap.add_argument("--repeat", type=int,
                    help="timed runs per measurement after 1 warm-up (default 5; --quick 3)")
    ap.add_argument("--checkpoints", type=int, help="tree: number of checkpoints (default 1000)")
    ap.add_argument("--tree-copy", action="store_true",
                    help="tree: copy the files instead of hard-linking them")
    ap.add_argument("--rootpass-runs", type=int, default=100,
                    help="rootpass: runs of 100 checkpoints x 10 files (default 100 = 100,000 files)")
    ap.add_argument("--rootpass-big", action="store_true",
                    help="rootpass: 10,000 runs (1,000,000 files; slow to build: keep it with --keep)")
    ap.add_argument("--rootpass-baseline", metavar="DIR",
                    help="rootpass: also run DIR/ckptwatch's service (e.g. main's, from git archive), "
                         "interleaved with ours")
    ap.add_argument("--rootpass-profile", action="store_true",
                    help="rootpass: also profile (cProfile, untimed runs) the cold and the warm pass")
    ap.add_argument("--header-gb", type=float, help="header: data size in GB (10^9 bytes; default 10)")
    ap.add_argument("--header-tensors", type=int, default=1000, help="header: tensor count (default 1000)")
    ap.add_argument("--deep-st-mib", type=int, help="deep: safetensors file size in MiB (default 2048)")
    ap.add_argument("--deep-pt-mib", type=int, help="deep: torch.save file size in MiB (default 1536)")
    ap.add_argument("--service-samples", type=int,
                    help="service: checkpoints timed with the inotify observer (default 20; --quick 5)")
    ap.add_argument("--service-poll-samples", type=int,
                    help="service: checkpoints timed with the polling observer (default 5; --quick 2)")
    ap.add_argument("--service-runs", type=int,
                    help="service: runs of --service-per-run checkpoints x 10 files in the idle tree "
                         "(default 100 = 100,000 files)")
    ap.add_argument("--service-per-run", type=int, default=100,
                    help="service: checkpoints of 10 files per run in the idle tree (default 100; "
                         "--service-runs 10000 --service-per-run 10 is issue 13's 1,000,000 files)")
    ap.add_argument("--service-idle", type=float,
                    help="service: idle period in seconds (default 30; --quick 10)")
    ap.add_argument("--service-idle-passes", type=int, default=2,
                    help="service: new checkpoints timed in the idle tree after the idle period, one per "
                         "run, spread over the runs (default 2; with polling, each at a random phase of the "
                         "poll)")
    ap.add_argument("--service-active-runs", type=int, default=None,
                    help="service: a realistic idle tree: only this many runs (spread over the tree) were "
                         "written within the last hours; every other run dir and its checkpoint dirs are "
                         "dated 3 days back (os.utime, counted in the build time), and the timed "
                         "checkpoints go into the active runs (default: every run active, the worst case "
                         "for polling)")
    ap.add_argument("--service-burst", type=int,
                    help="service: checkpoints in the burst (default 1000; --quick 200)")
    ap.add_argument("--service-phase", action="append",
                    choices=("latency_inotify", "latency_polling", "idle", "idle_polling", "burst"),
                    help="service: run only this phase (repeatable; default: all five)")
    ap.add_argument("--prune-gb", type=float, default=None,
                    help="retention: size of the checkpoint the sink deletes, GB (default 10; --quick 1)")
    ap.add_argument("--prune-files", type=int, default=1000,
                    help="retention: files in that checkpoint (default 1000)")
    ap.add_argument("--retention-checkpoints", type=int, default=10_000,
                    help="retention: checkpoints in the planned run (default 10000, also with --quick)")
    ap.add_argument("--mirror-gib", type=float, default=None,
                    help="mirror: GiB of safetensors data (default 4; --quick 0.25)")
    ap.add_argument("--mirror-files", type=int, default=12, help="mirror: safetensors files (default 12)")
    ap.add_argument("--workdir", default="/tmp/ckptwatch-bench", help="where generated data goes")
    ap.add_argument("--keep", action="store_true", help="keep the generated tree and big files")
    ap.add_argument("--json", default=str(OUT / "latest.json"), help="where to write the results")
    args = ap.parse_args(argv)
    q = args.quick
    args.repeat = args.repeat or (3 if q else 5)
    args.checkpoints = args.checkpoints or (100 if q else 1000)
    args.header_gb = args.header_gb or (1.0 if q else 10.0)
    args.deep_st_mib = args.deep_st_mib or (256 if q else 2048)
    args.deep_pt_mib = args.deep_pt_mib or (256 if q else 1536)
    args.service_samples = args.service_samples or (5 if q else 20)
    args.service_poll_samples = args.service_poll_samples or (2 if q else 5)
    args.service_runs = args.service_runs or (10 if q else 100)
    args.service_idle = args.service_idle or (10.0 if q else 30.0)
    args.service_burst = args.service_burst or (200 if q else 1000)
    args.prune_gb = args.prune_gb or (1.0 if q else 10.0)
    which = args.only or ["tree", "header", "deep", "service", "retention"]

    global PROF
    PROF = Path(args.json).resolve().parent
    PROF.mkdir(parents=True, exist_ok=True)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results: dict = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "note": "shared, noisy 2-vCPU VM: medians with min/max; compare ratios, not absolute numbers",
    }
    log(f"running {', '.join(which)} (repeat {args.repeat}) in {work}; load {loadavg()}")
    funcs = {"tree": bench_tree, "rootpass": bench_rootpass, "header": bench_header, "deep": bench_deep,
             "service": bench_service, "retention": bench_retention, "mirror": bench_mirror}
    try:
        for name in which:
            t = time.perf_counter()
            before = code_fingerprint()
            try:
                results[name] = funcs[name](args, work)
            except Exception as exc:  # noqa: BLE001 - one failing benchmark must not lose the others' numbers
                log(f"{name}: FAILED: {type(exc).__name__}: {exc}")
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            after = code_fingerprint()
            results[name]["code"] = before if before == after else f"{before}->{after}"
            if before != after:
                log(f"{name}: WARNING: ckptwatch/ changed while this benchmark ran; rerun it")
            results.setdefault("elapsed_s", {})[name] = round(time.perf_counter() - t, 1)
    finally:
        if not args.keep:
            for sub in ("tree", "header", "deep", "service", "mirror"):
                shutil.rmtree(work / sub, ignore_errors=True)
            for d in work.glob("rootpass-*"):
                shutil.rmtree(d, ignore_errors=True)
    ok = {k: v for k, v in results.items() if k in funcs and "error" not in v}
    results["summary"] = rows(ok)
    results["total_s"] = round(time.time() - started, 1)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1, default=str)
    print()
    print_table(results["summary"])
    print(f"\n{results['date']}  {results['machine'].get('cpu')} x{results['machine'].get('nproc')}  "
          f"python {results['machine']['python']}  crc {results['machine']['ckptwatch_crc_impl']}  "
          f"total {results['total_s']} s  -> {args.json}")
    for name in which:
        v = results.get(name, {})
        if "error" in v:
            print(f"{name}: ERROR {v['error']}")
        elif v.get("valid") is False:
            print(f"{name}: WARNING: the verdicts were not the expected ones; see {args.json}")
        if "->" in str(v.get("code", "")):
            print(f"{name}: WARNING: ckptwatch/ changed while it ran ({v['code']}); rerun it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
