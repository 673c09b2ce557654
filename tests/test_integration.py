"""The bundled default on the real offline encoder and decoder (the README's main command)."""

import json

import pytest
from conftest import copy_in_format_1, free_port, wait_until_serving

from dglm import Pipeline
from dglm.checkpoint import CHECKPOINT_FORMAT, default_checkpoint_path
from dglm.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def default_pipeline():
    return Pipeline.from_pretrained()


def test_bundled_default_is_small_fp16_and_documented():
    folder = default_checkpoint_path()
    weights = folder / "model.safetensors"
    assert weights.stat().st_size < 40 * 2**20
    card = json.loads((folder / "card.json").read_text())
    for stage in ("denoiser", "prompt_generator"):
        assert {"command", "data", "device", "steps", "wall_time_s", "final_loss"} <= card[stage].keys()
    assert "## Training: prompt generator" in (folder / "README.md").read_text()
    assert json.loads((folder / "config.json").read_text())["format_version"] == CHECKPOINT_FORMAT  # read as written


def test_the_bundled_default_samples_exactly_as_it_did_in_the_format_it_was_trained_in(default_pipeline, tmp_path):
    """Re-saving config.json in the current format changed nothing a user sees."""
    copy_in_format_1(default_checkpoint_path(), tmp_path / "format-1")
    as_trained = Pipeline.from_pretrained(tmp_path / "format-1", encoder=default_pipeline.encoder)
    ask = dict(prefix=["The movie", "My friend"], attributes={"sentiment": "negative"}, num_samples=2, seed=5)
    assert [s.text for s in as_trained.generate(**ask)] == [s.text for s in default_pipeline.generate(**ask)]


def test_cli_generates_guided_jsonl_reproducibly(capsys):
    args = ["generate", "The movie", "--attr", "sentiment=positive", "-n", "2", "--seed", "3", "--format", "jsonl"]
    assert main(args) == 0
    first = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [s["seed"] for s in first] == [3, 4]
    assert all(s["prefix"] == "The movie" and s["attributes"] == {"sentiment": "positive"} and s["continuation"].strip() for s in first)
    assert main(args) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == first


def test_guidance_raises_the_probe_score_of_the_proposal(default_pipeline):
    """On the trained model, steering the diffused latent toward a label raises that label's probability."""
    import torch

    from dglm.constraints import as_constraints
    from dglm.seeding import sample_generators
    from dglm.stages.guidance import BatchGuidance

    pipe = default_pipeline
    prefixes = ["The weather today"] * 16
    probe = pipe.make_guide(as_constraints({"sentiment": "positive"}))
    mean_positive = {}
    for target in ("positive", "negative"):
        guide = pipe.make_guide(as_constraints({"sentiment": target}))
        diffusion = pipe.config.diffusion.updated(steps=10)
        guidance = BatchGuidance.same(guide, diffusion.guidance_scale, len(prefixes))
        latents = pipe.propose_latents(prefixes, sample_generators(range(16)), guidance, diffusion)
        mean_positive[target] = probe.log_prob(latents).exp().mean().item()
    assert mean_positive["positive"] > mean_positive["negative"] + 0.2, mean_positive
    assert torch.isfinite(torch.tensor(list(mean_positive.values()))).all()


def test_soft_prompts_from_the_true_continuation_help_the_decoder_predict_it(default_pipeline):
    """The prompt generator carries meaning: the decoder predicts a continuation better from soft prompts
    made from that continuation's embedding than from another continuation's."""
    import torch

    from dglm.seeding import sample_generators

    pairs = [
        ("The restaurant on the corner", " served the best pasta I have eaten in years, and the staff were lovely."),
        ("After the election,", " the new government promised to cut taxes for small businesses."),
        ("The striker", " scored twice in the second half as the team won the cup final."),
        ("Scientists at the university", " discovered a new species of frog in the rainforest."),
        ("The phone", " kept crashing every time I opened the camera app, so I returned it."),
        ("Shares in the company", " fell sharply after it reported a loss for the third quarter."),
        ("My grandmother", " taught me how to bake bread when I was a child."),
        ("The storm", " knocked out power to thousands of homes along the coast overnight."),
        ("The film", " was a dull, boring mess with terrible acting and no plot at all."),
        ("The concert", " was wonderful: the band played all their old hits and the crowd sang along."),
    ]
    pipe = default_pipeline
    prefixes, continuations = [p for p, _ in pairs], [c for _, c in pairs]
    with torch.no_grad():
        latents = pipe.parts.normalizer.to_latent(pipe.encoder.encode(continuations))
        soft = pipe.soft_prompts(latents, sample_generators(range(len(pairs))))
        true_loss = pipe.decoder.loss(prefixes, continuations, soft)
        shuffled_loss = pipe.decoder.loss(prefixes, continuations, soft.roll(1, dims=0))
    assert true_loss < shuffled_loss - 0.5, (true_loss.item(), shuffled_loss.item())  # measured 2.33 vs 4.53


def test_dglm_serve_answers_the_openai_client_like_the_python_api(default_pipeline, tmp_path):
    """The README's server section: `dglm serve` on the bundled model, the official client, attributes through
    extra_body, with and without streaming; the text is what Python gives for the same seeds."""
    import os
    import signal
    import subprocess
    import sys

    openai = pytest.importorskip("openai")
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as stderr:
        server = subprocess.Popen([sys.executable, "-m", "dglm", "serve", "--port", str(port)], stderr=stderr,
                                  env={**os.environ, "DGLM_API_KEY": "k"})
    try:
        wait_until_serving(server, log)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k")
        attributes = ["sentiment=positive", "topic=sport:2"]
        completion = client.completions.create(model="dglm-default", prompt="The match", n=2, seed=3, max_tokens=12,
                                               extra_body={"attributes": attributes})
        expected = [s.continuation for s in default_pipeline.generate("The match", attributes, 2, max_new_tokens=12, seed=3)]
        assert [c.text for c in completion.choices] == expected
        streamed = ["", ""]
        for chunk in client.completions.create(model="dglm-default", prompt="The match", n=2, seed=3, max_tokens=12,
                                               stream=True, extra_body={"attributes": attributes}):
            for choice in chunk.choices:
                streamed[choice.index] += choice.text
        assert streamed == expected
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong").models.list()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
