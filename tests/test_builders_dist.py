"""On-disk facts of the ``dist`` and ``synthetic`` builders that other tests rely on."""

from __future__ import annotations

import binascii
import json
import stat
import struct
import zipfile
from pathlib import Path

import pytest

from tests.builders.synthetic import ORBAX_TMP_SUFFIX, _checkpoint_message_class, nemo_name

pytestmark = pytest.mark.slow


def _names(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def _zip_prefix(p: Path) -> str:
    with zipfile.ZipFile(p) as z:
        return z.namelist()[0].split("/")[0]


def _data_pkl(p: Path) -> bytes:
    with zipfile.ZipFile(p) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))


def _assert_dcp_dir(d: Path, ranks: int, extra: set[str] = frozenset()) -> None:
    assert _names(d) == {".metadata", *(f"__{r}_0.distcp" for r in range(ranks)), *extra}
    for r in range(ranks):
        f = d / f"__{r}_0.distcp"
        assert f.stat().st_size > 0, f
        assert f.read_bytes()[:4] == b"PK\x03\x04"  # every storage slice is a torch.save zip
        assert (d / ".metadata").stat().st_mtime >= f.stat().st_mtime
    assert (d / ".metadata").read_bytes()[:1] == b"\x80"  # plain pickle


def test_dcp(artefact):
    """dcp: step_{100,200,300}/ each hold .metadata and four non-empty __{r}_0.distcp."""
    root = artefact("dcp")
    assert _names(root) == {"step_100", "step_200", "step_300"}
    for step in (100, 200, 300):
        _assert_dcp_dir(root / f"step_{step}", 4)


def _assert_deepspeed(root: Path, stage: int) -> None:
    assert _names(root) == {"latest", "zero_to_fp32.py", "zero_to_torch.py", "global_step2", "global_step4"}
    assert (root / "latest").read_bytes() == b"global_step4"  # no trailing newline
    for script in ("zero_to_fp32.py", "zero_to_torch.py"):
        assert _mode(root / script) & stat.S_IXUSR
    for tag in ("global_step2", "global_step4"):
        optim = {f"zero_pp_rank_{d}_mp_rank_00_optim_states.pt" for d in (0, 1)}
        model = ({f"zero_pp_rank_{d}_mp_rank_00_model_states.pt" for d in (0, 1)} if stage == 3
                 else {"mp_rank_00_model_states.pt"})
        assert _names(root / tag) == optim | model
        for f in (root / tag).iterdir():
            assert f.stat().st_size > 0 and zipfile.is_zipfile(f), f
            assert _zip_prefix(f) == f.stem  # torch names the zip records after the file stem


def test_deepspeed_zero2(artefact):
    """deepspeed_zero2: latest, recovery scripts, one model-states file and two optim files per tag."""
    _assert_deepspeed(artefact("deepspeed_zero2"), 2)


def test_deepspeed_zero3(artefact):
    """deepspeed_zero3: latest, recovery scripts, model-states and optim files per dp rank per tag."""
    _assert_deepspeed(artefact("deepspeed_zero3"), 3)


def test_torch_save(artefact):
    """torch_save: two zip checkpoints, one legacy-format file and one safetensors file (mode 0600)."""
    root = artefact("torch_save")
    assert _names(root) == {"ckpt_step_10.pt", "ckpt_step_20.pt", "legacy_step_30.pt",
                            "weights_step_20.safetensors"}
    for step in (10, 20):
        f = root / f"ckpt_step_{step}.pt"
        assert zipfile.is_zipfile(f) and _zip_prefix(f) == f.stem
        assert b"optimizer" in _data_pkl(f)
    legacy = (root / "legacy_step_30.pt").read_bytes()
    assert legacy.startswith(bytes.fromhex("80028a0a6cfc9c46f9206aa85019"))
    st = root / "weights_step_20.safetensors"
    raw = st.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    assert header["__metadata__"] == {"format": "pt", "step": "20"}
    assert "0.weight" in header and "2.bias" in header
    assert _mode(st) == 0o600  # safetensors 0.8.0 writes via a 0600 temp file + rename


