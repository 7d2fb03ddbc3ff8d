"""Synthetic layouts of frameworks that cannot run in this project's environment, written the way the
framework code writes them.

Why synthetic: Megatron-LM / NeMo train only on CUDA, megatron-core >= 0.17 needs Python >= 3.12
(this project is 3.11) and its checkpoint save path calls ``torch.cuda`` (``synchronize``,
``current_device``); nvidia-resiliency-ext's managers expect CUDA tensors; none of MindSpore,
JAX/Orbax, Megatron, NeMo or NVRx is a dependency of this project (``pyproject.toml``), and a test
suite that needs a 1 GB MindSpore wheel or JAX to build fixtures would be slow and fragile. So these
builders reproduce the on-disk result with the primitives the frameworks use: ``torch.save``,
``torch.distributed.checkpoint`` (a real 2-process gloo DCP save), the real protobuf library, JSON.
File names, write order (hence mtimes), marker protocols and pickle globals follow the upstream code
cited in each docstring; several were checked against real runs of the framework made once in
scratch venvs (orbax-checkpoint 0.12.8, megatron-core 0.16.1 with its CUDA calls stubbed,
nvidia-resiliency-ext 0.4.1, MindSpore 2.10.0; see ``docs/layouts-notes.md``). Tensor contents are
random. Everything that imports torch runs in a child process (``tests.builders._dist_worker``).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import struct
import tempfile
import time
from pathlib import Path

from tests.builders import builder
from tests.builders._dist_worker import free_port, run_worker

# ---------------------------------------------------------------------------------------------------
# Megatron-LM


@builder("megatron_legacy")
def build_megatron_legacy(dest: Path) -> None:
    """SYNTHETIC (Megatron-LM trains only on CUDA; see the module docstring): Megatron-LM
    ``--ckpt-format torch`` with TP=2, PP=1, saves at iterations 100 and 200::

        dest/latest_checkpointed_iteration.txt          "200" (no newline; rewritten after each save)
        dest/iter_0000100/mp_rank_00/model_optim_rng.pt
        dest/iter_0000100/mp_rank_01/model_optim_rng.pt
        dest/iter_0000200/mp_rank_0{0,1}/model_optim_rng.pt

    Each file is a ``torch.save`` zip (prefix ``model_optim_rng/``, as torch names it after the file
    stem) of Megatron's ``generate_state_dict`` keys: ``args`` (argparse.Namespace with
    tensor_model_parallel_size=2, pipeline_model_parallel_size=1, world_size=2, params_dtype=
    torch.bfloat16, ckpt_format="torch", ...), ``checkpoint_version`` 3.0, ``iteration``, ``model``
    (this TP rank's bf16 partition of a 2-layer GPT: qkv/fc1/embedding split on dim 0, proj/fc2 on
    dim 1, layernorms replicated, TE ``_extra_state`` None), ``optimizer`` (Adam state +
    ``fp32_from_fp16_params``), ``opt_param_scheduler``, ``rerun_state_machine``, ``rng_state``
    (python/numpy/torch states, placeholder CUDA states), ``num_floating_point_operations_so_far``.
    ``weights_only=True`` loading fails on ``argparse.Namespace`` as with real files."""
    run_worker("megatron_legacy", {"dest": str(dest), "iterations": [100, 200]})


@builder("megatron_torch_dist")
def build_megatron_torch_dist(dest: Path) -> None:
    """SYNTHETIC (Megatron-LM trains only on CUDA; the DCP part is a real ``torch.distributed.checkpoint``
    save from a 2-process gloo group standing in for TP=2, with Megatron's ``all_local_plans`` added to
    ``.metadata``): Megatron core <= v0.18 ``torch_dist`` format at iterations 100 and 200 (file set,
    order and ``metadata.json`` bytes identical to a real megatron-core 0.16.1 save)::

        dest/latest_checkpointed_iteration.txt     "200" (no newline)
        dest/iter_0000100/common.pt                rank 0, first: {"args": Namespace(...), "iteration", ...}
        dest/iter_0000100/__0_0.distcp             rank 0's shards (non-empty)
        dest/iter_0000100/__1_0.distcp             rank 1's shards (non-empty)
        dest/iter_0000100/.metadata                DCP coordinator, after all data files
        dest/iter_0000100/metadata.json            last: {"sharded_backend": "torch_dist",
                                                   "sharded_backend_version": 1, "common_backend":
                                                   "torch", "common_backend_version": 1}
        dest/iter_0000200/  (same)

    DCP keys: bf16 DTensor shards (Shard(0)) named like Megatron's sharded keys
    (``decoder.layers.self_attention.linear_qkv.weight``, ...), ``optimizer.state.exp_avg.<key>``,
    a replicated layernorm, and one bytes item per rank ``rng_state/shard_0.{tp}_1.2`` (how torch_dist
    stores the ``rng_state`` ShardedObject). Order per iteration: common.pt, DCP, metadata.json,
    barrier, tracker (rank 0)."""
    items = []
    for iteration in (100, 200):
        items.append({
            "path": str(dest / f"iter_{iteration:07d}"), "flavor": "megatron", "iteration": iteration,
            "post_write": {str(dest / "latest_checkpointed_iteration.txt"): str(iteration)},
        })
    run_worker("sharded_dcp", {"nprocs": 2, "port": free_port(), "dirs": items})


# ---------------------------------------------------------------------------------------------------
# NeMo 2

NEMO_UNFINISHED_SUFFIX = "-unfinished"  # nemo/lightning/pytorch/callbacks/model_checkpoint.py


def nemo_name(val_loss: float, step: int, global_batch: int = 8) -> str:
    """The default NeMo 2 recipe name ``{model_name}--{val_loss:.2f}-{step}-{consumed_samples}``
    as Lightning formats it (``model_name`` is not a logged metric, so Lightning renders it ``=0``)."""
    consumed = float((step + 1) * global_batch)
    return f"model_name=0--val_loss={val_loss:.2f}-step={step}-consumed_samples={consumed}"


def _nemo_context(step: int) -> dict[str, str]:
    """``context/io.json`` (fiddle ``serialization.dump_json`` of ``TrainerContext.__io__``;
    APPROXIMATE structure, real files are much larger) and ``context/model.yaml``."""
    io_json = {
        "root": {"type": "ref", "key": "trainer_context_1"},
        "objects": {
            "trainer_context_1": {
                "type": {"type": "pyref", "module": "nemo.lightning.io.pl", "name": "TrainerContext"},
                "items": [["attr:model", {"type": "ref", "key": "llama_model_1"}],
                          ["attr:trainer", {"type": "ref", "key": "trainer_1"}],
                          ["attr:extra", {}]],
                "metadata": {"type": "ref", "key": "buildable_traverser_metadata_1"},
                "paths": [["<root>"]],
            },
            "llama_model_1": {
                "type": {"type": "pyref", "module": "nemo.collections.llm.gpt.model.llama",
                         "name": "LlamaModel"},
                "items": [["attr:config", {"type": "ref", "key": "llama32_config1_b_1"}]],
                "metadata": {"type": "ref", "key": "buildable_traverser_metadata_2"},
                "paths": [["<root>", "<attr:model>"]],
            },
            "llama32_config1_b_1": {
                "type": {"type": "pyref", "module": "nemo.collections.llm.gpt.model.llama",
                         "name": "Llama32Config1B"},
                "items": [["attr:num_layers", 2], ["attr:hidden_size", 16], ["attr:seq_length", 32]],
                "metadata": {"type": "ref", "key": "buildable_traverser_metadata_3"},
                "paths": [["<root>", "<attr:model>", "<attr:config>"]],
            },
            "trainer_1": {
                "type": {"type": "pyref", "module": "nemo.lightning.pytorch.trainer", "name": "Trainer"},
                "items": [["attr:max_steps", 300], ["attr:devices", 2], ["attr:global_step_at_save", step]],
                "metadata": {"type": "ref", "key": "buildable_traverser_metadata_4"},
                "paths": [["<root>", "<attr:trainer>"]],
            },
        },
        "refcounts": {"trainer_context_1": 1, "llama_model_1": 1, "llama32_config1_b_1": 1, "trainer_1": 1},
        "version": "0.0.1",
    }
    model_yaml = ("_target_: nemo.collections.llm.gpt.model.llama.LlamaModel\n"
                  "config:\n  _target_: nemo.collections.llm.gpt.model.llama.Llama32Config1B\n"
                  "  num_layers: 2\n  hidden_size: 16\n  seq_length: 32\n"
                  "  tensor_model_parallel_size: 2\n")
    return {"io.json": json.dumps(io_json), "model.yaml": model_yaml}


@builder("nemo")
def build_nemo(dest: Path) -> None:
    """SYNTHETIC (NeMo 2 needs Megatron core + CUDA; ``weights/`` are real 2-process gloo DCP saves
    laid out as Megatron ``torch_dist``): a NeMo 2 run with the default recipe's ``nl.ModelCheckpoint``
    filename and ``save_last=True`` but ``every_n_train_steps=100`` (recipe: 200), global batch 8,
    TP=2; ``dest`` is the log dir (``<dir>/<name>/<version>`` in NeMo)::

        dest/checkpoints/model_name=0--val_loss=1.23-step=99-consumed_samples=800.0/
        dest/checkpoints/model_name=0--val_loss=1.10-step=199-consumed_samples=1600.0/
        dest/checkpoints/model_name=0--val_loss=1.10-step=199-consumed_samples=1600.0-last/
            each: weights/{common.pt, __0_0.distcp, __1_0.distcp, .metadata, metadata.json}
                  context/{io.json, model.yaml}
        dest/checkpoints/model_name=0--val_loss=0.98-step=299-consumed_samples=2400.0/
            weights/{common.pt, __0_0.distcp, __1_0.distcp, .metadata}   (no metadata.json, no context/)
        dest/checkpoints/model_name=0--val_loss=0.98-step=299-consumed_samples=2400.0-unfinished  (empty)

    Protocol (``ModelCheckpoint._save_checkpoint``): rank 0 touches ``<name>-unfinished``, barrier,
    Megatron saves ``<name>/weights``, rank 0 dumps ``<name>/context``, then the finalize callback
    (barrier) removes the marker. The step-299 save was interrupted after the DCP save, before
    ``metadata.json``: its marker is still there (and older than its weights). ``-last`` is a full
    separate copy (``save_last=True``, not ``"link"``); the step-99 ``-last`` was already removed.
    ``context/io.json`` is an approximation of fiddle's JSON (see ``_nemo_context``)."""
    ckpt_dir = dest / "checkpoints"
    saves = [(1.23, 99, False), (1.10, 199, False), (1.10, 199, True), (0.98, 299, False)]
    items = []
    for val_loss, step, last in saves:
        name = nemo_name(val_loss, step) + ("-last" if last else "")
        path = ckpt_dir / name
        marker = str(ckpt_dir / (name + NEMO_UNFINISHED_SUFFIX))
        item = {"path": str(path / "weights"), "flavor": "nemo", "iteration": step, "pre_touch": [marker]}
        if step == 299:  # interrupted: DCP done, metadata.json / context / marker removal never happened
            item["metadata_json"] = False
        else:
            item["post_write"] = {str(path / "context" / k): v for k, v in _nemo_context(step).items()}
            item["post_remove"] = [marker]
        items.append(item)
    run_worker("sharded_dcp", {"nprocs": 2, "port": free_port(), "dirs": items})


