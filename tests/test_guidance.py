"""Classifier guidance moves latents toward (or away from) a probe's target label."""

import math

import pytest
import torch

from dglm.attributes.probes import Probe
from dglm.constraints import Constraint, as_constraints, parse_constraint
from dglm.errors import DglmError
from dglm.seeding import sample_generators
from dglm.stages.encoder import LatentNormalizer
from dglm.stages.guidance import Guide


def toy_probe(dim=16):
    torch.manual_seed(0)
    card = {"name": "toy", "labels": ["no", "yes"], "encoder": "toy", "encoder_dim": dim, "weights": "toy.safetensors"}
    return Probe(card, torch.randn(2, dim) * 3, torch.zeros(2))


def target_logit(probe, normalizer, latents):
    logits = probe(normalizer.to_embedding(latents))
    return logits[:, 1] - logits[:, 0]


@pytest.mark.parametrize("weight", [1.0, -1.0])
def test_guidance_moves_the_probe_logit_toward_the_target(weight):
    probe, normalizer = toy_probe(), LatentNormalizer(16)
    guide = Guide([(probe, 1, weight)], normalizer, mc_draws=8)
    latents = torch.randn(6, 16)
    before = target_logit(probe, normalizer, latents)
    stepped = latents + 0.1 * guide.gradient(latents, blur=0.1, generators=sample_generators(range(6)))
    after = target_logit(probe, normalizer, stepped)
    assert (torch.sign(after - before) == weight).all()


def test_composed_guidance_is_the_sum_of_its_terms():
    probe, normalizer = toy_probe(), LatentNormalizer(16)
    latents = torch.randn(4, 16)
    one = Guide([(probe, 1, 1.0)], normalizer).log_prob(latents)
    both = Guide([(probe, 1, 1.0), (probe, 0, 2.0)], normalizer).log_prob(latents)
    other = Guide([(probe, 0, 1.0)], normalizer).log_prob(latents)
    assert torch.allclose(both, one + 2 * other, atol=1e-5)


def test_parse_constraint_forms():
    assert parse_constraint("sentiment=positive") == Constraint("sentiment", "positive", 1.0)
    assert parse_constraint("topic=sport:-2.5") == Constraint("topic", "sport", -2.5)


@pytest.mark.parametrize("spec", ["sentiment", "=positive", "sentiment=", "sentiment=positive:much", "topic=sport:nan"])
def test_parse_constraint_rejects_malformed(spec):
    with pytest.raises(DglmError):
        parse_constraint(spec)


def test_as_constraints_accepts_dicts_lists_and_objects():
    assert as_constraints(None) == []
    assert as_constraints({"sentiment": "positive", "topic": ("sport", 2)}) == [
        Constraint("sentiment", "positive", 1.0), Constraint("topic", "sport", 2.0)]
    assert as_constraints(["sentiment=negative", Constraint("topic", "tech")]) == [
        Constraint("sentiment", "negative", 1.0), Constraint("topic", "tech", 1.0)]
    with pytest.raises(DglmError, match="must be a finite number, got 'lots'"):
        as_constraints({"sentiment": ("positive", "lots")})


@pytest.mark.parametrize("build, message", [
    (lambda: Constraint("sentiment", "positive", float("nan")), "must be a finite number, got nan"),
    (lambda: Constraint("sentiment", "positive", float("-inf")), "must be a finite number, got -inf"),
    (lambda: Constraint("sentiment", "positive", True), "must be a finite number, got True"),
    (lambda: Constraint("", "positive"), "an attribute's name must be non-empty text"),
    (lambda: Constraint("sentiment", None), "the label of attribute 'sentiment' must be non-empty text, got None"),
    (lambda: Constraint("sentiment", "pos\udcffitive"), "the byte 0xff at character 3 is not UTF-8"),
    (lambda: Constraint.toward("a storm \ud800"), r"a phrase .* character 8 is a lone surrogate \(\\ud800\)"),
    (lambda: as_constraints({"sentiment": 2.0}), r"must map to a label or a \(label, weight\) pair, got 2.0"),
    (lambda: as_constraints({"sentiment": ("positive", 1.0, 3)}), "must map to a label or a"),
    (lambda: as_constraints([5]), "an attribute must be a Constraint or a 'NAME=LABEL"),
    (lambda: as_constraints(5), "attributes must be a dict, a list of constraints"),
])
def test_constraints_built_any_way_are_checked(build, message):
    with pytest.raises(DglmError, match=message):
        build()


