"""Decoder-written targets (self-distillation): the training pairs' prefixes continued by the published decoder.

Trained on the corpus's own continuations, the prompt generator and its adapter learn to write like the corpus,
whose text is about four times as perplexing as the decoder's own samples (NOTEBOOK, "Where fluency is lost").
Trained on continuations the decoder wrote itself, with the shipped decoding and each real continuation's length,
they learn to carry a continuation's meaning while the style stays the decoder's.

The targets are written as `dglm generate --output` writes samples (one line a pair, in the pairs' order, pair k
with seed `seed + k`; K lines a pair with `candidates`, below), so a killed run continues with `resume`; each line
keeps its pair's source. Within a chunk of pairs, those of alike length are decoded together (a batch runs as long as
its longest row), which a sample's text does not depend on. The file is a pairs file: point a training config's
`data.train` at it.

Decoder-written targets keep the decoder's style but lose much of the real continuation's meaning (fidelity cosine
0.375 against 0.512). With `candidates` K > 1 each prefix is continued K times (K lines a pair, candidate j of pair
k seeded `seed + k * K + j`, as `dglm generate` seeds its samples) and `nearest_targets` keeps, for each pair, the
candidate nearest the real continuation in the encoder's space: the decoder's own words, the corpus's meaning as
near as K draws come. The two steps are apart because only the first is slow, and it needs no encoder.
"""

from __future__ import annotations

import json
import multiprocessing
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dglm.config import DecodingSettings, TrainConfig
from dglm.data.pairs import iter_pairs, select_pairs, source_of
from dglm.errors import DglmError
from dglm.inputs import check_seed
from dglm.pipeline import Sample
from dglm.processes import chunks
from dglm.sample_file import SampleFile
from dglm.seeding import sample_generators

if TYPE_CHECKING:
    import torch

    from dglm.attributes.probes import Probe

CHUNK_BATCHES = 40  # batches per write: pairs are decoded sorted by length within a chunk, written in order


