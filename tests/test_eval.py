"""The evaluation harness end to end on tiny models: every method, the report files, clear errors."""

import csv
import gzip
import json

import pytest
import yaml
from conftest import toy_sentiment

from dglm.cli import main
from dglm.config import EvalConfig
from dglm.errors import DglmError
from dglm.evaluation.harness import check_methods, run_eval
from dglm.pipeline import Pipeline


@pytest.fixture
def eval_config(tmp_path, tiny_checkpoint, tiny_models):
    prefixes = tmp_path / "prefixes.txt"
    prefixes.write_text("The movie\nA film\n")
    judge_data = tmp_path / "judge.csv"
    with open(judge_data, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(zip(*toy_sentiment(80, seed=5)))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prefix": "The movie", "continuation": " was good."}) + "\n")
    data = {
        "training_pairs": str(pairs), "prefixes": str(prefixes), "num_samples": 2, "max_new_tokens": 4, "batch_size": 3, "model": str(tiny_checkpoint),
        "conditions": ["none", "toy_sentiment=positive"],
        "methods": {"dglm": {}, "plain": {}, "prompting": {"templates": {"toy_sentiment": "A {label} text."}}, "fudge": {"top_k": 3}},
        "judges": {"toy_sentiment": str(judge_data), f"toy_sentiment@{tiny_models['encoder']}": str(judge_data)},
        "perplexity": str(tiny_models["decoder"]), "collapse_encoder": str(tiny_models["encoder"]),
        "tradeoff_condition": "toy_sentiment=positive", "tradeoff_scales": [0.0, 10.0], "out": str(tmp_path / "report"),
    }
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_eval_runs_every_method_and_writes_the_report(eval_config, toy_plugin, capsys):
    assert main(["eval", "--config", str(eval_config)]) == 0
    report = json.loads((eval_config.parent / "report.json").read_text())
    assert set(report["results"]) == {f"{m} | {c}" for m in ("dglm", "plain", "prompting", "fudge") for c in ("none", "toy_sentiment=positive")}
    guided = report["results"]["fudge | toy_sentiment=positive"]
    embedding_judge = next(name for name in report["judges"] if "@" in name)  # toy_sentiment@<tiny encoder>
    assert {"all_targets_met", "toy_sentiment=positive", "dist1", "dist2", "dist3", "perplexity_median",
            "copied_8_words", "seconds_per_sample", "samples_per_second", f"{embedding_judge}=positive",
            "dist3_all", "cross_prefix_cosine", "prefix_cosine", "homogeneity", "prefix_relevance", "top_word_share",
            "all_targets_met@" + embedding_judge.partition("@")[2]} <= guided.keys()
    assert report["peak_rss_mib"] > 0
    assert report["results"]["plain | none"] == report["results"]["plain | toy_sentiment=positive"]
    assert report["results"]["plain | none"]["homogeneity"] == 1.0  # plain sampling is the reference
    assert all("homogeneity" in result for result in report["tradeoff"].values())
    assert set(report["tradeoff"]) == {"0.0", "10.0"}
    assert (eval_config.parent / "report.png").stat().st_size > 0
    assert "| fudge | toy_sentiment=positive |" in (eval_config.parent / "report.md").read_text()
    samples = [json.loads(line) for line in gzip.open(eval_config.parent / "report.samples.jsonl.gz", "rt")]
    runs = {(s["method"], s["condition"], s["guidance_scale"]) for s in samples}
    assert runs == {("dglm", "none", None), ("dglm", "toy_sentiment=positive", None), ("plain", "none", None),
                    ("prompting", "none", None), ("prompting", "toy_sentiment=positive", None), ("fudge", "none", None),
                    ("fudge", "toy_sentiment=positive", None), ("dglm", "toy_sentiment=positive", 0.0),
                    ("dglm", "toy_sentiment=positive", 10.0)}
    assert len(samples) == 4 * len(runs)  # 2 prefixes x 2 samples a run
    first = next(s for s in samples if s["method"] == "fudge" and s["condition"] == "toy_sentiment=positive")
    assert first["prefix"] + first["continuation"] == guided["examples"][0]


def test_eval_seeds_each_sample_as_generate_does(eval_config, tiny_checkpoint, toy_plugin, capsys):
    """Prefixes must not share seeds (they would share diffusion noise): eval's DGLM text is what
    `Pipeline.generate` gives for the same prefixes, samples and seed."""
    assert main(["eval", "--config", str(eval_config), "--methods", "dglm", "--no-tradeoff"]) == 0
    examples = json.loads((eval_config.parent / "report.json").read_text())["results"]["dglm | none"]["examples"]
    samples = Pipeline.from_pretrained(str(tiny_checkpoint)).generate(["The movie", "A film"], num_samples=2, seed=0, max_new_tokens=4)
    assert examples == [samples[0].text, samples[2].text]


def test_eval_judges_another_checkpoint_with_the_same_config(eval_config, tmp_path, toy_plugin, capsys):
    """`--model` swaps the checkpoint and nothing else; the report names the one it judged."""
    other = tmp_path / "missing-checkpoint"
    assert main(["eval", "--config", str(eval_config), "--model", str(other), "--methods", "dglm", "--no-tradeoff"]) == 2
    assert str(other) in capsys.readouterr().err
    configured = yaml.safe_load(eval_config.read_text())["model"]
    out = tmp_path / "named"
    assert main(["eval", "--config", str(eval_config), "--model", configured, "--methods", "dglm", "--no-tradeoff", "--out", str(out)]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["config"]["model"] == configured


def test_eval_can_rerun_only_some_methods_to_another_output(eval_config, toy_plugin, capsys):
    out = eval_config.parent / "only-plain"
    assert main(["eval", "--config", str(eval_config), "--methods", "plain", "--out", str(out), "--no-tradeoff"]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert {key.split(" | ")[0] for key in report["results"]} == {"plain"} and "tradeoff" not in report
    assert main(["eval", "--config", str(eval_config), "--methods", "nope"]) == 2
    assert "its methods: dglm, fudge, plain, prompting" in capsys.readouterr().err


def test_text_generated_on_one_machine_is_judged_on_another_as_if_in_one_run(eval_config, toy_plugin, capsys):
    """--generate-only loads no judge (a GPU machine may lack their models); --judge-samples then reports what one
    full run reports, save the timings, which belong to the machine that generated."""
    out = eval_config.parent
    assert main(["eval", "--config", str(eval_config), "--out", str(out / "full")]) == 0
    assert main(["eval", "--config", str(eval_config), "--generate-only", "--out", str(out / "generated")]) == 0
    generated = json.loads((out / "generated.json").read_text())
    assert generated["judges"] == {} and not (out / "generated.png").exists()
    assert all(set(r) == {"seconds_per_sample", "samples_per_second", "examples"} for r in generated["results"].values())
    assert main(["eval", "--config", str(eval_config), "--judge-samples", str(out / "generated.samples.jsonl.gz"),
                 "--out", str(out / "judged")]) == 0
    full, judged = (json.loads((out / f"{name}.json").read_text()) for name in ("full", "judged"))
    timing = {"seconds_per_sample", "samples_per_second"}
    without_timing = lambda results: {key: {k: v for k, v in r.items() if k not in timing} for key, r in results.items()}
    assert without_timing(judged["results"]) == without_timing(full["results"])
    assert without_timing(judged["tradeoff"]) == without_timing(full["tradeoff"])
    assert judged["judges"] == full["judges"] and (out / "judged.png").stat().st_size > 0
    samples = lambda name: gzip.open(out / f"{name}.samples.jsonl.gz", "rt").read()
    assert samples("judged") == samples("generated") == samples("full")


def test_judging_samples_of_another_run_names_what_is_missing(eval_config, toy_plugin, capsys):
    out = eval_config.parent
    assert main(["eval", "--config", str(eval_config), "--generate-only", "--methods", "plain", "--no-tradeoff",
                 "--out", str(out / "plain")]) == 0
    assert main(["eval", "--config", str(eval_config), "--judge-samples", str(out / "plain.samples.jsonl.gz")]) == 2
    assert "lacks 4 of the 4 samples of dglm | none; it must come from a run of the same config" in capsys.readouterr().err
    (out / "broken.samples.jsonl.gz").write_bytes(b"not gzip")
    assert main(["eval", "--config", str(eval_config), "--judge-samples", str(out / "broken.samples.jsonl.gz")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_eval_refuses_a_target_without_a_judge(eval_config, tmp_path):
    config = EvalConfig.from_yaml(eval_config)
    config.conditions = ["mood=happy"]
    with pytest.raises(DglmError, match="'mood', which has no judge"):
        run_eval(config)


def test_eval_refuses_unknown_methods(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("methods: {pplm: {}}\n")
    with pytest.raises(DglmError, match=r"unknown method\(s\) \['pplm'\] in bad.yaml; known: "):
        check_methods(EvalConfig.from_yaml(path), "bad.yaml")


def test_steering_prompt_phrases_targets_and_avoidance(tiny_pipeline):
    from dglm.constraints import Constraint
    from dglm.evaluation.baselines import SteeringPrompt

    method = SteeringPrompt(tiny_pipeline, templates={"sentiment": "The following is a {label} review."})
    lead = method.steering([Constraint("sentiment", "positive"), Constraint("topic", "sport", -1.0)])
    assert lead == "The following is a positive review. The following text is not sport.\n\n"


@pytest.mark.parametrize("options, message", [
    ("{topk: 5}", r"unknown key\(s\) \['topk'\] in .*methods.fudge; accepted: \['strength', 'top_k'\]"),
    ("{top_k: many}", r"methods.fudge.top_k must be an integer, got 'many'"),
])
def test_a_misspelt_or_mistyped_method_option_is_refused(tmp_path, options, message):
    path = tmp_path / "eval.yaml"
    path.write_text(f"methods: {{fudge: {options}}}\n")
    with pytest.raises(DglmError, match=message):
        check_methods(EvalConfig.from_yaml(path), str(path))


def test_a_plugin_registers_an_evaluation_method_with_declared_options(eval_config, tiny_pipeline):
    from dataclasses import dataclass

    import dglm
    from dglm.interfaces import Method
    from dglm.plugins import get_plugins

    class Echo(Method):
        """Continues every row with the same words: the smallest method a plugin could add."""

        name = "echo"

        @dataclass
        class Options:
            words: str = " and so on."

        def continue_rows(self, rows, constraints, max_new_tokens):
            return [self.options.words for _ in rows]

    class MethodPlugin:
        @dglm.hookimpl
        def register_methods(self, register):
            register(Echo)

    dglm.register_plugin(MethodPlugin(), name="method-plugin")
    try:
        data = yaml.safe_load(eval_config.read_text())
        data.update(methods={"echo": {"words": " indeed."}}, conditions=["none"], tradeoff_condition=None)
        eval_config.write_text(yaml.safe_dump(data))
        report = run_eval(EvalConfig.from_yaml(eval_config))
        assert report["results"]["echo | none"]["examples"][0] == "The movie indeed."
        info = {plugin.name: plugin for plugin in get_plugins()}["method-plugin"]
        assert info.hooks == ["register_methods"] and info.methods == ["echo"]
        with pytest.raises(DglmError, match=r"unknown key\(s\) \['word'\] in options of method 'echo'"):
            Echo(tiny_pipeline, word="x")
    finally:
        dglm.unregister_plugin("method-plugin")
    eval_config.write_text(yaml.safe_dump(data))
    with pytest.raises(DglmError, match=r"unknown method\(s\) \['echo'\]"):
        run_eval(EvalConfig.from_yaml(eval_config))


def test_max_prefixes_runs_the_first_prefixes_only(eval_config, toy_plugin):
    data = yaml.safe_load(eval_config.read_text())
    data.update(methods={"plain": {}}, conditions=["none"], tradeoff_condition=None, max_prefixes=1)
    eval_config.write_text(yaml.safe_dump(data))
    report = run_eval(EvalConfig.from_yaml(eval_config))
    assert [example.startswith("The movie") for example in report["results"]["plain | none"]["examples"]] == [True]
    samples = [json.loads(line) for line in gzip.open(eval_config.parent / "report.samples.jsonl.gz", "rt")]
    assert {s["prefix"] for s in samples} == {"The movie"} and len(samples) == 2
    eval_config.write_text(yaml.safe_dump({**data, "max_prefixes": -1}))
    with pytest.raises(DglmError, match="max_prefixes must be 0"):
        run_eval(EvalConfig.from_yaml(eval_config))


def test_long_text_measures_repetition_length_and_the_last_third_and_runs_variants(eval_config, toy_plugin):
    data = yaml.safe_load(eval_config.read_text())
    data.update(methods={"dglm": {}, "dglm:segments": {"segment_tokens": 3}, "plain": {}}, max_new_tokens=9,
                conditions=["toy_sentiment=positive"], tradeoff_condition=None, long_text=True)
    eval_config.write_text(yaml.safe_dump(data))
    report = run_eval(EvalConfig.from_yaml(eval_config))
    one_plan, segments = report["results"]["dglm | toy_sentiment=positive"], report["results"][
        "dglm:segments | toy_sentiment=positive"]
    for result in (one_plan, segments):
        assert {"repeating_share", "repeating_share_at_plain_length", "repeated_4gram_share", "words",
                "words_x_plain", "seconds_x_plain"} <= result.keys()
        assert {"toy_sentiment=positive", "homogeneity", "prefix_relevance"} <= result["last_third"].keys()
    assert report["results"]["plain | toy_sentiment=positive"]["last_third"]["homogeneity"] == 1.0
    assert one_plan["examples"] != segments["examples"], "the variant ran with the same options"
    samples = [json.loads(line) for line in gzip.open(eval_config.parent / "report.samples.jsonl.gz", "rt")]
    assert {s["method"] for s in samples} == {"dglm", "dglm:segments", "plain"}
    table = (eval_config.parent / "report.md").read_text()
    assert "| dglm:segments | toy_sentiment=positive |" in table and "last third homogeneity" in table


def test_repetition_counts_repeated_word_4grams_and_the_last_third_is_the_last_words():
    from dglm.evaluation.metrics import last_third, repeats_within, repetition

    assert repetition("a b c d a b c d") == (True, 1 / 5)
    assert repetition("one two three four five") == (False, 0.0)
    assert repeats_within("a b c d a b c d", 8) and not repeats_within("a b c d a b c d", 7)
    assert last_third("1 2 3 4 5 6 7 8 9") == "7 8 9"


def test_repetition_at_plain_length_cuts_each_sample_to_what_plain_sampling_wrote_for_its_prefix_and_seed():
    from dglm.evaluation.harness import repetition_at_plain_length

    def sample(method, condition, prefix, text):
        return {"method": method, "condition": condition, "guidance_scale": None, "prefix": prefix, "seed": 0,
                "continuation": text}

    loop = "a b c d a b c d"  # repeats at its eighth word
    samples = [sample("plain", "none", "A", "1 2 3 4 5 6 7"), sample("plain", "none", "B", "1 2 3 4 5 6 7 8 9"),
               sample("dglm", "x=y", "A", loop), sample("dglm", "x=y", "B", loop)]
    plain = {"repeating_share": 0.0}  # one run, shared by every condition, as run_eval reports it
    results = {"dglm | x=y": {"repeating_share": 1.0}, "plain | none": plain, "plain | x=y": plain}
    repetition_at_plain_length(results, samples, "plain")
    assert results["dglm | x=y"]["repeating_share_at_plain_length"] == 0.5  # within 7 words (A) no, within 9 (B) yes
    assert results["plain | x=y"]["repeating_share_at_plain_length"] == 0.0
