"""Snapshots of a training run's weights, and their average.

Small models trained at a high learning rate with small batches wander around the minimum:
two checkpoints 250 steps apart can differ more in what they suggest than in their loss. The
mean of the latest few snapshots of one run (latest weight averaging, Kaddour 2022,
arXiv 2209.14981) sits nearer the middle of that wandering, at no cost at inference.

A snapshot is the model's weights alone (safetensors, about 23 MB for the default model), kept
every --snapshot-every steps beside the run's single resumable checkpoint.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

SNAPSHOT_PATTERN = re.compile(r"weights-(\d+)\.safetensors")


def snapshot_path(directory: Path, step: int) -> Path:
    return directory / f"weights-{step}.safetensors"


def save_snapshot(model: torch.nn.Module, directory: Path, step: int) -> Path:
    path = snapshot_path(directory, step)
    save_model(model, str(path))
    return path


def snapshots(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every snapshot in `directory`, oldest first."""
    found = []
    for path in directory.glob("weights-*.safetensors"):
        match = SNAPSHOT_PATTERN.fullmatch(path.name)
        if match is not None:
            found.append((int(match[1]), path))
    return sorted(found)


def latest_snapshots(directory: Path, count: int) -> list[tuple[int, Path]]:
    """The newest `count` snapshots, oldest first; a clear error when there are fewer."""
    if count < 1:
        raise ValueError(f"an average needs at least one snapshot, not {count}")
    found = snapshots(directory)
    if len(found) < count:
        steps = ", ".join(str(step) for step, _ in found) or "none"
        raise ValueError(
            f"asked to average the last {count} snapshots, but {directory} holds "
            f"{len(found)} (steps: {steps})"
        )
    return found[-count:]


def chosen_snapshots(directory: Path, steps: Sequence[int]) -> list[tuple[int, Path]]:
    """The snapshots at `steps`, oldest first; a clear error naming any step without one."""
    if not steps:
        raise ValueError("an average needs at least one snapshot")
    repeated = sorted(step for step, times in Counter(steps).items() if times > 1)
    if repeated:
        raise ValueError(f"step {', '.join(str(step) for step in repeated)} asked more than once")
    found = dict(snapshots(directory))
    missing = sorted(set(steps) - set(found))
    if missing:
        held = ", ".join(str(step) for step in found) or "none"
        raise ValueError(
            f"no snapshot at step {', '.join(str(step) for step in missing)} in {directory} "
            f"(it holds steps: {held})"
        )
    return [(step, found[step]) for step in sorted(steps)]


def load_average(model: torch.nn.Module, paths: Sequence[Path]) -> None:
    """Set `model`'s weights to the mean of the snapshots at `paths`, summed in float64.

    Each snapshot is loaded into `model` itself, which resolves tied weights the way saving
    them did; `model` is left unchanged if any snapshot does not fit it."""
    if not paths:
        raise ValueError("an average needs at least one snapshot")
    original = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    total: dict[str, torch.Tensor] = {}
    try:
        for path in paths:
            load_model(model, str(path))
            for name, tensor in model.state_dict().items():
                if name in total:
                    total[name] += tensor.double()
                else:
                    total[name] = tensor.double().clone()
    except Exception:
        model.load_state_dict(original)
        raise
    model.load_state_dict(
        {name: (summed / len(paths)).to(original[name].dtype) for name, summed in total.items()}
    )