def distill(config: TrainConfig, out: Path, seed: int = 0, batch_size: int = 25, limit: int = 0,
            resume: bool = False, candidates: int = 1, device: str = "cpu", workers: int = 1) -> int:
    """Write decoder-written targets for the pairs `config` trains on (the first `limit`, 0: all) to `out`,
    `candidates` lines a pair, decoded by `workers` processes; return how many lines the file holds.

    Sampling draws one random number per vocabulary entry and token from each row's own generator, on one CPU
    thread: with a GPU decoding, that is the bottleneck, and more processes (each with its decoder) share it out."""
    import torch
    from tqdm.auto import tqdm

    if batch_size < 1 or limit < 0 or candidates < 1 or workers < 1:
        raise DglmError(f"batch size, candidates and workers must be at least 1 and limit at least 0, got "
                        f"{batch_size}, {candidates}, {workers} and {limit}")
    pairs = select_pairs(config.data)[: limit or None]
    total_lines = len(pairs) * candidates  # line n is candidate n % candidates of pair n // candidates
    check_seed(seed, total_lines)
    decoding = config.pipeline.decoding
    run = {"decoder": config.pipeline.decoder, "pairs": asdict(config.data), "limit": limit, "num_samples": candidates,
           "seed": seed, **asdict(decoding)}
    written = SampleFile(out, run, "jsonl", resume)
    # Here too: the lengths need its tokenizer, and a GGUF decoder is dequantised into the cache once, before the
    # workers read it.
    start_decoder(config.pipeline.decoder, device, decoding, 0)
    lengths = [max(1, len(ids)) for ids in DECODER["decoder"].token_ids([pair["continuation"] for pair in pairs])]
    pool = None
    if workers > 1:
        threads = max(1, torch.get_num_threads() // workers)
        pool = multiprocessing.get_context("spawn").Pool(  # spawn: a forked child cannot use CUDA
            workers, initializer=start_decoder, initargs=(config.pipeline.decoder, device, decoding, threads))
    bar = tqdm(total=total_lines, initial=written.held, desc="decoder-written targets", unit="line")
    try:
        for start in range(written.held, total_lines, batch_size * CHUNK_BATCHES):
            chunk = range(start, min(start + batch_size * CHUNK_BATCHES, total_lines))
            batches = list(chunks(sorted(chunk, key=lambda n: lengths[n // candidates]), batch_size))  # alike lengths
            # each line as long as its pair's real continuation: the corpus's length distribution
            tasks = [[(pairs[n // candidates]["prefix"], seed + n, lengths[n // candidates]) for n in batch]
                     for batch in batches]
            texts = {}
            for batch, generated in zip(batches, (pool.imap if pool else map)(continue_rows, tasks)):
                texts.update(zip(batch, generated))
                bar.update(len(batch))
            written.append([Sample(pairs[n // candidates]["prefix"], texts[n], {}, seed + n, [], *divmod(n, candidates))
                            for n in chunk], extra=[{"source": source_of(pairs[n // candidates])} for n in chunk])
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        DECODER.clear()  # the decoder's memory goes back once the file is written
        bar.close()
    return total_lines


DECODER: dict[str, Any] = {}  # the published decoder and decoding of this process, set by `start_decoder`


def start_decoder(name: str, device: str, decoding: DecodingSettings, threads: int) -> None:
    """Load the decoder once per process (threads 0: leave torch's count as it is)."""
    import torch

    from dglm.stages.decoder import SoftPromptDecoder

    if threads:
        torch.set_num_threads(threads)
    DECODER.update(decoder=SoftPromptDecoder.load(name, device), decoding=decoding)


def continue_rows(rows: list[tuple[str, int, int]]) -> list[str]:
    """Continue each (prefix, seed, length) row with this process's decoder."""
    prefixes, seeds, lengths = zip(*rows)
    return DECODER["decoder"].generate(list(prefixes), None, sample_generators(list(seeds)),
                                       [DECODER["decoding"].updated(max_new_tokens=n) for n in lengths])


def nearest_targets(config: TrainConfig, candidates_path: Path, out: Path) -> dict[str, Any]:
    """Write to `out`, for each pair of a `distill` run with several candidates a pair, the candidate whose
    embedding is nearest (cosine) the real continuation's; return how many pairs of how many the run was for, and
    the mean cosine of the chosen and of all candidates. The pairs file keeps each chosen line as written, with its
    `cosine`, the `candidates` drawn and the `real_continuation` (which `data.latent_from` can make the pair's
    latent). An unfinished run's whole pairs are chosen among: a trial needs only the first ones."""
    import torch

    from dglm.stages.encoder import SentenceEncoder

    recorded = SampleFile.recorded(candidates_path, "dglm data nearest (it reads a `dglm data distill` run's file)")
    per_pair = int(recorded["num_samples"])
    try:
        lines = list(iter_pairs(candidates_path))
    except json.JSONDecodeError:
        raise DglmError(f"{candidates_path} ends in a cut line (the run was killed while writing): finish it with "
                        "`dglm data distill --resume`") from None
    if not lines or len(lines) % per_pair:
        raise DglmError(f"{candidates_path} holds {len(lines)} lines, not a whole number of pairs of {per_pair} "
                        "candidates: finish the run with `dglm data distill --resume`")
    selected = select_pairs(config.data)
    planned = len(selected[: recorded.get("limit") or None])
    real = selected[: len(lines) // per_pair]
    if len(real) < len(lines) // per_pair:
        raise DglmError(f"{candidates_path} holds {len(lines) // per_pair} pairs, but this config selects only "
                        f"{len(selected)}; choose with the config the candidates were written for")
    for k, pair in enumerate(real):
        if lines[k * per_pair]["prefix"] != pair["prefix"]:
            raise DglmError(f"{candidates_path} pair {k + 1} continues another prefix than this config's pair {k + 1}; "
                            "choose with the config the candidates were written for")
    encoder = SentenceEncoder(config.pipeline.encoder)
    with torch.no_grad():  # unit vectors: products are cosines
        truth = encoder.encode([pair["continuation"] for pair in real], batch_size=128, progress=True)
        drawn = encoder.encode([line["continuation"] for line in lines], batch_size=128, progress=True)
    cosines = (drawn.view(len(real), per_pair, -1) @ truth[:, :, None]).squeeze(-1)  # pairs x candidates
    best = cosines.max(dim=-1)
    with open(out, "w", encoding="utf-8") as file:
        for k, (j, cosine) in enumerate(zip(best.indices.tolist(), best.values.tolist())):
            chosen = {**lines[k * per_pair + j], "cosine": round(cosine, 4), "candidates": per_pair,
                      "real_continuation": real[k]["continuation"]}
            file.write(json.dumps(chosen, ensure_ascii=False) + "\n")
    return {"pairs": len(real), "planned": planned, "chosen_cosine": round(float(best.values.mean()), 4),
            "candidate_cosine": round(float(cosines.mean()), 4)}


def sentiment_balance(config: TrainConfig, targets: Path, attribute: str = "sentiment") -> dict[str, Any]:
    """The share of continuations the attribute's probe reads as each label, real against decoder-written, overall
    and by source: the decoder leans positive, and negative tone must stay learnable."""
    import torch

    from dglm.stages.encoder import SentenceEncoder

    written = list(iter_pairs(targets))
    if not written:
        raise DglmError(f"{targets} holds no pairs yet; nothing to report")
    real = select_pairs(config.data)[: len(written)]
    probe = attribute_probe(attribute, config.pipeline.encoder, "the balance report (or pass --no-balance)")
    encoder = SentenceEncoder(config.pipeline.encoder)

    def labels(texts: list[str]) -> list[str]:
        with torch.no_grad():
            scores = probe(encoder.encode(texts, batch_size=128, progress=True))
        return [probe.labels[i] for i in scores.argmax(dim=-1).tolist()]

    report: dict[str, Any] = {"pairs": len(written), "attribute": attribute}
    counted: dict[str, dict[str, Counter]] = {}
    for name, texts in (("real", [p["continuation"] for p in real]),
                        ("decoder_written", [p["continuation"] for p in written])):
        read = labels(texts)
        by_source = counted[name] = {}
        for pair, label in zip(written, read):
            by_source.setdefault(source_of(pair), Counter())[label] += 1
        report[name] = {"all": shares(Counter(read)), **{source: shares(c) for source, c in sorted(by_source.items())}}
    if attribute == "sentiment":
        report["rebalance"] = rebalancing(counted["decoder_written"], report["real"]["all"].get("negative", 0.0))
    return report


def attribute_probe(attribute: str, encoder: str, purpose: str) -> Probe:
    """The installed probe of `attribute`, checked to read `encoder`'s embeddings."""
    from dglm.plugins import get_attributes

    attributes = get_attributes()
    if attribute not in attributes:
        raise DglmError(f"{purpose} reads continuations with the {attribute!r} probe, which is not installed; "
                        f"installed: {', '.join(attributes) or 'none'}")
    probe = attributes[attribute].probe
    if probe.card["encoder"] != encoder:
        raise DglmError(f"the {attribute!r} probe reads {probe.card['encoder']!r} embeddings, but this config's "
                        f"encoder is {encoder!r}; train a probe on that encoder for {purpose}")
    return probe


def label_pair_weights(embeddings: torch.Tensor, label_weights: dict[str, dict[str, float]],
                       encoder: str) -> torch.Tensor:
    """Per-pair sampling weights (a tensor) from the labels each attribute's probe reads in the pairs' continuation
    embeddings: the product over attributes of the weight of the label read (1 for a label not named)."""
    import torch

    weights = torch.ones(len(embeddings))
    for attribute, by_label in label_weights.items():
        probe = attribute_probe(attribute, encoder, "prompt_generator.label_weights")
        unknown = sorted(set(by_label) - set(probe.labels))
        if unknown or any(w <= 0 for w in by_label.values()):
            raise DglmError(f"prompt_generator.label_weights.{attribute} must give positive weights to labels of "
                            f"{probe.labels}, got {by_label}")
        with torch.no_grad():
            read = probe(embeddings.float()).argmax(dim=-1)
        table = torch.tensor([float(by_label.get(label, 1.0)) for label in probe.labels])
        weights = weights * table[read]
    return weights


def rebalancing(by_source: dict[str, Counter], target: float, label: str = "negative",
                attribute: str = "sentiment") -> dict[str, Any]:
    """The `source_weights` that draw the source richest in `label` often enough for the decoder-written pairs to
    hold `label` as often as the real ones (`target`), or, when no source weight can, the `label_weights` that do;
    nothing when they already do."""
    total = sum(sum(c.values()) for c in by_source.values())
    share = sum(c[label] for c in by_source.values()) / total
    if share >= target:
        return {"needed": False, "share": round(share, 4), "target": target}
    if share == 0 or target >= 1:
        return {"needed": True, "share": round(share, 4), "target": target,
                "note": f"no weight can rebalance: the decoder-written pairs hold no {label} continuation, or the real "
                        "ones hold nothing else"}
    richest = max(by_source, key=lambda s: by_source[s][label] / sum(by_source[s].values()))
    rich, rest = by_source[richest], [c for s, c in by_source.items() if s != richest]
    rich_share = rich[label] / sum(rich.values())
    if rich_share <= target:
        # w * share / (w * share + 1 - share) = target, solved for w: the odds ratio
        weight = target * (1 - share) / (share * (1 - target))
        return {"needed": True, "share": round(share, 4), "target": target,
                "note": f"no source's decoder-written pairs are {label} as often as the real pairs: weigh by label",
                "label_weights": {attribute: {label: round(weight, 2)}}}
    rest_count, rest_label = sum(sum(c.values()) for c in rest), sum(c[label] for c in rest)
    # (rest_label + w * rich[label]) / (rest_count + w * n_rich) = target, solved for w
    weight = (target * rest_count - rest_label) / (sum(rich.values()) * (rich_share - target))
    return {"needed": True, "share": round(share, 4), "target": target,
            "source_weights": {richest: round(weight, 2)}}


def shares(counts: Counter) -> dict[str, float]:
    total = sum(counts.values())
    return {label: round(count / total, 4) for label, count in sorted(counts.items())}
