"""The parts every Ray Train worker loop of the factory shares (QARM's alignment, LightGCN): an
epoch's steps cut from one permutation for every worker, and resumable per-epoch checkpoints
(rank 0 writes model, optimizer, epoch and loss history; every worker reports)."""

from __future__ import annotations

import json
import os
import sys
import tempfile

import numpy as np
import torch

# Ray Train's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (default 2 s),
# and a worker's ray.train.report waits for that poll: measured on 2 cores, 1.8 s a report (a
# checkpoint or not) and ~50 s for a two-worker TorchTrainer that reports 20 times; at 0.1 s, 0.1 s
# a report and 13 s. The factory's trainers report every epoch (checkpoints) or once (LightGBM).
POLL_INTERVAL_S = "0.1"


def fast_reports() -> None:
    """The controller's poll interval for the trainers started after this (unless the environment
    sets one): read from the driver's environment when a trainer starts its controller."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", POLL_INTERVAL_S)


def shard_steps(perm: np.ndarray, batch: int, world: int, rank: int):
    """This worker's index batches of an epoch: ``perm`` (the same on every worker) cut into
    world x batch steps, every worker taking the same number of steps (a DDP step is collective)."""
    n = len(perm)
    b = max(1, min(batch, n // world))
    for s in range(max(1, n // (b * world))):
        lo = (s * world + rank) * b
        yield perm[lo : lo + b]


def restore(core: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[int, list[dict]]:
    """(first epoch to run, history so far): from the run's last checkpoint, or (0, [])."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if not ckpt:
        return 0, []
    with ckpt.as_directory() as d:
        state = torch.load(os.path.join(d, "state.pt"), weights_only=True)
    core.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    return int(state["epoch"]) + 1, json.loads(state["history"])


def checkpoint(
    core: torch.nn.Module, opt: torch.optim.Optimizer, epoch: int, history: list[dict], every: int, epochs: int
) -> None:
    """After an epoch: every ``every`` epochs and after the last, rank 0 reports a checkpoint and
    the others report the metrics. (A report waits for the Ray Train controller's next poll of
    the workers, ``fast_reports``: between checkpoints nothing is reported; the history carries
    every epoch.)"""
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    if rank == 0:  # progress: one line an epoch on stderr (Ray forwards it to the driver's stderr, the log)
        loss = history[-1].get("loss") if history else None
        line = f"epoch {epoch + 1}/{epochs}" + (f": loss {loss:.6f}" if loss is not None else "")
        print(line, file=sys.stderr, flush=True)
    if (epoch + 1) % every and epoch + 1 < epochs:
        return
    metrics = {**history[-1], "history": json.dumps(history)}
    with tempfile.TemporaryDirectory() as d:
        if rank == 0:
            state = {
                "model": core.state_dict(),
                "opt": opt.state_dict(),
                "epoch": epoch,
                "history": json.dumps(history),
            }
            torch.save(state, os.path.join(d, "state.pt"))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)


def load_final(result, model: torch.nn.Module, name: str) -> list[dict]:
    """Load the trained weights of a finished ``trainer.fit()`` into ``model``; its loss history."""
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {name} finished without a checkpoint: {result.error}")
    with result.checkpoint.as_directory() as d:
        model.load_state_dict(torch.load(os.path.join(d, "state.pt"), weights_only=True)["model"])
    return json.loads(result.metrics["history"]) if result.metrics and "history" in result.metrics else []


def run_torch(loop, data: dict, spec: dict, workers: int, storage: str, name: str):
    """``loop`` on Ray Train: a TorchTrainer with DDP over ``workers`` CPU workers (one intra-op
    thread each), ``data`` in the object store, checkpoints under storage/name (the two newest
    kept; a run of the same name resumes). Returns the finished run's result."""
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    fast_reports()
    trainer = TorchTrainer(
        loop,
        train_loop_config={"data": ray.put(data), "spec": spec, "threads": 1},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(storage_path=storage, name=name, checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    return trainer.fit()
