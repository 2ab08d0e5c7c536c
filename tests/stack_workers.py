"""Worker functions of tests/test_stacks.py's multi-process tests (they must be importable by a spawned process).

Each worker is ``fn(rank, world_size, port, out_dir, *args)`` as ``torch.multiprocessing.spawn`` calls it (rank
first): one thread, a gloo process group on 127.0.0.1, results written with ``torch.save`` to
``out_dir/<name>_rank<r>.pt`` (no queues).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

SPEC, MODEL, WIDTH, BASE_WIDTH, DEPTH, OPTIMIZER, SEED = "mup", "mupdsl.models.gpt", 64, 32, 2, "adam", 0
GLOBAL_BATCH, STEPS = 8, 3


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of a training step (the same on every rank and in the single-process reference)."""
    from mupdsl.models import gpt

    return gpt.example_batch(GLOBAL_BATCH, seed=100 + step)


def local_batch(step: int, rank: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = global_batch(step)
    n = GLOBAL_BATCH // world_size
    return x[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n]


def loss_of(model, x, y) -> torch.Tensor:
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten())


def compiled_gpt():
    from mupdsl.compile import compile_model

    return compile_model(SPEC, MODEL, width=WIDTH, base_width=BASE_WIDTH, depth=DEPTH, optimizer=OPTIMIZER, seed=SEED)


class default_dtype:
    """``torch.set_default_dtype`` for a block (the model is built in it), put back after."""

    def __init__(self, dtype: str) -> None:
        self.dtype = getattr(torch, dtype)

    def __enter__(self):
        self.saved = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc):
        torch.set_default_dtype(self.saved)
        return False


def reference_training(dtype: str = "float32", steps: int = STEPS) -> dict:
    """Single process, whole global batch: the losses and the final parameters."""
    with default_dtype(dtype):
        compiled = compiled_gpt()
        opt = compiled.optimizer()
        losses = []
        for step in range(steps):
            x, y = global_batch(step)
            opt.zero_grad()
            loss = loss_of(compiled.model, x, y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return {"losses": losses, "params": {n: p.detach().clone() for n, p in compiled.model.named_parameters()},
            "lrs": [g["lr"] for g in opt.param_groups]}


def _setup(rank: int, world_size: int, port: int) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)


def _fully_shard():
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:   # torch < 2.6
        from torch.distributed._composable.fsdp import fully_shard
    return fully_shard


def ddp_worker(rank: int, world_size: int, port: int, out_dir: str, dtypes: tuple[str, ...]) -> None:
    """DDP training of a compiled GPT, each rank on its half of the global batch, once per dtype."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    _setup(rank, world_size, port)
    try:
        result = {}
        for dtype in dtypes:
            with default_dtype(dtype):
                compiled = compiled_gpt()
                ddp = DDP(compiled.model)
                opt = compiled.optimizer()   # the plan's groups over the same Parameter objects DDP reduces
                losses = []
                for step in range(STEPS):
                    x, y = local_batch(step, rank, world_size)
                    opt.zero_grad()
                    loss = loss_of(ddp, x, y)
                    loss.backward()          # DDP averages the two halves' gradients: the global batch's mean
                    opt.step()
                    losses.append(loss.item())
            result[dtype] = {"losses": losses, "lrs": [g["lr"] for g in opt.param_groups],
                             "params": {n: p.detach().clone() for n, p in compiled.model.named_parameters()}}
        torch.save(result, Path(out_dir) / f"ddp_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def fsdp_worker(rank: int, world_size: int, port: int, out_dir: str, dtypes: tuple[str, ...],
                meta_specs: tuple[str, ...]) -> None:
    """FSDP2 on a CPU mesh: (1) training of a compiled GPT sharded per block and at the root, the optimizer built
    after sharding; (2) per spec in ``meta_specs``: a GPT built on meta, the spec applied on meta, sharded,
    ``to_empty`` and ``initialize(..., redraw_defaults=True)`` on its DTensors; the gathered full tensors and the
    outputs on the example batch are written."""
    from torch.distributed.device_mesh import init_device_mesh

    from mupdsl.compile import apply, initialize
    from mupdsl.models import gpt

    _setup(rank, world_size, port)
    fully_shard = _fully_shard()
    try:
        mesh = init_device_mesh("cpu", (world_size,))
        result = {}

        for dtype in dtypes:
            with default_dtype(dtype):
                compiled = compiled_gpt()
                for block in compiled.model.blocks:
                    fully_shard(block, mesh=mesh)
                fully_shard(compiled.model, mesh=mesh)
                opt = compiled.optimizer()   # after sharding: the groups hold the DTensors
                run = {"sharded": [n for n, p in compiled.model.named_parameters() if type(p).__name__ == "DTensor"],
                       "optimized": [type(p).__name__ for g in opt.param_groups for p in g["params"]],
                       "lrs": [g["lr"] for g in opt.param_groups]}
                losses = []
                for step in range(STEPS):
                    x, y = local_batch(step, rank, world_size)
                    opt.zero_grad()
                    loss = loss_of(compiled.model, x, y)
                    loss.backward()          # the reduce-scatter averages over the ranks
                    opt.step()
                    losses.append(loss.item())
                run["losses"] = losses
                run["params"] = {n: p.full_tensor().detach().clone() for n, p in compiled.model.named_parameters()}
            result[dtype] = run

        x, _ = gpt.example_batch(4)
        for spec in meta_specs:
            with torch.device("meta"):
                model, base = gpt.build(WIDTH, DEPTH), gpt.build(BASE_WIDTH, DEPTH)
            plan = apply(spec, model, base=base, example_inputs=(x,), optimizer=OPTIMIZER).plan
            for block in model.blocks:
                fully_shard(block, mesh=mesh)
            fully_shard(model, mesh=mesh)
            model.to_empty(device="cpu")
            initialize(model, plan, seed=SEED, redraw_defaults=True)
            full = {n: p.full_tensor().detach().clone() for n, p in model.named_parameters()}
            local = {n: p.to_local().detach().clone() for n, p in model.named_parameters()}
            with torch.no_grad():    # (the root stays unsharded after its forward: read the shards before)
                out = model(x)
            result[f"meta_{spec}"] = {"full": full, "local": local, "output": out.detach().clone()}
        torch.save(result, Path(out_dir) / f"fsdp_rank{rank}.pt")
    finally:
        dist.destroy_process_group()
