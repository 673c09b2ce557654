"""Attributes as plugins: discovery through entry points, composition, and clear errors."""

import csv
import os
import subprocess
import sys

import pytest
import torch
from conftest import toy_sentiment

import dglm
from dglm.cli import main
from dglm.data.labelled import read_labelled
from dglm.errors import DglmError
from dglm.plugins import get_attributes


def question_or_statement(count):
    texts, labels = toy_sentiment(count, seed=9)
    return [(t[:-1] + "?" if i % 2 else t, "question" if i % 2 else "statement") for i, t in enumerate(texts)]


def test_builtin_attributes_are_discovered_through_entry_points():
    attributes = get_attributes()
    assert attributes["sentiment"].labels == ["negative", "positive"]
    assert attributes["topic"].labels == ["business", "entertainment", "politics", "sport", "tech"]
    assert attributes["sentiment"].plugin == "sentiment" and attributes["topic"].plugin == "topic"
    assert attributes["sentiment"].probe.card["held_out_accuracy"] >= 0.80
    assert attributes["topic"].probe.card["held_out_accuracy"] >= 0.85
    toxicity = attributes["toxicity"].probe.card
    assert toxicity["labels"] == ["neutral", "offensive"] and "MIT licence" in toxicity["data"]
    majority = max(toxicity["label_counts"].values()) / sum(toxicity["label_counts"].values())
    assert toxicity["held_out_accuracy"] > majority + 0.05  # better than always saying "offensive"


@pytest.mark.slow
def test_a_plugin_package_from_a_csv_is_installed_and_used(tiny_pipeline, tiny_models, tmp_path, capsys, monkeypatch):
    """Train a probe from a CSV, scaffold a package, pip-install it, and generate with it: no dglm change."""
    data = tmp_path / "questions.csv"
    with open(data, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sentence", "kind"])
        writer.writerows(question_or_statement(80))
    assert main(["classifier", "train", "question", "--data", str(data), "--text-column", "sentence",
                 "--label-column", "kind", "--encoder", str(tiny_models["encoder"]), "--out", str(tmp_path / "probe")]) == 0
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["plugin", "new", "probe/question.json"]) == 0  # written beside the user, as most will
    install = capsys.readouterr().out.split("`")[1]
    assert install == "pip install ./dglm-question"  # a path: a bare name would be looked up in the package index
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", *install.split(), "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target)], check=True)
    monkeypatch.syspath_prepend(str(target))
    import importlib

    importlib.invalidate_caches()
    from dglm import plugins

    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    capsys.readouterr()
    try:
        assert main(["attributes"]) == 0
        listing = capsys.readouterr().out
        assert "question: question, statement" in listing and "plugin question" in listing
        samples = tiny_pipeline.generate("Was the movie", attributes={"question": "question"}, num_samples=2, seed=1)
        assert [s.attributes for s in samples] == [{"question": "question"}] * 2
    finally:
        plugins.unregister_plugin("question")


def test_two_plugins_registering_one_name_leave_it_out_and_only_a_request_for_it_fails(toy_probe_dir, toy_plugin, capsys):
    from dglm.plugins import attribute_terms

    class Impostor:
        @dglm.hookimpl
        def register_attributes(self, register):
            register(toy_probe_dir / "toy_sentiment.json")

    dglm.register_plugin(Impostor(), name="impostor")
    try:
        attributes = get_attributes()
        assert "toy_sentiment" not in attributes and {"sentiment", "topic"} <= attributes.keys()
        assert "attribute 'toy_sentiment' is registered by two plugins, 'toy' and 'impostor'" in capsys.readouterr().err
        with pytest.raises(DglmError, match="unknown attribute 'toy_sentiment'.*registered by two plugins, 'toy' and 'impostor'"):
            attribute_terms([dglm.Constraint("toy_sentiment", "positive")])
        assert len(attribute_terms([dglm.Constraint("sentiment", "positive")])) == 1
    finally:
        dglm.unregister_plugin("impostor")
    assert "toy_sentiment" in get_attributes()  # the clash is gone with the impostor
    with pytest.raises(DglmError, match="unknown attribute 'mood'; known attributes: ") as refused:
        attribute_terms([dglm.Constraint("mood", "happy")])
    assert "registered by two" not in str(refused.value)


