"""Attributes from a phrase: `Constraint.toward` / `--toward` steer towards a phrase's embedding, with no data."""

import http.client
import json

import pytest
import torch
import torch.nn.functional as F

from dglm.attributes.probes import Probe
from dglm.cli import main
from dglm.constraints import PHRASE, Constraint, parse_phrase
from dglm.errors import DglmError
from dglm.seeding import sample_generators
from dglm.stages.encoder import LatentNormalizer
from dglm.stages.guidance import BatchGuidance, Guide, PhraseBound, phrase_bounds


@pytest.mark.parametrize("spec, sign, expected", [
    ("a storm at sea", 1.0, ("a storm at sea", 1.0)),
    ("a storm at sea:2.5", 1.0, ("a storm at sea", 2.5)),
    ("violence:0.5", -1.0, ("violence", -0.5)),
    ("note: bring snacks", 1.0, ("note: bring snacks", 1.0)),  # a colon whose tail is no number belongs to the text
])
def test_a_phrase_parses_with_an_optional_weight(spec, sign, expected):
    constraint = parse_phrase(spec, sign)
    assert (constraint.attribute, constraint.label, constraint.weight) == (PHRASE, *expected)


def test_toward_and_away_are_phrase_constraints_of_opposite_sign():
    assert Constraint.toward("a wedding", 2.0) == Constraint(PHRASE, "a wedding", 2.0)
    assert Constraint.away("a wedding") == Constraint(PHRASE, "a wedding", -1.0)
    with pytest.raises(DglmError, match=r"a phrase \(--toward / --away.*must be non-empty text"):
        Constraint.toward("  ")


@pytest.mark.parametrize("weight, cosine, at_least", [(1.0, 0.4, True), (0.5, 0.2, True), (2.0, 0.8, True),
                                                      (5.0, 0.95, True), (-1.0, 0.0, False), (-0.5, 0.2, False),
                                                      (-2.0, -0.4, False)])
def test_a_phrase_weight_sets_a_cosine_bound(weight, cosine, at_least):
    bound = PhraseBound.from_weight(torch.ones(3), weight, phrase_cosine=0.4)
    assert (bound.cosine, bound.at_least) == (pytest.approx(cosine), at_least)


@pytest.mark.parametrize("at_least", [True, False])
def test_a_phrase_bound_turns_only_the_rows_outside_it_and_just_onto_it(at_least):
    torch.manual_seed(0)
    phrase = F.normalize(torch.randn(16), dim=0)
    embeddings = F.normalize(torch.randn(64, 16) + 0.4 * phrase, dim=-1)
    bound = PhraseBound(phrase, 0.3, at_least)
    before, turned = embeddings @ phrase, bound.turn(embeddings)
    after = turned @ phrase
    outside = before < 0.3 if at_least else before > 0.3
    assert outside.any() and (~outside).any()
    assert torch.equal(turned[~outside], embeddings[~outside])
    assert torch.allclose(after[outside], torch.full_like(after[outside], 0.3), atol=1e-5)
    assert torch.allclose(turned.norm(dim=-1), torch.ones(64), atol=1e-5)
    # what the phrase does not measure keeps its direction: the orthogonal parts are parallel
    rest = lambda e: F.normalize(e - (e @ phrase)[:, None] * phrase, dim=-1)
    assert torch.allclose((rest(turned) * rest(embeddings)).sum(-1), torch.ones(64), atol=1e-4)


def test_a_phrase_bound_holds_beside_a_probe_pushing_far():
    torch.manual_seed(0)
    normalizer = LatentNormalizer(16)
    normalizer.mean.copy_(0.1 * torch.randn(16))
    normalizer.std.copy_(torch.rand(16) + 0.5)
    card = {"name": "toy", "labels": ["no", "yes"], "encoder": "toy", "encoder_dim": 16, "weights": "toy.safetensors"}
    probe = Probe(card, torch.randn(2, 16) * 3, torch.zeros(2))
    phrases = [PhraseBound(F.normalize(torch.randn(16), dim=0), 0.4, True),
               PhraseBound(F.normalize(torch.randn(16), dim=0), 0.1, False)]
    guide = Guide([(probe, 1, 1.0)], normalizer, mc_draws=1, phrases=phrases, projection_passes=8)
    latents = torch.randn(32, 16)
    moved = latents + guide.delta(latents, 256.0, 0.0, sample_generators(range(32)))
    embeddings = normalizer.to_embedding(moved)
    assert (embeddings @ phrases[0].embedding >= 0.4 - 1e-3).all()
    assert (embeddings @ phrases[1].embedding <= 0.1 + 1e-3).all()
    probe_only = latents + Guide([(probe, 1, 1.0)], normalizer, mc_draws=1).delta(latents, 256.0, 0.0,
                                                                                  sample_generators(range(32)))
    assert not torch.allclose(moved, probe_only)


