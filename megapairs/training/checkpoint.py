"""Training checkpoints without pickles: tensors in safetensors, the rest in JSON.

``OUT/train/checkpoints/step-000100/`` holds

* ``model.safetensors``: the model's trainable state (:meth:`state_tensors`);
* ``optimizer.safetensors``: every tensor of the optimiser's state (``state.<param>.<name>``)
  and the RNG states (``rng.cpu``, ``rng.cuda.<i>``);
* ``trainer.json``: the step, the run's fingerprint, the optimiser's parameter groups and the
  scheduler's state.

A checkpoint is built in a temporary folder and renamed into place, so a kill leaves either
the whole checkpoint or none. Restoring one gives back every bit the next step depends on,
which is what makes ``megapairs train --resume`` repeat the uninterrupted loss curve.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from ..pipeline.layout import atomic_folder

__all__ = ["latest", "load", "save"]

_NAME = re.compile(r"^step-(\d{6,})$")


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    state = optimizer.state_dict()
    tensors = {}
    for pid, entries in state["state"].items():
        for name, value in entries.items():
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value)
            tensors[f"state.{pid}.{name}"] = value.detach().cpu().contiguous()
    return tensors, state["param_groups"]


def save(folder: Path, step: int, model, optimizer: torch.optim.Optimizer, scheduler, fingerprint: str,
         keep: int) -> Path:
    """Write the checkpoint of ``step`` under ``folder`` and keep the ``keep`` newest."""
    from safetensors.torch import save_file

    path = folder / f"step-{step:06d}"
    tensors, groups = _optimizer_tensors(optimizer)
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i in range(torch.cuda.device_count()):
            tensors[f"rng.cuda.{i}"] = torch.cuda.get_rng_state(i)
    trainer = {"step": step, "fingerprint": fingerprint, "param_groups": groups,
               "scheduler": scheduler.state_dict()}
    with atomic_folder(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_tensors().items()},
                  str(tmp / "model.safetensors"))
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "trainer.json").write_text(json.dumps(trainer, indent=1) + "\n", encoding="utf-8")
    for old in sorted(_steps(folder))[:-keep]:
        shutil.rmtree(folder / f"step-{old:06d}", ignore_errors=True)
    return path


def _steps(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return [int(m.group(1)) for p in folder.iterdir() if p.is_dir() and (m := _NAME.match(p.name))
            and (p / "trainer.json").is_file()]


def latest(folder: Path) -> Path | None:
    """The newest complete checkpoint under ``folder``, or None."""
    steps = _steps(folder)
    return folder / f"step-{max(steps):06d}" if steps else None


def load(path: Path, model, optimizer: torch.optim.Optimizer, scheduler) -> dict:
    """Restore ``model``, ``optimizer``, ``scheduler`` and the RNGs from ``path``; returns
    its ``trainer.json``."""
    from safetensors.torch import load_file

    try:
        trainer = json.loads((path / "trainer.json").read_text(encoding="utf-8"))
        weights = load_file(str(path / "model.safetensors"))
        tensors = load_file(str(path / "optimizer.safetensors"))
    except (OSError, ValueError) as e:
        raise ValueError(f"checkpoint {path} is damaged ({e}); delete it to resume from the one before") from None
    device = next(iter(model.parameters())).device
    model.load_state_tensors({k: v.to(device) for k, v in weights.items()})
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value if name == "step" else value.to(device)
    optimizer.load_state_dict({"state": state, "param_groups": trainer["param_groups"]})
    scheduler.load_state_dict(trainer["scheduler"])
    torch.set_rng_state(tensors["rng.cpu"])
    for key, value in tensors.items():
        if key.startswith("rng.cuda.") and torch.cuda.is_available():
            torch.cuda.set_rng_state(value, int(key.rsplit(".", 1)[1]))
    return trainer
