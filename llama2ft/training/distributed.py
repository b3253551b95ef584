"""Helpers for `accelerate launch` / `torchrun`: one shared run folder, main-process-only writes and a
clean teardown of the process group."""
from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Iterator

import torch
import torch.distributed as dist

from llama2ft.core.errors import UserError


def check_backend() -> None:
    """FSDP and DeepSpeed need accelerator devices: say so before anything loads (on CPU, accelerate
    otherwise stops inside the Trainer with "no available devices found")."""
    for name, variable in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED")):
        if os.environ.get(variable, "").lower() == "true" and not torch.cuda.is_available():
            raise UserError(f"{name} (accelerate launch with its config) needs GPUs and none is available; on CPU "
                            "use configs/accelerate/ddp.yaml (data parallel over gloo)")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's index on its machine (its GPU)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def say(msg: str) -> None:
    """Print once for the whole run (on the main process)."""
    if is_main_process():
        print(msg, flush=True)


def _init_process_group() -> None:
    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if attempt == "0":
        dist.init_process_group(backend)
        return
    # workers that torchrun restarted: the launcher's store still holds the first attempt's addresses under the
    # same keys (gloo then connects to the dead workers' ports); each attempt gets keys of its own
    store, rank, size = next(dist.rendezvous("env://"))
    dist.init_process_group(backend, store=dist.PrefixStore(f"llama2ft-attempt-{attempt}", store), rank=rank,
                            world_size=size)


def pin_hydra_dirs(argv: list[str], task_name: str) -> list[str]:
    """Hydra computes its own `${now:...}` run folder in every process; under a multi-process launch
    rank 0 picks the folder and broadcasts it so all ranks write to the same place. Ranks other than
    0 also skip writing Hydra's own .hydra/ files and log file. Returns the argv to hand to Hydra."""
    if world_size() <= 1:
        return argv
    _init_process_group()  # accelerate/Trainer reuse this group
    stamp = [datetime.now().strftime("%Y-%m-%d_%H-%M-%S") if is_main_process() else None]
    dist.broadcast_object_list(stamp, src=0)
    argv = list(argv)
    keys = {a.split("=", 1)[0] for a in argv}
    if "hydra.run.dir" not in keys:
        argv.append(f"hydra.run.dir=outputs/{task_name}/{stamp[0]}")
    if "hydra.sweep.dir" not in keys:
        argv.append(f"hydra.sweep.dir=outputs/{task_name}/multirun/{stamp[0]}")
    if not is_main_process():
        argv += ["hydra.output_subdir=null", "hydra/job_logging=disabled"]
    return argv


@contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. builds files); the other ranks run it after, reusing them."""
    if world_size() <= 1 or not dist.is_initialized():
        yield
        return
    if not is_main_process():
        dist.barrier()
    yield
    if is_main_process():
        dist.barrier()


def _active() -> bool:
    return world_size() > 1 and dist.is_available() and dist.is_initialized()


def largest(value: int) -> int:
    """The largest of every rank's `value`, on every rank (one all-reduce): how the ranks agree on a stop."""
    if not _active():
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def from_main(value: Any) -> Any:
    """The main process's `value` on every rank (what it decided, e.g. the checkpoint to resume from)."""
    if not _active():
        return value
    box = [value if is_main_process() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def teardown(clean: bool = True) -> None:
    """Without this, runs on gloo sometimes abort at exit (`terminate called without an active exception`).
    After a failure there is no barrier: the other ranks may never reach it."""
    if dist.is_available() and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()
