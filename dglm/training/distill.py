"""Decoder-written targets (self-distillation): the training pairs' prefixes continued by the published decoder.

Trained on the corpus's own continuations, the prompt generator and its adapter learn to write like the corpus,
whose text is about four times as perplexing as the decoder's own samples (NOTEBOOK, "Where fluency is lost").
Trained on continuations the decoder wrote itself, with the shipped decoding and each real continuation's length,
they learn to carry a continuation's meaning while the style stays the decoder's.

The targets are written as `dglm generate --output` writes samples (one line a pair, in the pairs' order, pair k
with seed `seed + k`), so a killed run continues with `resume`; each line keeps its pair's source. Within a chunk
of pairs, those of alike length are decoded together (a batch runs as long as its longest row), which a sample's
text does not depend on. The file is a pairs file: point a training config's `data.train` at it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dglm.config import TrainConfig
from dglm.data.pairs import iter_pairs, select_pairs, source_of
from dglm.errors import DglmError
from dglm.pipeline import Sample, check_seed, chunks
from dglm.sample_file import SampleFile
from dglm.seeding import sample_generators

if TYPE_CHECKING:
    import torch

    from dglm.attributes.probes import Probe

CHUNK_BATCHES = 40  # batches per write: pairs are decoded sorted by length within a chunk, written in order


def distill(config: TrainConfig, out: Path, seed: int = 0, batch_size: int = 25, limit: int = 0,
            resume: bool = False) -> int:
    """Write decoder-written targets for the pairs `config` trains on (the first `limit`, 0: all) to `out`; return
    how many lines the file holds."""
    from tqdm.auto import tqdm

    from dglm.stages.decoder import SoftPromptDecoder

    if batch_size < 1 or limit < 0:
        raise DglmError(f"batch size must be at least 1 and limit at least 0, got {batch_size} and {limit}")
    pairs = select_pairs(config.data)[: limit or None]
    check_seed(seed, len(pairs))
    decoding = config.pipeline.decoding
    run = {"decoder": config.pipeline.decoder, "pairs": asdict(config.data), "limit": limit, "num_samples": 1,
           "seed": seed, **asdict(decoding)}
    written = SampleFile(out, run, "jsonl", resume)
    decoder = SoftPromptDecoder.load(config.pipeline.decoder)
    lengths = [max(1, len(ids)) for ids in decoder.token_ids([pair["continuation"] for pair in pairs])]
    bar = tqdm(total=len(pairs), initial=written.held, desc="decoder-written targets", unit="pair")
    for start in range(written.held, len(pairs), batch_size * CHUNK_BATCHES):
        chunk = range(start, min(start + batch_size * CHUNK_BATCHES, len(pairs)))
        texts = {}
        for batch in chunks(sorted(chunk, key=lengths.__getitem__), batch_size):  # alike lengths decode together
            settings = [decoding.updated(max_new_tokens=lengths[k]) for k in batch]  # the corpus's length distribution
            generated = decoder.generate([pairs[k]["prefix"] for k in batch], None,
                                         sample_generators([seed + k for k in batch]), settings)
            texts.update(zip(batch, generated))
            bar.update(len(batch))
        written.append([Sample(pairs[k]["prefix"], texts[k], {}, seed + k, [], k, 0) for k in chunk],
                       extra=[{"source": source_of(pairs[k])} for k in chunk])
    bar.close()
    return len(pairs)


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
    for name, texts in (("real", [p["continuation"] for p in real]), ("decoder_written", [p["continuation"] for p in written])):
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
        raise DglmError(f"the {attribute!r} probe reads {probe.card['encoder']!r} embeddings, but this config's encoder "
                        f"is {encoder!r}; train a probe on that encoder for {purpose}")
    return probe


def label_pair_weights(embeddings: torch.Tensor, label_weights: dict[str, dict[str, float]], encoder: str) -> torch.Tensor:
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
