"""Training bookkeeping without pickles: resumable states in safetensors + JSON, and the EMA."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dglm.errors import DglmError


class EMA:
    """Exponential moving average of a module's parameters (the weights that get shipped)."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {name: p.detach().clone() for name, p in module.named_parameters()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for name, p in module.named_parameters():
            self.shadow[name].lerp_(p.detach(), 1 - self.decay)

    def copy_to(self, module: nn.Module) -> None:
        with torch.no_grad():
            for name, p in module.named_parameters():
                p.copy_(self.shadow[name])


def save_training_state(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None,
                        step: int, losses: list[float], seconds: float, total_steps: int) -> None:
    """Write PATH.safetensors (weights, EMA, optimizer moments) and PATH.json (step, losses, training time, groups,
    and the run's total steps, which fixes its learning-rate schedule)."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.cpu().contiguous() for k, v in ema.shadow.items()})
    optimizer_state = optimizer.state_dict()
    for index, state in optimizer_state["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    weights = path.with_suffix(".safetensors")
    partial = weights.with_name(weights.name + ".partial")
    save_file(tensors, str(partial))
    partial.replace(weights)  # never leave a half-written state behind
    meta = {"step": step, "total_steps": total_steps, "losses": losses, "seconds": seconds,
            "param_groups": optimizer_state["param_groups"]}
    meta_path = path.with_suffix(".json")
    partial_meta = meta_path.with_name(meta_path.name + ".partial")
    partial_meta.write_text(json.dumps(meta))
    partial_meta.replace(meta_path)


def has_training_state(path: Path) -> bool:
    """Whether save_training_state has written a whole state at `path` (it writes the JSON last)."""
    return path.with_suffix(".safetensors").is_file() and path.with_suffix(".json").is_file()


def load_training_state(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer,
                        ema: EMA | None, total_steps: int) -> tuple[int, list[float], float]:
    """Restore a state written by save_training_state; return (step, losses, seconds trained). No state: (0, [], 0).

    A state saved by a run of another length is refused: resuming it would bend the learning-rate schedule."""
    if not has_training_state(path):
        return 0, [], 0.0
    weights, meta_path = path.with_suffix(".safetensors"), path.with_suffix(".json")
    try:
        tensors, meta = load_file(str(weights)), json.loads(meta_path.read_text())
        saved_total = meta.get("total_steps", total_steps)  # states written before the total was recorded
        if saved_total != total_steps:
            raise DglmError(f"{weights} was saved by a run of {saved_total} steps, but the config asks for "
                            f"{total_steps}; one learning-rate schedule spans the whole run, so keep steps at "
                            f"{saved_total} or start a new run in another run_dir")
        module.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if ema is not None:
            device = next(module.parameters()).device
            ema.shadow = {k[4:]: v.to(device) for k, v in tensors.items() if k.startswith("ema.")}
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (RuntimeError, ValueError, KeyError) as error:
        raise DglmError(f"cannot resume from {weights}: {str(error).splitlines()[0]}; "
                        "delete it to start over") from None
    return int(meta["step"]), list(meta["losses"]), float(meta.get("seconds", 0.0))