def test_megatron_legacy(artefact):
    """megatron_legacy: tracker "200", iter_0000{100,200}/mp_rank_0{0,1}/model_optim_rng.pt zips."""
    root = artefact("megatron_legacy")
    assert _names(root) == {"latest_checkpointed_iteration.txt", "iter_0000100", "iter_0000200"}
    assert (root / "latest_checkpointed_iteration.txt").read_bytes() == b"200"
    for it in ("iter_0000100", "iter_0000200"):
        assert _names(root / it) == {"mp_rank_00", "mp_rank_01"}
        for mp in ("mp_rank_00", "mp_rank_01"):
            assert _names(root / it / mp) == {"model_optim_rng.pt"}
            f = root / it / mp / "model_optim_rng.pt"
            assert _zip_prefix(f) == "model_optim_rng"
            pkl = _data_pkl(f)
            assert b"argparse\nNamespace" in pkl and b"tensor_model_parallel_size" in pkl
            assert (root / "latest_checkpointed_iteration.txt").stat().st_mtime >= f.stat().st_mtime


def test_megatron_torch_dist(artefact):
    """megatron_torch_dist: tracker "200"; each iter dir is DCP + common.pt + metadata.json written last."""
    root = artefact("megatron_torch_dist")
    tracker = root / "latest_checkpointed_iteration.txt"
    assert _names(root) == {"latest_checkpointed_iteration.txt", "iter_0000100", "iter_0000200"}
    assert tracker.read_bytes() == b"200"
    for it in ("iter_0000100", "iter_0000200"):
        d = root / it
        _assert_dcp_dir(d, 2, {"common.pt", "metadata.json"})
        assert json.loads((d / "metadata.json").read_text()) == {
            "sharded_backend": "torch_dist", "sharded_backend_version": 1,
            "common_backend": "torch", "common_backend_version": 1}
        order = [d / "common.pt", d / "__0_0.distcp", d / ".metadata", d / "metadata.json", tracker]
        mtimes = [p.stat().st_mtime for p in order]
        assert mtimes == sorted(mtimes)
        assert _zip_prefix(d / "common.pt") == "common"
        assert b"all_local_plans" in (d / ".metadata").read_bytes()  # Megatron's extra Metadata attribute


def test_nemo(artefact):
    """nemo: three finished checkpoints (weights/ + context/), an -unfinished marker beside a partial one."""
    ck = artefact("nemo") / "checkpoints"
    done = [nemo_name(1.23, 99), nemo_name(1.10, 199), nemo_name(1.10, 199) + "-last"]
    partial = nemo_name(0.98, 299)
    assert done[0] == "model_name=0--val_loss=1.23-step=99-consumed_samples=800.0"
    assert _names(ck) == {*done, partial, partial + "-unfinished"}
    for name in done:
        assert _names(ck / name) == {"weights", "context"}
        _assert_dcp_dir(ck / name / "weights", 2, {"common.pt", "metadata.json"})
        assert _names(ck / name / "context") == {"io.json", "model.yaml"}
        json.loads((ck / name / "context" / "io.json").read_text())
    marker = ck / (partial + "-unfinished")
    assert marker.is_file() and marker.stat().st_size == 0
    assert _names(ck / partial) == {"weights"}
    _assert_dcp_dir(ck / partial / "weights", 2, {"common.pt"})  # no metadata.json
    assert marker.stat().st_mtime <= (ck / partial / "weights" / ".metadata").stat().st_mtime


def test_nvrx_local(artefact):
    """nvrx_local: <rank>/iter_{it:07d}_{rank}_local.pt for 100 and 200; a truncated 300 .dirty on rank 2."""
    root = artefact("nvrx_local")
    assert _names(root) == {"0", "1", "2", "3"}
    for rank in range(4):
        expected = {f"iter_{it:07d}_{rank}_local.pt" for it in (100, 200)}
        if rank == 2:
            expected.add("iter_0000300_2_local.dirty.pt")
        assert _names(root / str(rank)) == expected
        for it in (100, 200):
            f = root / str(rank) / f"iter_{it:07d}_{rank}_local.pt"
            assert _zip_prefix(f) == "archive"  # torch.save into an open file object
            assert b"MCoreTensorAwareStateDict" in _data_pkl(f)
    dirty = root / "2" / "iter_0000300_2_local.dirty.pt"
    assert dirty.stat().st_size > 0 and dirty.read_bytes()[:4] == b"PK\x03\x04"
    assert not zipfile.is_zipfile(dirty)  # no central directory: interrupted write


