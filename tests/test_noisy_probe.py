"""Noise-conditioned classifiers (the `guidance_classifier` setting): trained on noised embeddings, stored beside an
attribute's linear probe, loaded with it, and guiding in its place when asked."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import toy_sentiment

import dglm
from dglm.attributes.noisy_probe import NOISE_KIND
from dglm.attributes.probes import load_probe
from dglm.cli import main
from dglm.errors import DglmError
from dglm.seeding import sample_generators
from dglm.stages.guidance import BatchGuidance


@pytest.fixture(scope="module")
def noisy_probe_dir(tiny_pipeline, toy_probe_dir, tmp_path_factory):
    """The toy probe's folder with a noise-conditioned classifier trained beside it, through the CLI."""
    folder = tmp_path_factory.mktemp("noisy") / "probes"
    shutil.copytree(toy_probe_dir, folder)
    texts, labels = toy_sentiment(120)
    data = folder / "toy.csv"
    data.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in zip(texts, labels)))
    encoder = str(tiny_pipeline.config.encoder)
    assert main(["classifier", "train", "toy_sentiment", "--data", str(data), "--encoder", encoder, "--out",
                 str(folder), "--kind", NOISE_KIND, "--steps", "150"]) == 0
    return folder


def test_the_classifier_reads_clean_text_and_less_as_noise_grows(noisy_probe_dir):
    accuracy = json.loads((noisy_probe_dir / "toy_sentiment-noisy.json").read_text())["held_out_accuracy_by_noise"]
    assert accuracy["logsnr 15"] >= 0.9 and accuracy["logsnr -4"] < accuracy["logsnr 15"]


def test_it_is_saved_beside_the_probe_named_in_its_card_and_loaded_with_it(noisy_probe_dir):
    card = json.loads((noisy_probe_dir / "toy_sentiment.json").read_text())
    assert card["noise_conditioned"] == "toy_sentiment-noisy.json" and card["format_version"] == 2
    probe = load_probe(noisy_probe_dir / "toy_sentiment.json")
    head = probe.noise_conditioned
    assert head is not None and head.labels == probe.labels
    again = load_probe(noisy_probe_dir / "toy_sentiment.json").noise_conditioned
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), again.state_dict().values()))


def test_a_broken_or_newer_card_is_refused_plainly(noisy_probe_dir, tmp_path):
    folder = tmp_path / "probes"
    shutil.copytree(noisy_probe_dir, folder)
    card_path, head_path = folder / "toy_sentiment.json", folder / "toy_sentiment-noisy.json"
    card, head = json.loads(card_path.read_text()), json.loads(head_path.read_text())
    card_path.write_text(json.dumps({**card, "format_version": 3}))
    with pytest.raises(DglmError, match="format_version 3; this dglm reads formats 1 to 2"):
        load_probe(card_path)
    card_path.write_text(json.dumps(card))
    head_path.write_text(json.dumps({**head, "labels": ["a", "b"]}))
    with pytest.raises(DglmError, match="train it again on the same data"):
        load_probe(card_path)
    head_path.write_text(json.dumps(head))
    (folder / "toy_sentiment-noisy.safetensors").write_bytes(b"not weights")
    with pytest.raises(DglmError, match="do not fit their card"):
        load_probe(card_path)


@pytest.fixture
def noisy_plugin(noisy_probe_dir):
    class NoisyToy:
        @dglm.hookimpl
        def register_attributes(self, register):
            register(noisy_probe_dir / "toy_sentiment.json")

    dglm.register_plugin(NoisyToy(), name="noisy-toy")
    yield
    dglm.unregister_plugin("noisy-toy")


def test_it_guides_in_place_of_the_probe_reproducibly(tiny_pipeline, noisy_plugin):
    constraints = dglm.constraints.as_constraints(["toy_sentiment=positive"])

    def latents(**settings) -> torch.Tensor:
        diffusion, _ = tiny_pipeline.settings(guidance_scale=8.0, **settings)
        guidance = BatchGuidance.same(tiny_pipeline.make_guide(constraints, diffusion), 8.0, 2)
        return tiny_pipeline.propose_latents(["The film", "A day"], sample_generators([3, 4]), guidance, diffusion)

    noisy = latents(guidance_classifier=NOISE_KIND)
    assert torch.equal(noisy, latents(guidance_classifier=NOISE_KIND))  # a seed still gives the same proposal
    assert not torch.allclose(noisy, latents())  # the classifier guided, not the probe
    ask = dict(prefix="The film", attributes=constraints, seed=3, max_new_tokens=4, guidance_classifier=NOISE_KIND)
    assert tiny_pipeline.generate(**ask)[0].continuation == tiny_pipeline.generate(**ask)[0].continuation


def test_asking_for_it_where_an_attribute_has_none_or_in_another_mode_says_what_to_do(tiny_pipeline, toy_plugin):
    with pytest.raises(DglmError, match="toy_sentiment ship no noise-conditioned classifier"):
        tiny_pipeline.generate("The film", ["toy_sentiment=positive"], guidance_classifier=NOISE_KIND)
    with pytest.raises(DglmError, match="unknown guidance classifier 'mlp'; classifiers: linear, noise-conditioned"):
        tiny_pipeline.generate("The film", guidance_classifier="mlp")


def test_it_guides_in_gradient_mode_only(tiny_pipeline, noisy_plugin):
    with pytest.raises(DglmError, match="gradient mode only"):
        tiny_pipeline.generate("The film", ["toy_sentiment=positive"], guidance_classifier=NOISE_KIND,
                               guidance_mode="project")
