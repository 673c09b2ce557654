"""Samplers: DDIM reproduces the samples of the sampler it replaced, DPM-Solver++ (2M) is a true second-order
solver, and a plugin can add a sampler."""

import json
from pathlib import Path

import pytest
import torch
from conftest import copy_in_format_1
from safetensors import safe_open
from safetensors.torch import load_file

import dglm
from dglm.attributes.probes import Probe
from dglm.config import DenoiserConfig
from dglm.errors import DglmError
from dglm.pipeline import Pipeline
from dglm.plugins import get_plugins, get_sampler, get_samplers
from dglm.seeding import sample_generators
from dglm.stages.denoiser import Denoiser
from dglm.stages.encoder import LatentNormalizer
from dglm.stages.guidance import BatchGuidance, Guide
from dglm.stages.samplers import DDIMSampler, DPMSolverPlusPlus2M, diffuse
from dglm.stages.schedule import CosineSchedule

REFERENCE = Path(__file__).parent / "fixtures" / "ddim-reference.safetensors"


def test_ddim_reproduces_the_samples_recorded_before_samplers_became_objects():
    """Recorded by `dglm.sampler.sample_latents` at commit bdc60e0, on a tiny random denoiser: plain, guided
    (two weighted terms), prefix-guided, and both."""
    tensors = load_file(str(REFERENCE))
    with safe_open(str(REFERENCE), "pt") as handle:
        meta = handle.metadata()
    config = DenoiserConfig(**json.loads(meta["denoiser_config"]))
    denoiser = Denoiser(16, config).eval()
    denoiser.load_state_dict({k[len("denoiser."):]: v for k, v in tensors.items() if k.startswith("denoiser.")})
    normalizer = LatentNormalizer(16)
    normalizer.mean.copy_(tensors["normalizer.mean"])
    normalizer.std.copy_(tensors["normalizer.std"])
    probe = Probe({"name": "toy", "labels": ["a", "b"], "encoder": "x", "encoder_dim": 16},
                  tensors["probe.weight"], tensors["probe.bias"])
    terms = [(probe, index, weight) for index, weight in json.loads(meta["terms"])]
    seeds = tensors["seeds"].tolist()
    for name, (scale, prefix_guidance) in json.loads(meta["cases"]).items():
        guide = Guide(terms, normalizer, mc_draws=int(meta["mc_draws"])) if scale else None
        sampler = DDIMSampler(CosineSchedule(float(meta["schedule_shift"])))
        latents = diffuse(denoiser, sampler, tensors["prefix_latents"], sample_generators(seeds), int(meta["steps"]),
                          guidance=BatchGuidance.same(guide, scale, len(seeds)), prefix_guidance=prefix_guidance)
        # Equal up to float rounding: another CPU's kernels round differently (about 1e-6 seen on latents of
        # size 3-5); a change to the sampler's arithmetic moves them by far more.
        torch.testing.assert_close(latents, tensors[f"expected.{name}"], rtol=0, atol=1e-5, msg=name)


class GaussianDenoiser(torch.nn.Module):
    """The exact v-predictor for data x ~ N(mean, scale^2 I): the probability-flow ODE then has a closed form."""

    def __init__(self, mean: torch.Tensor, scale: float):
        super().__init__()
        self.mean, self.scale = mean, scale

    def clean(self, z: torch.Tensor, alpha, sigma) -> torch.Tensor:
        return self.mean + alpha * self.scale**2 / (alpha**2 * self.scale**2 + sigma**2) * (z - alpha * self.mean)

    def forward(self, z, logsnr, prefix, self_cond=None, prefix_mask=None):
        alpha, sigma = torch.sigmoid(logsnr).sqrt()[:, None], torch.sigmoid(-logsnr).sqrt()[:, None]
        return (alpha * z - self.clean(z, alpha, sigma)) / sigma


def exact_final_estimate(model: GaussianDenoiser, schedule: CosineSchedule, noise: torch.Tensor, steps: int):
    """The clean estimate at the last step's time on the exact ODE path from `noise` at t = 1."""
    def alpha_sigma_spread(t):
        alpha, sigma = schedule.alpha_sigma(torch.tensor(t))
        return alpha, sigma, (alpha**2 * model.scale**2 + sigma**2).sqrt()

    alpha, sigma, spread = alpha_sigma_spread(1.0)
    u = (noise - alpha * model.mean) / spread
    alpha, sigma, spread = alpha_sigma_spread(1.0 / steps)
    return model.clean(alpha * model.mean + spread * u, alpha, sigma)


