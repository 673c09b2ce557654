"""`dglm eval`: methods x conditions x prefixes x samples, judged independently of the guidance.

Every method (DGLM and the baselines in `dglm.evaluation.baselines`) continues the same prefixes with the same
seeds. Outputs: a JSON report, a Markdown table, a PNG of attribute success and perplexity against
DGLM's guidance scale (the trade-off curve), and every sample as JSONL (to read, or to judge again).
"""

from __future__ import annotations

import gzip
import json
import resource
import time
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from dglm.config import EvalConfig
from dglm.config_files import build_dataclass
from dglm.constraints import Constraint, parse_constraint
from dglm.data.prefixes import read_prefixes
from dglm.errors import DglmError
from dglm.evaluation.baselines import PlainSampling
from dglm.evaluation.collapse import CollapseJudge, relative_to_plain
from dglm.evaluation.judges import PerplexityJudge, TextJudge
from dglm.evaluation.metrics import (CopyDetector, distinct_n, label_shares, last_third, median, repeats_within,
                                     repetition)
from dglm.pipeline import Pipeline
from dglm.plugins import get_methods
from dglm.seeding import seeded_rows


def parse_condition(text: str) -> list[Constraint]:
    """'none' or comma-separated NAME=LABEL[:WEIGHT] targets."""
    return [] if text == "none" else [parse_constraint(part) for part in text.split(",")]


class Scorer:
    """Judges a list of continuations: label rates per judge, joint success, perplexity, Dist-n and collapse.

    Dist-n comes two ways: `distN` within each prefix's samples, averaged over prefixes (what the targets use), and
    `distN_all` over all of a condition's samples, which falls when every prefix gets the same words."""

    def __init__(self, config: EvalConfig):
        # Loaded first: a missing perplexity model fails in seconds, not after the encoder judges' minutes of training.
        self.perplexity = PerplexityJudge(config.perplexity) if config.perplexity else None
        # "sentiment" is judged on TF-IDF features; "sentiment@all-mpnet-base-v2" on that encoder's embeddings.
        self.judges = {name: TextJudge.train(name, path, encoder=name.partition("@")[2] or None)
                       for name, path in config.judges.items()}
        self.copies = CopyDetector(config.training_pairs) if config.training_pairs else None
        self.collapse = CollapseJudge(config.collapse_encoder) if config.collapse_encoder else None
        self.num_samples = config.num_samples
        self.long_text = config.long_text

    def __call__(self, prefixes: list[str], continuations: list[str], constraints: list[Constraint]) -> dict:
        result: dict = {}
        verdicts = {name: judge.predict(continuations) for name, judge in self.judges.items()}
        for name, labels in verdicts.items():
            for label, share in label_shares(labels, self.judges[name].model.classes_).items():
                result[f"{name}={label}"] = share
        for suffix in self.judge_families():  # joint success under each family of judges that covers the targets
            if constraints and all(c.attribute + suffix in verdicts for c in constraints):
                met = [all((verdicts[c.attribute + suffix][i] == c.label) == (c.weight >= 0) for c in constraints)
                       for i in range(len(continuations))]
                result["all_targets_met" + suffix] = sum(met) / len(met)
        for name, judge in self.judges.items():
            if name.partition("@")[0] == TOXICITY:
                result.update(toxicity_measures(name, judge.probability(continuations, "offensive"), self.num_samples))
        groups = [continuations[i : i + self.num_samples] for i in range(0, len(continuations), self.num_samples)]
        for n in (1, 2, 3):
            result[f"dist{n}"] = sum(distinct_n(group, n) for group in groups) / len(groups)
            result[f"dist{n}_all"] = distinct_n(continuations, n)
        if self.collapse is not None:
            result.update(self.collapse(prefixes, continuations))
        if self.perplexity is not None:
            result["perplexity_median"] = median(self.perplexity(prefixes, continuations))
        if self.copies is not None:
            result["copied_8_words"] = self.copies.share_copied(continuations)
        if self.long_text:
            result.update(self.long_text_measures(prefixes, continuations))
        return result

    def long_text_measures(self, prefixes: list[str], continuations: list[str]) -> dict:
        """Repetition (the share of samples that repeat a word 4-gram, the mean share of repeated 4-grams), the mean
        length in words, and the last third of each continuation judged alone: its labels, and its relevance to the
        prefix and homogeneity across prefixes (`last_third`)."""
        repeated = [repetition(text) for text in continuations]
        ends = [last_third(text) for text in continuations]
        tail = {f"{name}={label}": share for name, judge in self.judges.items()
                for label, share in label_shares(judge.predict(ends), judge.model.classes_).items()}
        if self.collapse is not None:
            tail.update(self.collapse(prefixes, ends))
        return {"repeating_share": sum(flag for flag, _ in repeated) / len(repeated),
                "repeated_4gram_share": sum(share for _, share in repeated) / len(repeated),
                "words": sum(len(text.split()) for text in continuations) / len(continuations), "last_third": tail}

    def judge_families(self) -> list[str]:
        """The suffixes of the judge families: "" for the TF-IDF judges, "@ENCODER" for those on an encoder."""
        return sorted({"@" + name.partition("@")[2] if "@" in name else "" for name in self.judges})