# ---------------------------------------------------------------------------------------------------
# nvidia-resiliency-ext local checkpoints


@builder("nvrx_local")
def build_nvrx_local(dest: Path) -> None:
    """SYNTHETIC (nvidia-resiliency-ext's state dicts need CUDA tensors and Megatron; names checked
    against a real nvidia-resiliency-ext 0.4.1 ``LocalCheckpointManager`` run): node-local checkpoints of
    ``nvidia_resiliency_ext.checkpointing.local.ckpt_managers.local_manager.LocalCheckpointManager``
    (``root_local_ckpt_dir=dest``, ``session_id=""`` as Megatron creates it), 4 ranks, iterations 100
    and 200, plus an interrupted save of iteration 300 on rank 2::

        dest/{0,1,2,3}/iter_0000100_{rank}_local.pt
        dest/{0,1,2,3}/iter_0000200_{rank}_local.pt
        dest/2/iter_0000300_2_local.dirty.pt        truncated (first 60% of the torch.save stream)

    Path = ``root / session_id / str(rank) / f"iter_{iteration:07d}_{rank}_local{suffix}.pt"`` with
    suffix ``.dirty`` while writing (``_filename_from_template``): the file is opened ``"bx"``,
    ``torch.save``d into (zip prefix ``archive/``: torch.save to a file object) and renamed to the final
    name. Contents: a pickled ``megatron.core.dist_checkpointing.tensor_aware_state_dict.
    MCoreTensorAwareStateDict`` (``common`` with ``args`` Namespace, ``sharded_state_dict`` of
    ``megatron...mapping.ShardedTensor``/``ShardedObject``), the classes Megatron hands to NVRx.

    Note: the real manager's finalize (``_cleanup``) deletes every iteration older than the one just
    saved on each rank, so iteration 100 would normally be gone once 200 was finalized; it is kept
    here (state between save and finalize of 200 is the only natural case) because tests need two
    iterations. A real interrupted save normally also leaves other ranks' complete 300 files."""
    run_worker("nvrx_local", {"dest": str(dest), "iterations": [100, 200], "world": 4, "dirty": [300, 2]})