def test_guidance_towards_a_phrase_moves_the_proposal_towards_its_embedding(tiny_pipeline):
    prefixes = ["The movie"] * 16
    phrase = "a football match in the rain"
    target = tiny_pipeline.encoder.encode([phrase])[0]

    def closeness(constraints):
        diffusion = tiny_pipeline.config.diffusion.updated(guidance_scale=8.0)
        guide = tiny_pipeline.make_guide(constraints, diffusion)
        latents = tiny_pipeline.propose_latents(prefixes, sample_generators(range(16)),
                                                BatchGuidance.same(guide, 8.0, 16), diffusion)
        return float((tiny_pipeline.parts.normalizer.to_embedding(latents) @ target).mean())

    unguided = closeness([])
    assert closeness([Constraint.toward(phrase, 4.0)]) > unguided + 0.05
    assert closeness([Constraint.away(phrase, 4.0)]) < unguided - 0.05


def test_phrases_compose_with_probes_from_python_the_cli_and_the_server(tiny_pipeline, tiny_checkpoint, toy_plugin, capsys):
    from dglm.server import ServerLimits, create_app, serve_in_thread

    asked = [Constraint.toward("a quiet evening", 2.0), Constraint("toy_sentiment", "positive")]
    python = [s.continuation for s in tiny_pipeline.generate("The movie", asked, num_samples=2, seed=4, max_new_tokens=5)]
    assert main(["generate", "The movie", "--model", str(tiny_checkpoint), "--toward", "a quiet evening:2",
                 "--attr", "toy_sentiment=positive", "-n", "2", "--seed", "4", "--max-new-tokens", "5",
                 "--format", "jsonl"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["continuation"] for line in lines] == python
    assert {"attribute": "phrase", "label": "a quiet evening", "weight": 2.0} in lines[0]["constraints"]
    with serve_in_thread(create_app(tiny_pipeline, "tiny", ServerLimits())) as url:
        host, port = url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        body = {"prompt": "The movie", "n": 2, "seed": 4, "max_tokens": 5,
                "attributes": [{"text": "a quiet evening", "weight": 2.0}, "toy_sentiment=positive"]}
        connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        answer = json.loads(connection.getresponse().read())
    assert [c["text"] for c in answer["choices"]] == python
    probe_only = [s.continuation for s in tiny_pipeline.generate("The movie", [Constraint("toy_sentiment", "positive")],
                                                                 num_samples=2, seed=4, max_new_tokens=5)]
    assert python != probe_only  # the phrase took part


def test_a_phrase_at_weight_zero_asks_nothing_and_one_asked_both_ways_is_refused(tiny_pipeline):
    assert phrase_bounds([Constraint.toward("a wedding", 0.0), Constraint.away("rain", 0.0)], tiny_pipeline.encoder, 0.4,
                         "cpu") == []
    with pytest.raises(DglmError, match="phrase 'a wedding' is asked both towards and away"):
        tiny_pipeline.make_guide([Constraint.toward("a wedding"), Constraint.away("a wedding", 0.5)])


def test_a_proposal_on_the_phrase_axis_is_left_as_it_is():
    phrase = F.normalize(torch.randn(16), dim=0)
    on_axis = torch.stack([phrase, -phrase])
    assert torch.equal(PhraseBound(phrase, 0.4, True).turn(on_axis)[1], -phrase)
    assert torch.equal(PhraseBound(phrase, 0.0, False).turn(on_axis)[0], phrase)


def test_fudge_refuses_a_phrase_rather_than_ignoring_it(tiny_pipeline):
    from dglm.evaluation.baselines import Fudge

    with pytest.raises(DglmError, match="a phrase is no probe"):
        Fudge(tiny_pipeline).continue_rows([("The movie", 0)], [Constraint.toward("a wedding")], 3)