@pytest.mark.parametrize("steps", [5, 10])
def test_dpm_solver_follows_the_exact_ode_far_closer_than_ddim(steps):
    torch.manual_seed(0)
    model = GaussianDenoiser(torch.randn(8), scale=0.5)
    schedule = CosineSchedule()
    prefix, seeds = torch.zeros(64, 8), list(range(64))
    noise = torch.stack([torch.randn(8, generator=g) for g in sample_generators(seeds)])
    exact = exact_final_estimate(model, schedule, noise, steps)
    errors = {}
    for sampler in (DDIMSampler(schedule), DPMSolverPlusPlus2M(schedule)):
        latents = diffuse(model, sampler, prefix, sample_generators(seeds), steps)
        errors[sampler.name] = (latents - exact).norm(dim=-1).mean().item()
    assert errors["dpmsolver++"] < 0.5 * errors["ddim"], errors


def test_samplers_are_chosen_by_name_and_unknown_ones_are_listed(tiny_pipeline):
    assert {"ddim", "dpmsolver++"} <= set(get_samplers())
    samples = tiny_pipeline.generate("The movie", num_samples=2, seed=3, sampler="dpmsolver++")
    assert len(samples) == 2 and all(isinstance(s.continuation, str) for s in samples)
    with pytest.raises(DglmError, match=r"unknown sampler 'euler'; known samplers: ddim, dpmsolver\+\+"):
        tiny_pipeline.generate("The movie", sampler="euler")


class RenamedDDIM(DDIMSampler):
    """A sampler an outside plugin might add: DDIM under another name, so its samples are DDIM's."""

    name = "plugin-ddim"


class SamplerPlugin:
    @dglm.hookimpl
    def register_samplers(self, register):
        register(RenamedDDIM)


def test_a_plugin_registers_a_sampler_and_plugins_lists_its_hooks(tiny_pipeline, capsys):
    from dglm.cli import main

    dglm.register_plugin(SamplerPlugin(), name="sampler-plugin")
    try:
        assert get_samplers()["plugin-ddim"] is RenamedDDIM
        by_plugin = tiny_pipeline.generate("The film", num_samples=2, seed=5, sampler="plugin-ddim")
        by_ddim = tiny_pipeline.generate("The film", num_samples=2, seed=5, sampler="ddim")
        assert [s.text for s in by_plugin] == [s.text for s in by_ddim]
        info = {plugin.name: plugin for plugin in get_plugins()}["sampler-plugin"]
        assert info.hooks == ["register_samplers"] and info.samplers == ["plugin-ddim"]
        assert main(["plugins"]) == 0
        assert ("sampler-plugin: hooks register_samplers; attributes none; samplers plugin-ddim; methods none"
                in capsys.readouterr().out)
    finally:
        dglm.unregister_plugin("sampler-plugin")
    assert "plugin-ddim" not in get_samplers()  # the registry follows the plugins


def test_a_plugin_sampler_that_is_not_a_sampler_is_skipped_with_a_warning(capsys):
    class BadPlugin:
        @dglm.hookimpl
        def register_samplers(self, register):
            register(object)

    dglm.register_plugin(BadPlugin(), name="bad-sampler-plugin")
    try:
        assert set(get_samplers()) == {"ddim", "dpmsolver++"}
        assert "plugin 'bad-sampler-plugin' failed to load and is skipped" in capsys.readouterr().err
        with pytest.raises(DglmError, match="not a named dglm.interfaces.Sampler subclass"):
            get_sampler("plugin-ddim")
    finally:
        dglm.unregister_plugin("bad-sampler-plugin")


def test_a_checkpoint_in_the_format_before_samplers_loads_and_samples_with_ddim(tiny_checkpoint, tmp_path):
    folder = tmp_path / "format-1"
    data = copy_in_format_1(tiny_checkpoint, folder)
    migrated = Pipeline.from_pretrained(folder).config
    assert migrated.diffusion.sampler == "ddim" and migrated.decoding.max_new_tokens == 6
    (folder / "config.json").write_text(json.dumps({**data, "format_version": 9}))
    with pytest.raises(DglmError, match="format_version 9; this dglm reads formats 1 to 2"):
        Pipeline.from_pretrained(folder)