@pytest.mark.parametrize("weight", [1.0, -1.0, 2.0])
def test_projection_reaches_the_target_and_moves_no_further_than_needed(weight):
    probe, normalizer = toy_probe(), LatentNormalizer(16)
    guide = Guide([(probe, 1, weight)], normalizer, mode="project", target=0.9)
    latents = torch.randn(32, 16)
    projected = latents + guide.delta(latents, scale=1.0, blur=0.5, generators=sample_generators(range(32)))
    wanted = abs(weight) * math.log(0.9 / 0.1)
    signed = torch.sign(torch.tensor(weight)) * target_logit(probe, normalizer, projected)
    assert (signed >= wanted - 1e-2).all()
    already = torch.sign(torch.tensor(weight)) * target_logit(probe, normalizer, latents) >= wanted
    assert already.any() and (~already).any()
    assert torch.equal(projected[already], latents[already])  # rows already on target stay where they are
    assert (signed[~already] <= wanted + 0.2).all()  # the others land on the margin, not past it


def test_projection_meets_two_targets_at_once():
    probe, normalizer = toy_probe(), LatentNormalizer(16)
    torch.manual_seed(1)
    other = Probe({**probe.card, "name": "other"}, torch.randn(2, 16) * 3, torch.zeros(2))
    guide = Guide([(probe, 1, 1.0), (other, 0, 1.0)], normalizer, mode="project", target=0.8, projection_passes=6)
    latents = torch.randn(16, 16)
    projected = latents + guide.delta(latents, 1.0, 0.5, sample_generators(range(16)))
    assert (target_logit(probe, normalizer, projected) >= math.log(4) - 0.05).all()
    assert (-target_logit(other, normalizer, projected) >= math.log(4) - 0.05).all()


def test_margin_guidance_stops_pushing_a_satisfied_target():
    probe, normalizer = toy_probe(), LatentNormalizer(16)
    latents = torch.randn(64, 16)
    probability = torch.sigmoid(target_logit(probe, normalizer, latents))
    guide = Guide([(probe, 1, 1.0)], normalizer, mc_draws=1, mode="margin", target=0.7)
    gradient = guide.gradient(latents, blur=0.0, generators=sample_generators(range(64)))
    pushed = gradient.norm(dim=-1) > 0
    assert torch.equal(pushed, probability < 0.7)
    plain = Guide([(probe, 1, 1.0)], normalizer, mc_draws=1).gradient(latents, 0.0, sample_generators(range(64)))
    assert (plain.norm(dim=-1) > 0).all()


def test_an_unknown_guidance_mode_names_the_modes():
    probe, normalizer = toy_probe(), LatentNormalizer(16)
    with pytest.raises(DglmError, match="unknown guidance mode 'nearest'; modes: gradient, margin, project"):
        Guide([(probe, 1, 1.0)], normalizer, mode="nearest")


def test_the_anchor_pulls_a_guided_latent_back_towards_the_prefix():
    probe, normalizer = toy_probe(), LatentNormalizer(16)
    latents, prefixes = torch.randn(8, 16), torch.randn(8, 16)
    generators = lambda: sample_generators(range(8))
    free = Guide([(probe, 1, 1.0)], normalizer, mc_draws=1).delta(latents, 1.0, 0.0, generators(), prefixes)
    anchored = Guide([(probe, 1, 1.0)], normalizer, mc_draws=1, anchor=5.0).delta(latents, 1.0, 0.0, generators(), prefixes)
    closeness = lambda delta: (normalizer.to_embedding(latents + 0.01 * delta) * normalizer.to_embedding(prefixes)).sum(-1)
    assert (closeness(anchored) > closeness(free)).all()
