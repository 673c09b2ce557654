"""Latent particles (the `particles` setting): P proposals a draft run through the diffusion, resampled by the
probes' reading and one kept; one particle is today's proposal, and a proposal still depends on its seed alone."""

from __future__ import annotations

import pytest
import torch

from dglm.constraints import as_constraints
from dglm.errors import DglmError
from dglm.plugins import get_sampler
from dglm.seeding import particle_seed, sample_generators
from dglm.stages.guidance import BatchGuidance
from dglm.stages.particles import Particles


def proposals(pipeline, seeds: list[int], scale: float = 1.0, guided: list[bool] | None = None,
              **settings) -> torch.Tensor:
    diffusion, _ = pipeline.settings(guidance_scale=scale, **settings)
    guide = pipeline.make_guide(as_constraints(["toy_sentiment=positive"]), diffusion)
    guides = [guide if keep else None for keep in guided or [True] * len(seeds)]
    guidance = BatchGuidance(guides, [scale] * len(seeds))
    return pipeline.propose_latents(["The film"] * len(seeds), sample_generators(seeds), guidance, diffusion)


def test_particle_zero_is_the_drafts_own_stream():
    assert particle_seed(7, 0) == 7 and particle_seed(7, 1) != particle_seed(7, 2) != 7


def test_one_particle_is_todays_proposal_and_several_depend_on_the_seed_alone(tiny_pipeline, toy_plugin):
    assert torch.equal(proposals(tiny_pipeline, [3, 4]), proposals(tiny_pipeline, [3, 4], particles=1))
    together = proposals(tiny_pipeline, [3, 4, 5], particles=4)
    alone = proposals(tiny_pipeline, [4], particles=4)
    assert torch.allclose(together[1], alone[0], atol=1e-5)
    assert not torch.allclose(together[1], proposals(tiny_pipeline, [4])[0], atol=1e-3)
    mixed = proposals(tiny_pipeline, [3, 4], guided=[True, False], particles=4)  # an unguided draft draws no weights
    assert torch.allclose(mixed[1], proposals(tiny_pipeline, [4], guided=[False], particles=4)[0], atol=1e-5)
    assert torch.allclose(mixed[0], proposals(tiny_pipeline, [3], particles=4)[0], atol=1e-5)


def test_resampling_keeps_the_particles_the_probe_reads_on_target_and_picks_among_them(tiny_pipeline, toy_plugin):
    diffusion, _ = tiny_pipeline.settings()
    guide = tiny_pipeline.make_guide(as_constraints(["toy_sentiment=positive"]), diffusion)
    sampler = get_sampler("ddim")(tiny_pipeline.schedule)
    sampler.set_timesteps(4)
    swarm = Particles(4, sample_generators([1, 2]), BatchGuidance([guide, guide], [1.0, 1.0]), sampler, 4)
    x0 = torch.randn(8, 32, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.enable_grad():
        point = torch.zeros(1, 32, requires_grad=True)
        (up,) = torch.autograd.grad(guide.log_prob(point).sum(), point)
    on_target = torch.tensor([-1.0, -1.0, 1.0, -1.0, -1.0, 1.0, -1.0, -1.0])  # draft 0's third, draft 1's second
    x0 += 50 * on_target[:, None] * up / up.norm()
    z, resampled = swarm.step(x0.clone(), x0, index=0)
    assert torch.equal(resampled[:4], x0[2].expand(4, -1)) and torch.equal(resampled[4:], x0[5].expand(4, -1))
    assert torch.equal(swarm.pick(resampled), torch.stack([x0[2], x0[5]]))


def test_particles_need_the_ddim_sampler(tiny_pipeline, toy_plugin):
    with pytest.raises(DglmError, match="particles above 1 need the ddim sampler"):
        proposals(tiny_pipeline, [1], particles=2, sampler="dpmsolver++")
    with pytest.raises(DglmError, match="particles"):
        tiny_pipeline.generate("The film", particles=0)


def test_text_with_particles_is_the_same_alone_and_in_a_batch(tiny_pipeline, toy_plugin):
    attributes = ["toy_sentiment=positive"]
    together = tiny_pipeline.generate(["The film", "A day"], attributes, 2, seed=11, particles=3, max_new_tokens=5)
    alone = tiny_pipeline.generate("A day", attributes, 1, seed=13, particles=3, max_new_tokens=5)
    assert together[2].continuation == alone[0].continuation