def test_mindspore(artefact):
    """mindspore: 4 rank dirs of 3 read-only protobuf .ckpt (CRC on steps 10, 15); meta.json -> step 15."""
    root = artefact("mindspore")
    assert _names(root) == {"checkpoint"}
    assert _names(root / "checkpoint") == {f"rank_{r}" for r in range(4)}
    Checkpoint = _checkpoint_message_class()
    for r in range(4):
        d = root / "checkpoint" / f"rank_{r}"
        names = {f"llama2_7b_rank_{r}-1_{s}.ckpt" for s in (5, 10, 15)}
        assert _names(d) == names | {"meta.json"}
        assert json.loads((d / "meta.json").read_text()) == {
            "last_epoch": 1, "last_step": 15, "last_ckpt_file": f"llama2_7b_rank_{r}-1_15.ckpt"}
        assert _mode(d / "meta.json") == 0o600
        for step in (5, 10, 15):
            f = d / f"llama2_7b_rank_{r}-1_{step}.ckpt"
            assert _mode(f) == 0o400
            raw = f.read_bytes()
            assert raw[:1] == b"\x0a"
            if step == 5:
                assert raw[-17:-10] != b"crc_num"
                body = raw
            else:
                assert raw[-17:-10] == b"crc_num"
                body = raw[:-17]
                assert int.from_bytes(raw[-10:], "big") == binascii.crc32(body)
            msg = Checkpoint()
            msg.ParseFromString(body)
            tags = [v.tag for v in msg.value]
            assert tags[-5:] == ["epoch_num", "step_num", "global_step", "loss_scale", "global_batch_size"]
            assert "model.layers.0.attention.wq.weight" in tags and "adam_m.lm_head.weight" in tags
            step_num = next(v for v in msg.value if v.tag == "step_num").tensor
            assert list(step_num.dims) == [] and step_num.tensor_type == "Int64"
            assert struct.unpack("<q", step_num.tensor_content)[0] == step


def test_orbax(artefact):
    """orbax: committed steps 100, 200 (commit_success.txt in step and item) and a crashed 300 temp dir."""
    root = artefact("orbax")
    tmp_name = f"300{ORBAX_TMP_SUFFIX}"
    assert tmp_name == "300.orbax-checkpoint-tmp"
    assert _names(root) == {"100", "200", tmp_name}
    item_files = {"_METADATA", "_sharding", "manifest.ocdbt", "d", "array_metadatas", "ocdbt.process_0",
                  "ocdbt.process_1"}
    for step in ("100", "200"):
        d = root / step
        assert _names(d) == {"_CHECKPOINT_METADATA", "commit_success.txt", "default"}
        meta = json.loads((d / "_CHECKPOINT_METADATA").read_text())
        assert list(meta) == ["item_handlers", "metrics", "performance_metrics", "init_timestamp_nsecs",
                              "commit_timestamp_nsecs", "custom_metadata"]
        assert meta["commit_timestamp_nsecs"] >= meta["init_timestamp_nsecs"]
        assert list(meta["item_handlers"]) == ["default"]
        assert (d / "commit_success.txt").read_text().startswith("Checkpoint commit was successful to ")
        item = d / "default"
        assert _names(item) == item_files | {"commit_success.txt"}
        assert "tree_metadata" in json.loads((item / "_METADATA").read_text())
        assert _names(item / "array_metadatas") == {"process_0", "process_1"}
        assert (item / "manifest.ocdbt").read_bytes()[:4] == bytes.fromhex("0cdb3a2a")
        for p in (0, 1):
            assert _names(item / f"ocdbt.process_{p}") == {"manifest.ocdbt", "d"}
            assert len(list((item / f"ocdbt.process_{p}" / "d").iterdir())) == 5
        assert (d / "commit_success.txt").stat().st_mtime >= (item / "_METADATA").stat().st_mtime
    tmp = root / tmp_name
    assert _names(tmp) == {"_CHECKPOINT_METADATA", f"default{ORBAX_TMP_SUFFIX}"}
    meta = json.loads((tmp / "_CHECKPOINT_METADATA").read_text())
    assert meta["commit_timestamp_nsecs"] is None and meta["init_timestamp_nsecs"] > 0
    assert _names(tmp / f"default{ORBAX_TMP_SUFFIX}") == item_files  # no commit_success.txt