TOXICITY = "toxicity"


def toxicity_measures(name: str, probabilities: list[float], samples_per_prefix: int) -> dict[str, float]:
    """RealToxicityPrompts' two measures from one judge's p(offensive) per sample: the expected maximum toxicity
    (the mean over prefixes of the highest probability among that prefix's samples) and the share of prefixes with
    at least one sample judged toxic (p > 0.5)."""
    worst = [max(probabilities[i : i + samples_per_prefix]) for i in range(0, len(probabilities), samples_per_prefix)]
    return {f"{name}_expected_max": sum(worst) / len(worst),
            f"{name}_toxic_prefix_share": sum(p > 0.5 for p in worst) / len(worst)}


def check_judged(config: EvalConfig) -> None:
    """Every targeted attribute needs a judge, or its success could not be measured."""
    conditions = config.conditions + ([config.tradeoff_condition] if config.tradeoff_condition else [])
    for condition in conditions:
        for constraint in parse_condition(condition):
            if constraint.attribute not in config.judges:
                raise DglmError(f"condition {condition!r} targets {constraint.attribute!r}, which has no judge; "
                                f"judges: {', '.join(config.judges)}")




def continue_all(method, rows: list[tuple[str, int]], constraints: list[Constraint], max_new_tokens: int,
                 batch_size: int, desc: str) -> list[str]:
    """One continuation per (prefix, seed) row from `method`, batch by batch, with a progress bar."""
    continuations: list[str] = []
    for first in tqdm(range(0, len(rows), batch_size), desc=desc, unit="batch"):
        continuations += method.continue_rows(rows[first : first + batch_size], constraints, max_new_tokens)
    return continuations


def check_methods(config: EvalConfig, config_path: str = "") -> None:
    """Refuse an unknown method, or a misspelt or mistyped option, before any model loads."""
    methods, where = get_methods(), f" in {config_path}" if config_path else ""
    unknown = sorted(name for name in config.methods if method_plugin(name) not in methods)
    if unknown:
        raise DglmError(f"unknown method(s) {unknown}{where}; known: {', '.join(methods)} (a variant is NAME:VARIANT)")
    for name, options in config.methods.items():
        build_dataclass(methods[method_plugin(name)].Options, options or {},
                        f"{config_path or 'the config'}: methods.{name}")


def method_plugin(name: str) -> str:
    """The registered method a config's method runs: NAME, or NAME of NAME:VARIANT (the same method, other options,
    reported under the whole name)."""
    return name.partition(":")[0]


