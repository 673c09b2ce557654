"""Generation end to end on tiny models: reproducibility, batching, saving and loading."""

import json

import pytest
import torch

from dglm.config import DecodingSettings
from dglm.errors import DglmError
from dglm.pipeline import Pipeline
from dglm.seeding import sample_generators
from dglm.stages.sampling import min_p_filter


def test_same_seed_same_text_and_seeds_are_recorded(tiny_pipeline):
    first = tiny_pipeline.generate("The movie", num_samples=3, seed=11)
    again = tiny_pipeline.generate("The movie", num_samples=3, seed=11)
    assert [s.continuation for s in first] == [s.continuation for s in again]
    assert [s.seed for s in first] == [11, 12, 13]
    other = tiny_pipeline.generate("The movie", num_samples=3, seed=99)
    assert [s.continuation for s in other] != [s.continuation for s in first]


def test_a_sample_is_reproduced_alone_from_its_seed(tiny_pipeline):
    samples = tiny_pipeline.generate("The movie", num_samples=3, seed=5)
    alone = tiny_pipeline.generate("The movie", num_samples=1, seed=samples[2].seed)
    assert alone[0].continuation == samples[2].continuation


def test_batching_gives_the_same_samples_as_one_by_one(tiny_pipeline, toy_plugin):
    prefixes = ["The movie", "A long and very boring film about the market"]
    attributes = {"toy_sentiment": "positive"}
    batched = tiny_pipeline.generate(prefixes, attributes=attributes, num_samples=2, seed=3, batch_size=4)
    singles = [s for i, p in enumerate(prefixes)
               for s in tiny_pipeline.generate(p, attributes=attributes, num_samples=2, seed=3 + 2 * i, batch_size=1)]
    assert [s.seed for s in batched] == [3, 4, 5, 6]
    assert [s.continuation for s in batched] == [s.continuation for s in singles]
    assert all(s.attributes == {"toy_sentiment": "positive"} for s in batched)


def test_rows_with_different_attributes_and_settings_share_a_batch_and_come_out_as_alone(tiny_pipeline, toy_plugin):
    """What a server relies on: unrelated requests batched together each get the text they would get alone."""
    requests = [
        ("The movie", 1, {"toy_sentiment": "positive"}, {"guidance_scale": 8.0, "temperature": 0.7}),
        ("A long and very boring film", 2, {"toy_sentiment": ("negative", 2.0)}, {"top_k": 5, "max_new_tokens": 3}),
        ("The match", 3, None, {"top_p": 0.5, "min_p": 0.1, "repetition_penalty": 1.0, "max_new_tokens": 9}),
        ("The movie", 4, {"toy_sentiment": "negative"}, {"mc_draws": 4}),
    ]
    rows = [row for prefix, seed, attributes, overrides in requests
            for row in tiny_pipeline.plan([prefix], attributes, seed=seed, **overrides)]
    batched = tiny_pipeline.generate_rows(rows)
    alone = [tiny_pipeline.generate(prefix, attributes, seed=seed, **overrides)[0].continuation
             for prefix, seed, attributes, overrides in requests]
    assert [tiny_pipeline.decoder.decode(ids) for ids in batched] == alone
    assert len(batched[1]) <= 3 and len(batched[2]) <= 9


def test_save_and_load_round_trip_exactly(tiny_pipeline, tiny_checkpoint):
    loaded = Pipeline.from_pretrained(tiny_checkpoint, encoder=tiny_pipeline.encoder, decoder=tiny_pipeline.decoder)
    original, restored = tiny_pipeline.parts.state_dict(), loaded.parts.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[key], restored[key]) for key in original)
    assert loaded.config == tiny_pipeline.config
    text = lambda p: [s.continuation for s in p.generate("The film", num_samples=2, seed=1)]
    assert text(loaded) == text(tiny_pipeline)


def test_loading_by_path_reads_encoder_and_decoder_from_the_config(tiny_checkpoint, tiny_pipeline):
    loaded = Pipeline.from_pretrained(tiny_checkpoint)
    assert loaded.encoder.dim == 32 and loaded.decoder.hidden_size == 32
    assert (tiny_checkpoint / "README.md").read_text().startswith("# dglm checkpoint")


def test_guided_generation_differs_from_unguided(tiny_pipeline, toy_plugin):
    plain = tiny_pipeline.generate("The movie", num_samples=4, seed=2)
    guided = tiny_pipeline.generate("The movie", attributes={"toy_sentiment": "positive"}, num_samples=4,
                                    seed=2, guidance_scale=50.0)
    assert [s.continuation for s in plain] != [s.continuation for s in guided]


def test_min_p_keeps_the_tokens_near_the_most_likely_one():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.06, 0.14], [0.05, 0.9, 0.02, 0.03]]))
    kept = min_p_filter(logits, 0.2).isfinite()
    assert kept.tolist() == [[True, True, False, True], [False, True, False, False]]


def test_min_p_near_one_leaves_only_the_top_token(tiny_pipeline):
    """With only the most likely token left, the seed no longer changes the decoding."""
    decode = lambda seed, min_p: tiny_pipeline.decoder.generate(
        ["The movie"] * 3, None, sample_generators(range(seed, seed + 3)), DecodingSettings(max_new_tokens=6, min_p=min_p))
    assert decode(0, 0.999) == decode(50, 0.999)
    assert decode(0, 0.0) != decode(50, 0.0)


