"""`dglm train` on two CPU processes (torchrun): one world of 2, the same weights on both after every step,
different data on each, checkpoints written by the main process only, and a resumed run that continues exactly."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
from conftest import run_two_processes, toy_sentences
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # starts processes or builds a wheel: `-m "not slow"` skips it

# Run by each process: records, per step, a hash of the weights after the optimizer step and of the batch the
# denoiser was given, and every state or checkpoint write, then runs `dglm train` as the command line would.
TRACER = '''
import hashlib, json, os, sys
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
import dglm.stages.denoiser, dglm.training.loop, dglm.training.stages
from dglm.cli import main

log = open(os.path.join(sys.argv[1], "rank%s.jsonl" % os.environ["RANK"]), "a")
def record(**fields):
    log.write(json.dumps(fields) + "\\n"); log.flush()
digest = lambda tensors: hashlib.sha256(b"".join(t.detach().float().cpu().numpy().tobytes() for t in tensors)).hexdigest()
register_optimizer_step_post_hook(lambda opt, args, kwargs: record(
    kind="weights", world=torch.distributed.get_world_size(), hash=digest(p for g in opt.param_groups for p in g["params"])))
forward = dglm.stages.denoiser.Denoiser.forward
def traced_forward(self, z, *args, **kwargs):
    if self.training and torch.is_grad_enabled():  # the training pass, not the self-conditioning one
        record(kind="batch", hash=digest([z]))
    return forward(self, z, *args, **kwargs)
dglm.stages.denoiser.Denoiser.forward = traced_forward
for module, name in ((dglm.training.loop, "save_training_state"), (dglm.training.stages, "save_checkpoint")):
    def traced(*args, _write=getattr(module, name), _name=name, **kwargs):
        record(kind="write", what=_name)
        return _write(*args, **kwargs)
    setattr(module, name, traced)
sys.exit(main(sys.argv[2:]))
'''


def launch(trace: Path, config: Path, *extra: str) -> None:
    tracer = trace / "tracer.py"
    tracer.write_text(TRACER)
    run_two_processes(str(tracer), str(trace), "train", "denoiser", "--config", str(config), *extra)


def read_trace(trace: Path) -> dict[int, dict[str, list]]:
    records = {}
    for rank in (0, 1):
        by_kind = defaultdict(list)
        for line in (trace / f"rank{rank}.jsonl").read_text().splitlines():
            record = json.loads(line)
            by_kind[record["kind"]].append(record)
        records[rank] = by_kind
    return records


def config_for(tmp_path: Path, name: str, tiny_config) -> Path:
    pairs = tmp_path / "pairs.jsonl"
    if not pairs.is_file():
        pairs.write_text("".join(json.dumps({"prefix": s[:12], "continuation": " " + s[12:]}) + "\n"
                                 for s in toy_sentences(64, seed=3)))
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / name / "run"), "output": str(tmp_path / name / "checkpoint"),
        "pipeline": tiny_config.to_dict(), "data": {"train": str(pairs)},
        "denoiser": {"steps": 6, "batch_size": 8, "warmup": 2, "checkpoint_every": 3},
    }))
    (tmp_path / name).mkdir()
    return path


def test_two_process_training_keeps_weights_in_step_splits_data_and_resumes_exactly(tiny_config, tmp_path):
    whole = config_for(tmp_path, "whole", tiny_config)
    launch(tmp_path / "whole", whole)
    trace = read_trace(tmp_path / "whole")
    weights = [[r["hash"] for r in trace[rank]["weights"]] for rank in (0, 1)]
    batches = [[r["hash"] for r in trace[rank]["batch"]] for rank in (0, 1)]
    assert {r["world"] for rank in (0, 1) for r in trace[rank]["weights"]} == {2}
    assert len(weights[0]) == 6 and weights[0] == weights[1], "the processes' weights drifted apart"
    assert len(batches[0]) == 6 and all(a != b for a, b in zip(*batches)), "both processes trained on the same data"
    assert trace[1]["write"] == [] and {r["what"] for r in trace[0]["write"]} == {"save_training_state", "save_checkpoint"}

    legs = config_for(tmp_path, "legs", tiny_config)
    launch(tmp_path / "legs", legs, "--max-steps", "4")
    assert json.loads((tmp_path / "legs" / "run" / "denoiser-state.json").read_text())["step"] == 4
    launch(tmp_path / "legs", legs)
    resumed = read_trace(tmp_path / "legs")
    assert [r["hash"] for r in resumed[0]["weights"]] == weights[0]
    assert load_file(str(tmp_path / "legs" / "checkpoint" / "model.safetensors")).keys() == \
        load_file(str(tmp_path / "whole" / "checkpoint" / "model.safetensors")).keys()
    for key, value in load_file(str(tmp_path / "legs" / "checkpoint" / "model.safetensors")).items():
        assert value.equal(load_file(str(tmp_path / "whole" / "checkpoint" / "model.safetensors"))[key]), key