def test_composition_of_several_attributes_and_steering_away(tiny_pipeline, toy_probe_dir, toy_plugin):
    guide = tiny_pipeline.make_guide(dglm.constraints.as_constraints(["toy_sentiment=positive:1", "toy_sentiment=negative:-2"]))
    assert [(index, weight) for _, index, weight in guide.terms] == [(1, 1.0), (0, -2.0)]
    samples = tiny_pipeline.generate("The film", attributes=[dglm.Constraint("toy_sentiment", "negative", -1.0)], seed=0)
    assert samples[0].attributes == {"toy_sentiment": "negative"}


def write_csv(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_csv_with_one_class_only(tmp_path, tiny_models, capsys):
    data = write_csv(tmp_path / "one.csv", ["text", "label"], [(f"text {i}", "yes") for i in range(20)])
    assert main(["classifier", "train", "x", "--data", str(data), "--encoder", str(tiny_models["encoder"]), "--out", str(tmp_path)]) == 2
    assert "has only one label" in capsys.readouterr().err


def test_csv_with_missing_columns(tmp_path):
    data = write_csv(tmp_path / "cols.csv", ["body", "label"], [("a", "b")])
    with pytest.raises(DglmError, match=r"no column\(s\) \['text'\]; its columns are: body, label"):
        read_labelled(str(data), "text", "label")


def test_corrupt_probe_card(tmp_path):
    from dglm.attributes.probes import load_probe

    (tmp_path / "bad.json").write_text('{"name": "bad"}')
    with pytest.raises(DglmError, match="lacks the key"):
        load_probe(tmp_path / "bad.json")


def installed_distribution(folder, name: str, entry_points: dict[str, str]) -> dict[str, str]:
    """A distribution `name` with these `dglm` entry points, as pip would leave its metadata in `folder`; returns the
    environment under which a new Python process finds it installed."""
    info = folder / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[dglm]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    return {**os.environ, "PYTHONPATH": str(folder)}


@pytest.mark.slow
def test_a_plugin_that_fails_to_import_or_to_register_is_skipped_and_named(tmp_path, tiny_checkpoint):
    """Installed plugins that raise (one on import, one while registering) cost one warning line each; the
    built-in attributes keep working, and asking for a missing attribute names the failed plugins."""
    import subprocess
    import sys

    (tmp_path / "broken_on_import.py").write_text("raise RuntimeError('missing dependency')\n")
    (tmp_path / "broken_on_register.py").write_text(
        "import dglm\n\n@dglm.hookimpl\ndef register_attributes(register):\n    register('/nowhere/probe.json')\n")
    env = installed_distribution(tmp_path, "broken-plugins", {"importer": "broken_on_import", "registerer": "broken_on_register"})
    listed = subprocess.run([sys.executable, "-m", "dglm", "attributes"], capture_output=True, text=True, env=env, check=False)
    assert listed.returncode == 0 and "sentiment: negative, positive" in listed.stdout
    warnings = [line for line in listed.stderr.splitlines() if line.startswith("dglm: warning:")]
    assert len(warnings) == 2 and "Traceback" not in listed.stderr
    assert "plugin 'importer' failed to load and is skipped (RuntimeError: missing dependency)" in warnings[0]
    assert "plugin 'registerer' failed to load" in warnings[1] and "/nowhere/probe.json" in warnings[1]
    asked = subprocess.run([sys.executable, "-m", "dglm", "generate", "The movie", "--attr", "formality=formal", "--model",
                            str(tiny_checkpoint)], capture_output=True, text=True, env=env, check=False)
    assert asked.returncode == 2 and "unknown attribute 'formality'" in asked.stderr
    assert "plugin 'importer' failed to load (RuntimeError: missing dependency), so what it provides is missing" in asked.stderr


@pytest.mark.slow
def test_an_installed_plugin_named_like_a_built_in_is_left_out_with_the_built_in_and_the_rest_keeps_working(tmp_path, tiny_checkpoint):
    """The clash is named with both distributions by every command; `dglm attributes` and `dglm plugins` list the
    rest, a request for another attribute runs, and only a request for the clashing name fails."""
    (tmp_path / "impostor.py").write_text("")
    env = installed_distribution(tmp_path, "dglm-sentiment-plus", {"sentiment": "impostor"})

    def dglm_command(*args):
        return subprocess.run([sys.executable, "-m", "dglm", *args], capture_output=True, text=True, env=env, check=False)

    clash = "the plugin name 'sentiment' is claimed by two installed distributions, 'dglm' and 'dglm-sentiment-plus'"
    listed = dglm_command("attributes")
    assert listed.returncode == 0 and "Traceback" not in listed.stderr and clash in listed.stderr
    assert "topic: business" in listed.stdout and "sentiment:" not in listed.stdout
    plugins = dglm_command("plugins")
    assert plugins.returncode == 0 and clash in plugins.stderr and "topic" in plugins.stdout
    asked = dglm_command("generate", "The movie", "--attr", "sentiment=positive", "--model", str(tiny_checkpoint))
    assert asked.returncode == 2 and "unknown attribute 'sentiment'" in asked.stderr and clash in asked.stderr.splitlines()[-1]
    other = dglm_command("generate", "The movie", "-n", "1", "--max-new-tokens", "2", "--seed", "0", "--model", str(tiny_checkpoint))
    assert other.returncode == 0 and other.stdout.strip(), other.stderr


@pytest.mark.parametrize("name", ["sentiment", "topic", "toxicity", "phrase"])
def test_classifier_train_and_plugin_new_refuse_a_reserved_name_with_the_list(name, tmp_path, capsys, toy_probe_dir):
    import json
    import shutil

    reserved = "reserved: dglm-methods, dglm-samplers, phrase, sentiment, topic, toxicity"
    assert main(["classifier", "train", name, "--data", str(tmp_path / "none.csv")]) == 2
    assert f"the attribute name {name!r} is reserved ({reserved})" in capsys.readouterr().err
    card = json.loads((toy_probe_dir / "toy_sentiment.json").read_text())
    shutil.copy(toy_probe_dir / card["weights"], tmp_path / card["weights"])
    (tmp_path / f"{name}.json").write_text(json.dumps({**card, "name": name}))
    assert main(["plugin", "new", str(tmp_path / f"{name}.json"), "--out", str(tmp_path / "out")]) == 2
    assert "is reserved" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_handful_of_examples_makes_a_prototype_probe_and_many_a_logistic_one():
    from dglm.attributes.probes import PROTOTYPE_BELOW, PROTOTYPE_TEMPERATURE, train_probe

    generator = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(2, 16, generator=generator), dim=-1)

    def data(per_label: int):
        points = torch.cat([centres[k] + 0.1 * torch.randn(per_label, 16, generator=generator) for k in range(2)])
        return torch.nn.functional.normalize(points, dim=-1), ["a"] * per_label + ["b"] * per_label

    few = train_probe("few", *data(8), encoder="toy", data="toy")
    assert few.card["kind"] == "prototype" and few.card["temperature"] == PROTOTYPE_TEMPERATURE
    assert torch.allclose(few.linear.weight.norm(dim=-1), torch.full((2,), PROTOTYPE_TEMPERATURE))
    assert few.card["held_out_accuracy"] == 1.0  # two well-separated clusters
    many = train_probe("many", *data(2 * PROTOTYPE_BELOW), encoder="toy", data="toy")
    assert many.card["kind"] == "logistic" and "regularisation_C" in many.card
