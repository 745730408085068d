"""Devices, precision and processes through Lightning Fabric (CPU, GPU, DDP, multi-node)."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path

import torch
from lightning_fabric import Fabric

from sbssl.errors import SbsslError
from sbssl.utils.rundir import RunLock, prepare_run, remove_stale_tmp

# What gloo / NCCL say when another process of the job has died or stopped answering.
_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "remote worker",
              "NCCL communicator was aborted", "Timed out", "timed out")


def cpu_has_bf16() -> bool:
    """AMX (or AVX512-BF16) makes bf16 matmuls fast on CPU; without it bf16 is slower than fp32."""
    try:
        return bool(torch.cpu._is_amx_tile_supported()) or bool(torch.cpu._is_avx512_bf16_supported())
    except AttributeError:
        return False


def inference_bf16(device: torch.device | str) -> bool:
    """bf16 autocast for scoring: on GPUs, and on CPUs where `trainer.precision=auto` would train in bf16."""
    return torch.device(device).type == "cuda" or cpu_has_bf16()


def resolve_precision(precision: str, accelerator: str) -> str:
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("cuda", "gpu") or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_bf16() else "32-true"


def make_fabric(trainer_cfg) -> Fabric:
    """A launched Fabric; with devices > 1 on CPU this spawns gloo DDP processes. A process that dies before the
    rendezvous ends the others after `trainer.rendezvous_timeout_s` (torch's default would hold them 30 minutes),
    with one line; the collectives afterwards keep torch's 30 minutes (rank 0 alone scores and checkpoints)."""
    fabric = Fabric(accelerator=trainer_cfg.accelerator, devices=trainer_cfg.devices, num_nodes=trainer_cfg.num_nodes,
                    strategy=_strategy(trainer_cfg),
                    precision=resolve_precision(str(trainer_cfg.precision), str(trainer_cfg.accelerator)))
    try:
        fabric.launch()
    except (RuntimeError, TimeoutError) as e:
        if "timed out" not in str(e).lower() and "timeout" not in str(e).lower():
            raise
        raise SbsslError(f"DDP rendezvous: not all {fabric.world_size} processes joined within "
                         f"{trainer_cfg.rendezvous_timeout_s:g} s (trainer.rendezvous_timeout_s; one died before "
                         f"joining, or MASTER_ADDR/MASTER_PORT differ between them)") from None
    if fabric.world_size > 1:
        torch.distributed.set_timeout(timedelta(minutes=30))
    return fabric


def _strategy(trainer_cfg):
    """DDP with the rendezvous timeout where the config asks for DDP (or `auto` over several processes)."""
    devices = trainer_cfg.devices  # a count, a list of indices, or a string Fabric resolves ("auto": one here)
    per_node = devices if isinstance(devices, int) else 1 if isinstance(devices, str) else len(devices)
    if trainer_cfg.strategy == "ddp" or (trainer_cfg.strategy == "auto" and per_node * trainer_cfg.num_nodes > 1):
        from lightning_fabric.strategies import DDPStrategy

        return DDPStrategy(timeout=timedelta(seconds=float(trainer_cfg.rendezvous_timeout_s)))
    return trainer_cfg.strategy


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Fabric's seeding (Python, NumPy, torch), plus deterministic kernels when asked."""
    from lightning_fabric.utilities.seed import seed_everything as fabric_seed

    fabric_seed(seed % 2**32, verbose=False)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def run_in_folder(trainer_cfg, out: Path, overwrite: bool, resume: bool, finished: str,
                  body: Callable[[Fabric, Path], Path], extendable: bool = False) -> Path:
    """Launch Fabric, ready the run folder on rank 0 (refuse / resume / overwrite), hold its lock, run body."""
    fabric = make_fabric(trainer_cfg)
    rank0 = fabric.global_rank == 0
    out = Path(out)
    if rank0:
        prepare_run(out, overwrite, resume, finished, extendable)
    fabric.barrier()
    try:
        with RunLock(out) if rank0 else nullcontext():
            if rank0:
                remove_stale_tmp(out)  # half-written files of a killed run; the lock makes them ours
            return body(fabric, out)
    except RuntimeError as e:
        if fabric.world_size > 1 and any(s in str(e) for s in _PEER_LOST):
            raise SbsslError(f"{out}: rank {fabric.global_rank} lost another DDP process (it crashed or was killed: "
                             f"{str(e).splitlines()[0][:100]}); the last checkpoint is kept, rerun the same command "
                             f"to resume") from None
        raise


def finite_on_all_ranks(fabric: Fabric, loss: torch.Tensor) -> bool:
    """Ranks must agree to skip or stop on a NaN/inf loss, or the others would wait forever in DDP's all-reduce."""
    bad = (~torch.isfinite(loss.detach())).float()
    return not bool(fabric.all_reduce(bad, reduce_op="max"))