# ---------------------------------------------------------------------------------------------------
# MindSpore / MindFormers


def _checkpoint_message_class():
    """Build ``Checkpoint`` from mindspore/ccsrc/utils/checkpoint.proto (proto2, no package) at run time."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="checkpoint.proto", syntax="proto2")
    ck = fdp.message_type.add(name="Checkpoint")
    value = ck.nested_type.add(name="Value")
    value.oneof_decl.add(name="value")
    value.field.add(name="tag", number=1, label=F.LABEL_REQUIRED, type=F.TYPE_STRING)
    value.field.add(name="tensor", number=2, label=F.LABEL_OPTIONAL, type=F.TYPE_MESSAGE,
                    type_name=".TensorProto", oneof_index=0)
    value.field.add(name="maptensor", number=3, label=F.LABEL_OPTIONAL, type=F.TYPE_MESSAGE,
                    type_name=".MapTensorProto", oneof_index=0)
    ck.field.add(name="value", number=1, label=F.LABEL_REPEATED, type=F.TYPE_MESSAGE,
                 type_name=".Checkpoint.Value")
    tp = fdp.message_type.add(name="TensorProto")
    tp.field.add(name="dims", number=1, label=F.LABEL_REPEATED, type=F.TYPE_INT64)
    tp.field.add(name="tensor_type", number=2, label=F.LABEL_REQUIRED, type=F.TYPE_STRING)
    tp.field.add(name="tensor_content", number=3, label=F.LABEL_REQUIRED, type=F.TYPE_BYTES)
    mtp = fdp.message_type.add(name="MapTensorProto")
    mtp.field.add(name="tensor", number=1, label=F.LABEL_REPEATED, type=F.TYPE_MESSAGE,
                  type_name=".TensorProto")
    pool = descriptor_pool.DescriptorPool()  # private pool: no clash with other "Checkpoint" messages
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("Checkpoint"))


_MS_FORMATS = {"Float16": "e", "Float32": "f", "Int32": "i", "Int64": "q"}


def _ms_tensor_bytes(ms_type: str, dims: list[int], seed: int) -> bytes:
    import random

    n = 1
    for d in dims:
        n *= max(d, 1)  # a scalar has dims [] (or [0] in files of older MindSpore)
    rng = random.Random(seed)
    fmt = _MS_FORMATS[ms_type]
    vals = [rng.uniform(-1, 1) for _ in range(n)] if fmt in "ef" else [rng.randrange(100) for _ in range(n)]
    return struct.pack(f"<{n}{fmt}", *vals)


def _ms_params(rank: int, step: int) -> list[tuple[str, list[int], str, bytes]]:
    """(tag, dims, tensor_type, content): a tiny MindFormers llama slice (mp=4 shards on dim 0),
    its Adam moments, then the MindFormers append_dict tags (after all parameters)."""
    weights = [
        ("model.tok_embeddings.embedding_weight", [16, 16], "Float16"),
        ("model.layers.0.attention_norm.weight", [16], "Float32"),
        ("model.layers.0.attention.wq.weight", [4, 16], "Float16"),
        ("model.layers.0.attention.wk.weight", [4, 16], "Float16"),
        ("model.layers.0.attention.wv.weight", [4, 16], "Float16"),
        ("model.layers.0.attention.wo.weight", [16, 4], "Float16"),
        ("model.layers.0.ffn_norm.weight", [16], "Float32"),
        ("model.layers.0.feed_forward.w1.weight", [8, 16], "Float16"),
        ("model.layers.0.feed_forward.w2.weight", [16, 8], "Float16"),
        ("model.norm_out.weight", [16], "Float32"),
        ("lm_head.weight", [16, 16], "Float16"),
    ]
    out = []
    seed = rank * 100000 + step * 100
    for i, (tag, dims, t) in enumerate(weights):
        out.append((tag, dims, t, _ms_tensor_bytes(t, dims, seed + i)))
    for i, (tag, dims, _) in enumerate(weights):
        for moment in ("adam_m", "adam_v"):
            out.append((f"{moment}.{tag}", dims, "Float32", _ms_tensor_bytes("Float32", dims, seed + 50 + i)))
    out.append(("beta1_power", [1], "Float32", struct.pack("<f", 0.9 ** step)))
    out.append(("beta2_power", [1], "Float32", struct.pack("<f", 0.95 ** step)))
    # append_dict (mindformers CheckpointMonitor): epoch_num, step_num, global_step, loss_scale,
    # global_batch_size. Python scalars become 0-d tensors: MindSpore 2.10 writes dims [] (its loader
    # also accepts the older [0]).
    out.append(("epoch_num", [], "Int64", struct.pack("<q", 1)))
    out.append(("step_num", [], "Int64", struct.pack("<q", step)))
    out.append(("global_step", [], "Int64", struct.pack("<q", step)))
    out.append(("loss_scale", [], "Float32", struct.pack("<f", 1024.0)))
    out.append(("global_batch_size", [], "Int64", struct.pack("<q", 8)))
    return out


def write_mindspore_ckpt(path: Path, params: list[tuple[str, list[int], str, bytes]], *, crc: bool) -> None:
    """MindSpore 2.10 ``_exec_save``: one serialized ``Checkpoint`` message per parameter appended to
    ``<stem>.tmp``, optional ``b"crc_num" + crc32.to_bytes(10, "big")`` trailer (crc over all message
    bytes), ``os.rename`` to ``<stem>.ckpt``, then ``chmod 0o400``."""
    Checkpoint = _checkpoint_message_class()
    tmp = path.with_suffix(".tmp")
    crc_num = 0
    with open(tmp, "wb") as f:
        for tag, dims, ms_type, content in params:
            msg = Checkpoint()
            value = msg.value.add()
            value.tag = tag
            value.tensor.dims.extend(dims)
            value.tensor.tensor_type = ms_type
            value.tensor.tensor_content = content
            data = msg.SerializeToString()
            crc_num = binascii.crc32(data, crc_num)
            f.write(data)
        if crc:
            f.write(b"crc_num" + crc_num.to_bytes(10, "big"))
    os.rename(tmp, path)
    os.chmod(path, 0o400)


@builder("mindspore")
def build_mindspore(dest: Path) -> None:
    """SYNTHETIC (MindSpore/MindFormers are not dependencies of this project): MindFormers legacy-format
    ``CheckpointMonitor`` output of a 4-rank job (prefix ``llama2_7b``, one epoch, saves at steps 5, 10,
    15)::

        dest/checkpoint/rank_{r}/llama2_7b_rank_{r}-1_5.ckpt     no CRC trailer
        dest/checkpoint/rank_{r}/llama2_7b_rank_{r}-1_10.ckpt    CRC trailer
        dest/checkpoint/rank_{r}/llama2_7b_rank_{r}-1_15.ckpt    CRC trailer
        dest/checkpoint/rank_{r}/meta.json   {"last_epoch": 1, "last_step": 15,
                                              "last_ckpt_file": "llama2_7b_rank_{r}-1_15.ckpt"}

    ``.ckpt`` files are written with the real protobuf library from the ``checkpoint.proto`` schema
    (§2.5 of layouts.md; message classes built at run time): a concatenation of one ``Checkpoint``
    message per parameter (weights, ``adam_m.*``/``adam_v.*``, ``beta{1,2}_power``), then the append_dict
    tags ``epoch_num, step_num, global_step, loss_scale, global_batch_size`` (0-d: dims ``[]``), then
    for steps 10 and 15 the 17-byte ``crc_num`` trailer (as if the run had been restarted after step 5
    with ``crc_check=True``). MindSpore 2.10 protocol: ``<stem>.tmp`` -> rename -> mode 0400. The
    encoding (one message per parameter, 0-d dims, Int64/Float32 append values, CRC trailer, mode) was
    checked against files written by a real MindSpore 2.10.0 ``save_checkpoint`` on the CPU.
    ``meta.json`` is rewritten after each save via ``NamedTemporaryFile(dir=rank_dir)`` + ``os.replace``
    (so its mode is 0600)."""
    ranks, prefix = 4, "llama2_7b"
    rank_dirs = [dest / "checkpoint" / f"rank_{r}" for r in range(ranks)]
    for d in rank_dirs:
        d.mkdir(parents=True)
    for step in (5, 10, 15):
        for r, d in enumerate(rank_dirs):
            name = f"{prefix}_rank_{r}-1_{step}.ckpt"
            write_mindspore_ckpt(d / name, _ms_params(r, step), crc=step != 5)
            with tempfile.NamedTemporaryFile("w", delete=False, dir=d) as tmp:
                json.dump({"last_epoch": 1, "last_step": step, "last_ckpt_file": name}, tmp)
            os.replace(tmp.name, d / "meta.json")


# ---------------------------------------------------------------------------------------------------
# Orbax

ORBAX_TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax/checkpoint/_src/path/atomicity_types.py TMP_DIR_SUFFIX
ORBAX_COMMIT_FILE = "commit_success.txt"  # atomicity_types.COMMIT_SUCCESS_FILE
_ORBAX_HANDLER = "orbax.checkpoint._src.handlers.standard_checkpoint_handler.StandardCheckpointHandler"
_ORBAX_TREE = {  # param name -> global shape; every array sharded on dim 0 over the 2 processes
    "opt_state.0.mu.dense.kernel": [16, 32], "opt_state.0.nu.dense.kernel": [16, 32],
    "params.dense.bias": [32], "params.dense.kernel": [16, 32], "params.head.kernel": [32, 4],
}
_ORBAX_PROCESSES = 2
# first bytes seen in orbax-checkpoint 0.12.8 / tensorstore 0.1.86 OCDBT files (then zstd data)
_OCDBT_MANIFEST_MAGIC = bytes.fromhex("0cdb3a2a")
_OCDBT_DATA_MAGIC = bytes.fromhex("0cdb20de")


def _orbax_write_shape(shape: list[int]) -> list[int]:
    return [shape[0] // _ORBAX_PROCESSES] + shape[1:]


def _orbax_tree_metadata() -> dict:
    """``_METADATA``: ``InternalTreeMetadata.to_json`` (orbax/checkpoint/_src/metadata/tree.py), keys
    and key order as orbax-checkpoint 0.12.8 writes them."""
    entries = {}
    for name, shape in sorted(_ORBAX_TREE.items()):
        keys = name.split(".")
        entries[str(tuple(keys))] = {
            "key_metadata": [{"key": k, "key_type": 1 if k.isdigit() else 2} for k in keys],
            "value_metadata": {"value_type": "jax.Array", "skip_deserialize": False,
                               "write_shape": _orbax_write_shape(shape)},
        }
    entries["('step',)"] = {"key_metadata": [{"key": "step", "key_type": 2}],
                            "value_metadata": {"value_type": "scalar", "skip_deserialize": False}}
    return {"tree_metadata": entries, "use_ocdbt": True, "use_zarr3": False,
            "store_array_data_equal_to_fill_value": True, "custom_metadata": None}


def _orbax_step_metadata(init_ns: int, commit_ns: int | None, handlers: bool) -> str:
    """``_CHECKPOINT_METADATA``: ``json.dumps(step_metadata_serialization.serialize(StepMetadata))``."""
    return json.dumps({
        "item_handlers": {"default": _ORBAX_HANDLER} if handlers else None,
        "metrics": {},
        "performance_metrics": {},
        "init_timestamp_nsecs": init_ns,
        "commit_timestamp_nsecs": commit_ns,
        "custom_metadata": {},
    })


def _placeholder(n: int, seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


def _hexname(seed: int) -> str:
    return binascii.hexlify(_placeholder(16, seed)).decode()


def _orbax_sharding() -> str:
    """``_sharding`` (tensorstore JSON kvstore, compact): standard base64 of the param name -> the
    ``json.dumps`` of its sharding metadata (as orbax-checkpoint 0.12.8 writes for a NamedSharding)."""
    spec = json.dumps({"sharding_type": "NamedSharding", "shape": [_ORBAX_PROCESSES], "axis_names": ["data"],
                       "axis_types": ["AxisType.Auto"], "partition_spec": ["data"],
                       "device_mesh": {"mesh": [{"id": i} for i in range(_ORBAX_PROCESSES)]}})
    return json.dumps({base64.b64encode(name.encode()).decode(): spec for name in sorted(_ORBAX_TREE)},
                      separators=(",", ":"))


def _orbax_save(dest: Path, step: int, *, crash_before_finalize: bool) -> None:
    """One ``CheckpointManager.save`` in the order orbax-checkpoint 0.12.8 writes (observed mtimes)."""
    step_tmp = dest / f"{step}{ORBAX_TMP_SUFFIX}"
    step_tmp.mkdir()
    init_ns = time.time_ns()
    (step_tmp / "_CHECKPOINT_METADATA").write_text(_orbax_step_metadata(init_ns, None, handlers=False))
    item_tmp = step_tmp / f"default{ORBAX_TMP_SUFFIX}"
    item_tmp.mkdir()
    for p in range(_ORBAX_PROCESSES):  # each process: its OCDBT sub-database and array metadatas
        pdir = item_tmp / f"ocdbt.process_{p}"
        (pdir / "d").mkdir(parents=True)
        for i, (name, shape) in enumerate(sorted(_ORBAX_TREE.items())):
            n = 4 * _orbax_write_shape(shape)[0] * (shape[1] if len(shape) > 1 else 1)
            (pdir / "d" / _hexname(step * 1000 + p * 100 + i)).write_bytes(
                _OCDBT_DATA_MAGIC + _placeholder(min(n, 300), step + p + i))
        if p == 0:
            (item_tmp / "_sharding").write_text(_orbax_sharding())
        (item_tmp / "array_metadatas").mkdir(exist_ok=True)
        (item_tmp / "array_metadatas" / f"process_{p}").write_text(json.dumps({"array_metadatas": [
            {"array_metadata": {"param_name": name, "write_shape": _orbax_write_shape(shape),
                                "chunk_shape": _orbax_write_shape(shape), "ext_metadata": None}}
            for name, shape in sorted(_ORBAX_TREE.items())]}))
        (pdir / "manifest.ocdbt").write_bytes(_OCDBT_MANIFEST_MAGIC + _placeholder(260, step * 7 + p))
    (item_tmp / "_METADATA").write_text(json.dumps(_orbax_tree_metadata()))
    (step_tmp / "_CHECKPOINT_METADATA").write_text(_orbax_step_metadata(init_ns, None, handlers=True))
    (item_tmp / "d").mkdir()  # merged OCDBT database (process 0 merges the per-process ones)
    (item_tmp / "d" / _hexname(step)).write_bytes(_OCDBT_DATA_MAGIC + _placeholder(320, step * 3))
    (item_tmp / "manifest.ocdbt").write_bytes(_OCDBT_MANIFEST_MAGIC + _placeholder(110, step * 5))
    if crash_before_finalize:
        return
    # AtomicRenameTemporaryPath.finalize (item, then step): [metadata update,] commit_success.txt into
    # the temporary dir, then rename. The item's text names its final path inside the step temp dir.
    item_final = step_tmp / "default"
    (item_tmp / ORBAX_COMMIT_FILE).write_text(f"Checkpoint commit was successful to {item_final}")
    item_tmp.rename(item_final)
    (step_tmp / "_CHECKPOINT_METADATA").write_text(
        _orbax_step_metadata(init_ns, time.time_ns(), handlers=True))
    (step_tmp / ORBAX_COMMIT_FILE).write_text(f"Checkpoint commit was successful to {dest / str(step)}")
    step_tmp.rename(dest / str(step))


@builder("orbax")
def build_orbax(dest: Path) -> None:
    """SYNTHETIC (Orbax needs JAX + TensorStore, which this project does not install; modelled on a
    real orbax-checkpoint 0.12.8 / jax 0.10.2 CPU run made once in a scratch venv, see
    docs/layouts-notes.md §1): ``CheckpointManager(dest)`` on a local filesystem, one item ``default``
    (``StandardCheckpointHandler``, OCDBT, 2 JAX processes), steps 100 and 200 committed, step 300
    crashed just before finalize::

        dest/100/_CHECKPOINT_METADATA    {"item_handlers": {"default": "...StandardCheckpointHandler"},
                                          "metrics": {}, "performance_metrics": {},
                                          "init_timestamp_nsecs": N, "commit_timestamp_nsecs": M,
                                          "custom_metadata": {}}
        dest/100/commit_success.txt      "Checkpoint commit was successful to <dest>/100"
        dest/100/default/_METADATA       tree metadata JSON
        dest/100/default/_sharding       JSON (base64 param name -> sharding JSON string)
        dest/100/default/commit_success.txt   "... successful to <dest>/100.orbax-checkpoint-tmp/default"
        dest/100/default/manifest.ocdbt, d/<32 hex>              merged OCDBT database
        dest/100/default/ocdbt.process_{0,1}/manifest.ocdbt, d/<32 hex> x5   per-process OCDBT
        dest/100/default/array_metadatas/process_{0,1}           JSON
        dest/200/  (same)
        dest/300.orbax-checkpoint-tmp/_CHECKPOINT_METADATA       item_handlers set, no commit timestamp
        dest/300.orbax-checkpoint-tmp/default.orbax-checkpoint-tmp/  all item files, no commit_success.txt

    Orbax 0.12.8's atomic-rename finalize writes ``commit_success.txt`` into the temp dir before the
    rename even on local disks, at item and at step level; temp names have no timestamp
    (``<name>.orbax-checkpoint-tmp``; older releases appended ``-<timestamp>``). JSON files are written
    as Orbax writes them; OCDBT files are random placeholder bytes behind the real 4-byte magics
    (``0cdb3a2a`` manifests, ``0cdb20de`` data) and are not valid OCDBT."""
    for step in (100, 200, 300):
        _orbax_save(dest, step, crash_before_finalize=step == 300)