def read_saved_samples(path: Path) -> dict[tuple, dict[tuple[str, int], str]]:
    """An earlier run's samples file, as run (method, condition, guidance scale) -> (prefix, seed) -> continuation."""
    runs: dict[tuple, dict[tuple[str, int], str]] = {}
    try:
        with gzip.open(path, "rt", encoding="utf-8") as file:
            for line in file:
                sample = json.loads(line)
                run = (sample["method"], sample["condition"], sample["guidance_scale"])
                runs.setdefault(run, {})[(sample["prefix"], sample["seed"])] = sample["continuation"]
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise DglmError(f"--judge-samples: cannot read {path} as a samples file of `dglm eval` ({error!r})") from None
    return runs


def saved_continuations(saved: dict, run: tuple, rows: list[tuple[str, int]], path: Path) -> list[str]:
    """The continuations of `rows` in one run of a saved samples file; a run or row it lacks is an error."""
    method, condition, scale = run
    held = saved.get(run)
    missing = len(rows) if held is None else sum((prefix, seed) not in held for prefix, seed in rows)
    if missing:
        name = f"{method} | {condition}" + ("" if scale is None else f" at guidance scale {scale}")
        raise DglmError(f"--judge-samples: {path} lacks {missing} of the {len(rows)} samples of {name}; it must come "
                        f"from a run of the same config (prefixes, num_samples, seed, methods, conditions; and "
                        f"--no-tradeoff if that run had it)")
    return [held[row] for row in rows]


def run_eval(config: EvalConfig, config_path: str = "", generate_only: bool = False,
             judge_samples: Path | None = None, device: str = "cpu", dtype: str = "float32") -> dict:
    """Run the config. `generate_only` writes the samples (and timings) without loading any judge: text can be
    written on one machine (a GPU) and judged on another, by `judge_samples`, which takes every continuation from
    that earlier run's samples file instead of generating it. The methods generate on `device`, the decoder in `dtype`
    (`Pipeline.from_pretrained`), which the report records."""
    check_methods(config, config_path)
    if config.max_prefixes < 0:
        raise DglmError(f"max_prefixes must be 0 (every prefix) or a count, got {config.max_prefixes}")
    prefixes = read_prefixes(config.prefixes)[: config.max_prefixes or None]
    rows = seeded_rows(prefixes, config.num_samples, config.seed)
    check_judged(config)
    saved = read_saved_samples(judge_samples) if judge_samples else None
    # judging saved text needs no model: the methods then only name their runs
    pipeline = Pipeline.from_pretrained(config.model, device=device, dtype=dtype) if saved is None else None
    scorer = None if generate_only else Scorer(config)
    report = {"config": asdict(config), "config_path": config_path,
              "judges": {n: j.held_out_accuracy for n, j in scorer.judges.items()} if scorer else {}, "results": {}}
    if judge_samples:
        report["judged_samples"] = str(judge_samples)
    else:
        report["decoder_dtype"] = dtype
    samples: list[dict] = []

    def run(method, condition: str, guidance_scale: float | None = None) -> dict:
        constraints = parse_condition(condition)
        result = {}
        if saved is not None:
            continuations = saved_continuations(saved, (method.name, condition, guidance_scale), rows, judge_samples)
        else:
            start = time.perf_counter()
            continuations = continue_all(method, rows, constraints, config.max_new_tokens, config.batch_size,
                                         f"{method.name} {condition}")
            seconds = time.perf_counter() - start
            result = {"seconds_per_sample": seconds / len(rows), "samples_per_second": len(rows) / seconds}
        samples.extend({"method": method.name, "condition": condition, "guidance_scale": guidance_scale,
                        "prefix": prefix, "seed": seed, "continuation": continuation}
                       for (prefix, seed), continuation in zip(rows, continuations))
        if scorer:
            result = scorer([p for p, _ in rows], continuations, constraints) | result
        result["examples"] = [rows[i][0] + continuations[i] for i in range(0, len(rows), config.num_samples)][:3]
        return result

    methods, plain, plain_name = get_methods(), None, None
    for name, options in config.methods.items():
        method = methods[method_plugin(name)](pipeline, **(options or {}))
        method.name = name
        unsteered = None
        for condition in config.conditions:
            if isinstance(method, PlainSampling) and unsteered is not None:
                report["results"][f"{name} | {condition}"] = unsteered  # plain sampling ignores the targets
                continue
            result = run(method, condition)
            report["results"][f"{name} | {condition}"] = result
            unsteered = unsteered or (result if isinstance(method, PlainSampling) else None)
        if plain is None and unsteered is not None:
            plain, plain_name = unsteered, name
    if config.tradeoff_condition:
        report["tradeoff"] = {
            scale: run(methods["dglm"](pipeline, guidance_scale=scale), config.tradeoff_condition, scale)
            for scale in config.tradeoff_scales
        }
    if plain is not None:  # homogeneity and prefix relevance are relative to plain sampling in the same run
        relative_to_plain([*report["results"].values(), *report.get("tradeoff", {}).values()], plain)
        if scorer and config.long_text:
            repetition_at_plain_length(report["results"], samples, plain_name)
    report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write_report(config, report, samples)
    return report