def test_top_k_one_leaves_the_decoder_no_choice(tiny_pipeline):
    """top_k, added as one declaration plus its use: with one token left, the temperature no longer matters."""
    text = lambda top_k, temperature: [s.continuation for s in tiny_pipeline.generate(
        "The movie", num_samples=3, seed=3, top_k=top_k, temperature=temperature)]
    assert text(1, 1.0) == text(1, 0.5)
    assert text(0, 1.0) != text(0, 0.5)


def test_temperature_zero_decodes_greedily(tiny_pipeline):
    """Temperature 0 takes the likeliest token (as OpenAI-style servers do): without a repetition penalty that is
    exactly what top_k 1 leaves, whatever the temperature."""
    text = lambda **settings: [s.continuation for s in tiny_pipeline.generate(
        "The movie", num_samples=3, seed=3, repetition_penalty=1.0, **settings)]
    assert text(temperature=0.0) == text(top_k=1, temperature=1.0) != text(temperature=1.0)


def test_presence_and_frequency_penalties_follow_openais_definition(tiny_pipeline):
    from dglm.config import DecodingSettings
    from dglm.stages.sampling import RowSettings

    rows = RowSettings([DecodingSettings(repetition_penalty=1.0, presence_penalty=0.5, frequency_penalty=0.25),
                        DecodingSettings(repetition_penalty=1.0)], torch.device("cpu"))
    counts = torch.tensor([[0.0, 1.0, 3.0], [0.0, 1.0, 3.0]])
    penalised = rows.penalise(torch.zeros(2, 3), counts > 0, counts)
    assert penalised.tolist() == [[0.0, -0.75, -1.25], [0.0, 0.0, 0.0]]
    text = lambda **settings: [s.continuation for s in tiny_pipeline.generate(
        "The movie", num_samples=2, seed=3, repetition_penalty=1.0, temperature=0.0, max_new_tokens=12, **settings)]
    assert text(presence_penalty=0.0, frequency_penalty=0.0) == text()
    assert text(frequency_penalty=2.0) != text()


def test_stop_strings_cut_each_continuation_before_the_first_it_writes(tiny_pipeline, tiny_checkpoint, capsys):
    from dglm.cli import main

    full = [s.continuation for s in tiny_pipeline.generate("The movie", num_samples=3, seed=3, max_new_tokens=12)]
    stop = full[0][4:6]
    cut = [s.continuation for s in tiny_pipeline.generate("The movie", num_samples=3, seed=3, max_new_tokens=12,
                                                          stop=[stop, "never written"])]
    assert cut == [text[: text.find(stop)] if stop in text else text for text in full] and cut[0] == full[0][:4]
    assert main(["generate", "The movie", "--model", str(tiny_checkpoint), "-n", "3", "--seed", "3", "--max-new-tokens",
                 "12", "--stop", stop, "--format", "jsonl"]) == 0
    assert [json.loads(line)["continuation"] for line in capsys.readouterr().out.splitlines()] == cut
    with pytest.raises(DglmError, match="stop must be a string or a list of non-empty strings, got ''"):
        tiny_pipeline.generate("The movie", stop="")


def test_a_sample_keeps_every_constraint_even_one_attribute_given_twice(tiny_checkpoint, toy_plugin, capsys):
    import json

    from dglm.cli import main

    args = ["generate", "The movie", "--model", str(tiny_checkpoint), "--attr", "toy_sentiment=positive",
            "--attr", "toy_sentiment=negative:-0.5", "-n", "2", "--seed", "1", "--format", "jsonl"]
    assert main(args) == 0
    samples = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all(s["attributes"] == {"toy_sentiment": "negative"} for s in samples)  # as before: the last label
    assert all(s["constraints"] == [{"attribute": "toy_sentiment", "label": "positive", "weight": 1.0},
                                    {"attribute": "toy_sentiment", "label": "negative", "weight": -0.5}] for s in samples)
    assert main(args[:-2]) == 0
    assert "(toy_sentiment=positive:1, toy_sentiment=negative:-0.5; seed 1)" in capsys.readouterr().out


def test_only_plan_constructs_rows():
    """The CLI, the server and the evaluation plan rows through `Pipeline.plan`, so a sample's seed and checks cannot
    drift apart between them: no other code in the package builds a `Row`."""
    import ast
    from pathlib import Path

    import dglm

    builders = []
    for path in Path(dglm.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for function in (node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))):
            if any(isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Row"
                   for node in ast.walk(function)):
                builders.append(f"{path.name}:{function.name}")
    assert sorted(builders) == ["pipeline.py:plan", "pipeline.py:rows"]  # `rows` is plan's own lazy generator


def test_plan_seeds_rows_by_the_formula_skips_and_takes_given_seeds(tiny_pipeline, toy_plugin):
    rows = list(tiny_pipeline.plan(["A", "B"], ["toy_sentiment=positive"], 3, seed=10, skip=2, max_new_tokens=4))
    assert [(r.prefix, r.seed, r.prefix_index, r.sample_index) for r in rows] == [
        ("A", 12, 0, 2), ("B", 13, 1, 0), ("B", 14, 1, 1), ("B", 15, 1, 2)]
    assert len({id(r.guide) for r in rows}) == 1 and rows[0].decoding.max_new_tokens == 4
    given = list(tiny_pipeline.plan(["A", "B"], seed=[7, 3]))
    assert [(r.prefix, r.seed) for r in given] == [("A", 7), ("B", 3)]
    with pytest.raises(DglmError, match="unknown attribute 'mood'"):
        tiny_pipeline.plan(["A"], ["mood=happy"])  # refused at the call, before any row is read
    with pytest.raises(DglmError, match="prefix 1 \\(counting from 0\\) is empty"):
        list(tiny_pipeline.plan(["A", " "], seed=0))