def repetition_at_plain_length(results: dict, samples: list[dict], plain_name: str) -> None:
    """Add `repeating_share_at_plain_length` to each long-text result: the share of its samples that repeat a word
    4-gram within as many words as plain sampling wrote for the same prefix and seed. Plain sampling often ends early
    (an end-of-text token), and a longer text has more chances to repeat itself; this compares like with like. Plain
    sampling runs once, and its result is the same dict under every condition (`run_eval`)."""
    plain_words = {(s["prefix"], s["seed"]): len(s["continuation"].split()) for s in samples
                   if s["method"] == plain_name}
    runs: dict[str, list[bool]] = {}
    for sample in samples:
        if sample["guidance_scale"] is None:  # the trade-off's runs are not long text's
            runs.setdefault(f"{sample['method']} | {sample['condition']}", []).append(
                repeats_within(sample["continuation"], plain_words[sample["prefix"], sample["seed"]]))
    for key, result in results.items():
        if key in runs:
            result["repeating_share_at_plain_length"] = sum(runs[key]) / len(runs[key])


def write_report(config: EvalConfig, report: dict, samples: list[dict]) -> None:
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    with gzip.open(out.with_suffix(".samples.jsonl.gz"), "wt",
                   encoding="utf-8") as file:  # sample files run to megabytes
        file.writelines(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
    out.with_suffix(".md").write_text(markdown_table(report))
    if "tradeoff" in report and report["judges"]:
        plot_tradeoff(report, out.with_suffix(".png"), config.tradeoff_condition)


def markdown_table(report: dict) -> str:
    results = report["results"]
    rates = sorted({key for result in results.values() for key in result if "=" in key})
    joint = sorted({key for result in results.values() for key in result if key.startswith("all_targets_met")})
    columns = [*joint, *rates, "perplexity_median", "homogeneity", "prefix_relevance", "top_word_share", "dist3",
               "dist3_all", "copied_8_words", "seconds_per_sample"]
    columns = [c for c in columns if any(c in r for r in results.values())]
    lines = ["| method | condition | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for key, result in results.items():
        method, condition = key.split(" | ")
        lines.append(f"| {method} | {condition} | " + " | ".join(cell(result, c) for c in columns) + " |")
    judges = ", ".join(f"{name} {accuracy:.3f}" for name, accuracy in report["judges"].items())
    text = "\n".join(lines) + (f"\n\nJudges' held-out accuracy: {judges}.\n" if judges else
                               "\n\nNot judged (generated only): judge the samples with --judge-samples.\n")
    text += ("\nhomogeneity: mean cosine between continuations of different prefixes, relative to plain sampling's; "
             "prefix_relevance: mean prefix-continuation cosine, relative likewise; top_word_share: the share of "
             "samples containing the condition's commonest content word (the word in brackets); dist3: within each "
             "prefix, dist3_all: over the whole condition.\n")
    if any("last_third" in result for result in results.values()):
        text += long_text_table(results)
    if "tradeoff" in report:
        text += "\n| guidance scale | targets met | perplexity (median) | homogeneity | top_word_share | dist3 |\n"
        text += "|---|---|---|---|---|---|\n"
        for scale, r in report["tradeoff"].items():
            text += (f"| {scale} | {cell(r, 'all_targets_met')} | {cell(r, 'perplexity_median')} | "
                     f"{cell(r, 'homogeneity')} | {cell(r, 'top_word_share')} | {cell(r, 'dist3')} |\n")
    return text


def long_text_table(results: dict) -> str:
    """Repetition, length and time against plain sampling, and the last third judged alone, a row a run."""
    tails = sorted({key for result in results.values() for key in result.get("last_third", {}) if "=" in key})
    columns = ["repeating_share", "repeating_share_at_plain_length", "repeated_4gram_share", "words_x_plain",
               "seconds_x_plain"]
    lines = ["| method | condition | " + " | ".join(columns + [f"last third {t}" for t in tails]) +
             " | last third homogeneity | last third prefix_relevance |", "|---|---|" + "---|" * (len(columns) +
                                                                                          len(tails) + 2)]
    for key, result in results.items():
        tail = result.get("last_third", {})
        cells = [cell(result, c) for c in columns] + [cell(tail, c) for c in [*tails, "homogeneity",
                                                                               "prefix_relevance"]]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return ("\nLong text: repeating_share, the share of samples in which a word 4-gram occurs twice; "
            "repeating_share_at_plain_length, the same within as many words as plain sampling wrote for the same "
            "prefix and seed; repeated_4gram_share, the mean share of 4-grams that repeat an earlier one; the last "
            "third of each continuation's words judged alone.\n\n" + "\n".join(lines) + "\n")


def cell(result: dict, column: str) -> str:
    """One table cell: a number to three figures, the top word beside its share, or blank when not measured."""
    if column not in result:
        return ""
    text = f"{result[column]:.3g}"
    return f"{text} ({result['top_word']})" if column == "top_word_share" and result.get("top_word") else text


def plot_tradeoff(report: dict, path: Path, condition: str) -> None:
    """Left: success and perplexity over the guidance scale. Right: success against homogeneity, the price of control
    in variety (when plain sampling ran, so that homogeneity could be measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["tradeoff"].values()
    scales = [float(s) for s in report["tradeoff"]]
    success = [r["all_targets_met"] for r in runs]
    with_homogeneity = all("homogeneity" in r for r in runs)
    figure, axes = plt.subplots(1, 2 if with_homogeneity else 1, figsize=(11 if with_homogeneity else 6, 4),
                                squeeze=False)
    left = axes[0][0]
    left.plot(scales, success, "o-", color="tab:blue")
    left.set(xlabel="guidance scale (symmetric log axis)",
             ylabel=f"share meeting {condition} (judge)", ylim=(0, 1))
    left.set_xscale("symlog", linthresh=1.0)
    if all("perplexity_median" in r for r in runs):
        right = left.twinx()
        perplexities = [r["perplexity_median"] for r in runs]
        right.plot(scales, perplexities, "s--", color="tab:red")
        right.set_ylabel("median perplexity (Gemma 3 270M)", color="tab:red")
        right.set_ylim(0, 1.2 * max(perplexities))  # from zero, so that noise does not look like a trend
    left.set_title("DGLM: attribute success vs fluency")
    if with_homogeneity:
        frontier = axes[0][1]
        homogeneity = [r["homogeneity"] for r in runs]
        frontier.plot(homogeneity, success, "o-", color="tab:purple")
        for scale, x, y in zip(scales, homogeneity, success):
            frontier.annotate(f"{scale:g}", (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
        frontier.axvline(1.0, color="grey", linestyle=":")
        frontier.set(xlabel="cross-prefix homogeneity "
                            "(x plain sampling's)", ylabel=f"share meeting {condition} (judge)",
                     ylim=(0, 1), title="the price of control in variety (labels: scale)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
