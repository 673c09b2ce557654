"""Decoding a batch of rows one token at a time: what the decoder runs to the end for a request, and what the server's
continuous batching steps, letting rows leave and others join between steps.

Each row draws from its own generator and is filtered and penalised with its own settings (`RowSettings`), and rows of
different lengths are left-padded and masked, so a row's tokens do not depend on the rows it shares the batch with.
The decoder reads each distinct context once (`read_contexts`), however many rows share it, and each row's soft
prompts after it; a next segment's context continues what was read before (`Continued`) instead of reading it again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dglm.config import DecodingSettings
from dglm.errors import DglmError

# The last position, as an index: the LM head then multiplies a gathered (contiguous) row per context as one matrix
# product. `logits_to_keep=1` slices a strided view instead, which torch multiplies as a batch of products over a
# broadcast copy of the whole head: at 64 rows, 9x as slow in bfloat16 (NOTEBOOK, "A bfloat16 decoder").
LAST_POSITION = torch.tensor([-1])
TOP_P_HEAD = 64  # how many of a row's likeliest tokens top-p sorts first (`top_p_filter`)
NOT_FINITE = ("the next-token probabilities are not finite numbers: the settings are too extreme (a guidance or "
              "prefix-guidance scale far too large, a temperature or repetition penalty near 0); use values closer "
              "to the defaults")


@dataclass
class ReadContext:
    """What the decoder read of a row's context before its soft prompts: the token ids, and each layer's keys and
    values for them (views into the batch that read them, with its padding, marked by `mask`). A next segment
    continues from it (`Continued`), so that the decoder reads only the text written since."""

    ids: list[int]
    mask: torch.Tensor  # (width,), 1 where a column holds one of the ids
    keys: list[torch.Tensor] | None  # per layer: (heads, width, head size); None when not kept, or cannot be
    values: list[torch.Tensor] | None


@dataclass
class Continued:
    """A context that is an earlier one the decoder read, followed by more tokens (the segment just written)."""

    read: ReadContext
    new_ids: list[int]

    @property
    def ids(self) -> list[int]:
        return self.read.ids + self.new_ids


class DecodingBatch:
    """Rows decoded together, with their key-value cache, attention mask, next positions and the logits of their next
    token. `sample` draws each row's next token, `advance` runs the decoder on the tokens drawn; between the two,
    rows may leave (`keep`), and after `advance` another batch may `join`. `decoder` is the `SoftPromptDecoder` that
    starts it (typed loosely: the decoder module builds on this one)."""

    @torch.no_grad()
    def __init__(self, decoder: Any, prefixes: list[str | Continued], soft_prompts: torch.Tensor | None,
                 generators: list[torch.Generator], settings: list[DecodingSettings],
                 logit_bias: list[dict[int, float]] | None = None, keep_read: bool = False,
                 end_at_sentence: list[bool] | None = None):
        distinct: dict = {}  # a context is read once and shared by its rows (candidates, n): key -> (index, context)
        which = [distinct.setdefault(prefix if isinstance(prefix, str) else (id(prefix.read), tuple(prefix.ids)),
                                     (len(distinct), prefix))[0] for prefix in prefixes]
        contexts = [context for _, context in distinct.values()]
        new_ids = new_token_ids(decoder, contexts)
        for index, row_settings in zip(which, settings):  # before any model runs
            ids = new_ids[index] if isinstance(contexts[index], str) else contexts[index].ids
            decoder.check_fits(ids, 0 if soft_prompts is None else soft_prompts.shape[1], row_settings.max_new_tokens)
        out, mask, positions, read = read_contexts(decoder, contexts, keep_read, new_ids)
        if len(distinct) < len(prefixes) and dynamic_layers(getattr(out, decoder.cache_name)) is None:
            # a cache whose rows cannot be selected (static, recurrent, quantized): each row reads its own context
            new_ids, which = [new_ids[index] for index in which], list(range(len(prefixes)))
            out, mask, positions, read = read_contexts(decoder, list(prefixes), keep_read, new_ids)
        self.contexts = [read[index] for index in which]  # what each row read before its soft prompts
        self.decoder, self.generators, self.settings = decoder, list(generators), list(settings)
        self.rows = RowSettings(self.settings, decoder.device)
        rows, vocab = len(prefixes), decoder.vocab_size
        self.bias = bias_table(logit_bias, rows, vocab, decoder.device)
        self.seen = torch.zeros(rows, vocab, dtype=torch.bool, device=decoder.device)  # prefix and written tokens
        self.counts = torch.zeros(rows, vocab, device=decoder.device)  # each token's count in the continuation so far
        for row, context in enumerate(self.contexts):
            self.seen[row, context.ids] = True
        self.cache = getattr(out, decoder.cache_name)
        rows_of = torch.tensor(which, device=decoder.device)
        if which != list(range(rows)):
            self.cache.batch_select_indices(rows_of)
        self.mask, self.positions = mask[rows_of], positions[rows_of, -1:]
        self.logits = out.logits[rows_of, -1].float()  # the next token's, as the decoder gives them
        self.tokens: list[list[int]] = [[] for _ in prefixes]  # what each row has written
        self.finished = torch.zeros(rows, dtype=torch.bool)
        self.at_sentence = torch.tensor(end_at_sentence or [False] * rows, dtype=torch.bool)  # rows that end there
        self.last = torch.zeros(rows, dtype=torch.long)  # the tokens drawn by the last `sample`
        self.steps = 0
        if soft_prompts is not None:
            self.read(soft_prompts)

    @torch.no_grad()
    def read(self, soft_prompts: torch.Tensor) -> None:
        """Run the decoder on one row of soft prompts per row, after what each row has read."""
        count, device = soft_prompts.shape[1], self.decoder.device
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self), count)], dim=1)
        positions = self.positions + torch.arange(1, count + 1, device=device)
        embeds = soft_prompts.to(device=device, dtype=self.decoder.dtype)
        out = self.decoder.model(inputs_embeds=embeds, attention_mask=self.mask, position_ids=positions,
                                 use_cache=True, logits_to_keep=LAST_POSITION, **{self.decoder.cache_name: self.cache})
        self.positions = positions[:, -1:]
        self.logits, self.cache = out.logits[:, -1].float(), getattr(out, self.decoder.cache_name)

    def __len__(self) -> int:
        return len(self.tokens)

    def written(self) -> torch.Tensor:
        """What the rows have written, as a (rows x steps) tensor; rows that ended are padded."""
        pad = self.decoder.tokenizer.pad_token_id
        return torch.tensor([ids + [pad] * (self.steps - len(ids)) for ids in self.tokens], dtype=torch.long)

    def sample(self, adjust_logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
               ) -> torch.Tensor:
        """Draw each row's next token (the end-of-text token for rows that ended) and note which rows end with it
        (`finished`). `adjust_logits(logits, written)` may rewrite the logits first (token-level baselines). Returns
        the rows whose probabilities were not finite (their settings are too extreme); they end at once."""
        raw = self.logits
        logits = self.rows.filter(raw if self.bias is None else raw + self.bias)
        if adjust_logits is not None:
            logits = adjust_logits(logits, self.written())
        logits = self.rows.penalise(logits, self.seen, self.counts)
        probs = top_p_filter(F.softmax(logits / self.rows.divisor, dim=-1), self.rows.top_p).cpu()
        broken = ~probs.isfinite().all(dim=-1)
        eos, likeliest = self.decoder.tokenizer.eos_token_id, logits.argmax(dim=-1).tolist()
        ended = (self.finished | broken).tolist()
        drawing = [not (done or greedy) for done, greedy in zip(ended, self.rows.greedy)]
        drawn = iter(draw(probs[torch.tensor(drawing, dtype=torch.bool)],
                          [generator for generator, draws in zip(self.generators, drawing) if draws]))
        tokens = [eos if done else next(drawn) if draws else top
                  for done, draws, top in zip(ended, drawing, likeliest)]
        for row, token in enumerate(tokens):
            if not self.finished[row]:
                self.tokens[row].append(token)
        self.last = torch.tensor(tokens, dtype=torch.long)
        lengths = torch.tensor([len(ids) for ids in self.tokens])
        self.finished |= (self.last == eos) | (lengths >= self.rows.max_new_tokens) | broken
        if bool(self.at_sentence.any()):
            self.finished |= self.at_sentence & self.decoder.sentence_end_tokens[self.last]
        self.steps += 1
        return broken

    def run(self, adjust_logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
            on_step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None
            ) -> list[list[int]]:
        """Decode every row to its end (see `SoftPromptDecoder.generate_tokens`) and return what each wrote."""
        for _ in range(int(self.rows.max_new_tokens.max())):
            if bool(self.sample(adjust_logits).any()):
                raise DglmError(NOT_FINITE)
            if on_step is not None:
                stop = on_step(self.written(), self.finished, self.logits)
                if stop is not None:
                    self.finished |= stop
            if bool(self.finished.all()):
                break
            self.advance()
        return self.tokens

    @torch.no_grad()
    def advance(self) -> None:
        """Run the decoder on the tokens just drawn: the logits of every row's next token."""
        rows, device = torch.arange(len(self)), self.decoder.device
        self.seen[rows, self.last.to(device)] = True
        self.counts[rows, self.last.to(device)] += 1
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self), 1)], dim=1)
        self.positions = self.positions + 1
        out = self.decoder.model(input_ids=self.last[:, None].to(device), attention_mask=self.mask,
                                 position_ids=self.positions, use_cache=True,
                                 **{self.decoder.cache_name: self.cache})
        self.logits, self.cache = out.logits[:, -1].float(), getattr(out, self.decoder.cache_name)

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows, in this order (the others leave the batch); columns that are padding in every row
        left are dropped."""
        index = torch.tensor(rows, dtype=torch.long)
        on_device = index.to(self.decoder.device)
        self.cache.batch_select_indices(on_device)
        self.generators = [self.generators[row] for row in rows]
        self.contexts = [self.contexts[row] for row in rows]
        self.settings = [self.settings[row] for row in rows]
        self.tokens = [self.tokens[row] for row in rows]
        self.rows = RowSettings(self.settings, self.decoder.device)
        self.finished, self.last, self.at_sentence = self.finished[index], self.last[index], self.at_sentence[index]
        self.mask, self.positions, self.logits = self.mask[on_device], self.positions[on_device], self.logits[on_device]
        self.seen, self.counts = self.seen[on_device], self.counts[on_device]
        self.bias = None if self.bias is None else self.bias[on_device]
        if rows:
            padding = int(self.mask.any(dim=0).int().argmax())  # leading columns that no row attends to
            if padding:
                self.mask = self.mask[:, padding:]
                for layer in cache_layers(self.cache):
                    layer.keys, layer.values = layer.keys[..., padding:, :], layer.values[..., padding:, :]

    def join(self, other: DecodingBatch) -> None:
        """Add another batch's rows after this one's; the shorter batch is left-padded (and masked) to the longer."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(cache_layers(self.cache), cache_layers(other.cache)):
            mine.keys = torch.cat([left_pad(mine.keys, width, -2), left_pad(theirs.keys, width, -2)])
            mine.values = torch.cat([left_pad(mine.values, width, -2), left_pad(theirs.values, width, -2)])
        self.mask = torch.cat([left_pad(self.mask, width, -1), left_pad(other.mask, width, -1)])
        if self.bias is not None or other.bias is not None:
            zeros = lambda part: torch.zeros_like(part.seen, dtype=torch.float)
            self.bias = torch.cat([part.bias if part.bias is not None else zeros(part) for part in (self, other)])
        self.positions = torch.cat([self.positions, other.positions])
        self.logits = torch.cat([self.logits, other.logits])
        self.seen, self.counts = torch.cat([self.seen, other.seen]), torch.cat([self.counts, other.counts])
        self.finished, self.last = torch.cat([self.finished, other.finished]), torch.cat([self.last, other.last])
        self.at_sentence = torch.cat([self.at_sentence, other.at_sentence])
        self.generators += other.generators
        self.contexts += other.contexts
        self.settings += other.settings
        self.tokens += other.tokens
        self.rows = RowSettings(self.settings, self.decoder.device)


def new_token_ids(decoder: Any, contexts: list[str | Continued]) -> list[list[int]]:
    """The tokens the decoder has still to read of each context: a text's, or a continued context's new ones."""
    fresh = iter(decoder.token_ids([context for context in contexts if isinstance(context, str)]))
    new_ids = [next(fresh) if isinstance(context, str) else context.new_ids for context in contexts]
    if any(not ids for ids in new_ids):
        raise DglmError("a prefix produced no tokens; give a non-empty prefix")
    return new_ids


@torch.no_grad()
def read_contexts(decoder: Any, contexts: list[str | Continued], keep: bool = False,
                  new_ids: list[list[int]] | None = None) -> tuple[Any, torch.Tensor, torch.Tensor, list[ReadContext]]:
    """The decoder's prefill of each context: a text is read whole; a continued context reads only its new tokens
    (`new_token_ids`, unless given), after the keys and values of what was read before. Rows are aligned on the
    right: [pad ; earlier ; pad ; new]. Returns the model's output, the attention mask, the positions, and what each
    row has now read (with its keys and values if `keep`: holding them keeps the prefill's cache in memory beside the
    batch's, so only segments do)."""
    earlier = [None if isinstance(context, str) else context.read for context in contexts]
    new_ids = new_token_ids(decoder, contexts) if new_ids is None else new_ids
    device, pad = decoder.device, decoder.tokenizer.pad_token_id
    width = max(len(ids) for ids in new_ids)
    ids = torch.tensor([[pad] * (width - len(row)) + row for row in new_ids], device=device)
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in new_ids], device=device)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    past = None
    if any(read is not None for read in earlier):
        past_width = max(read.mask.shape[0] for read in earlier if read is not None)
        past_mask = torch.stack([left_pad(read.mask, past_width, -1) if read is not None
                                 else mask.new_zeros(past_width) for read in earlier])
        positions = positions + past_mask.sum(-1, keepdim=True)
        mask = torch.cat([past_mask, mask], dim=1)
        past = past_cache(decoder, earlier, past_width)
    out = decoder.model(inputs_embeds=decoder.model.get_input_embeddings()(ids), attention_mask=mask,
                        position_ids=positions, use_cache=True, logits_to_keep=LAST_POSITION,
                        **({} if past is None else {decoder.cache_name: past}))
    layers = dynamic_layers(getattr(out, decoder.cache_name)) if keep else None
    read = [ReadContext(([] if before is None else before.ids) + row_ids, mask[row],
                        None if layers is None else [layer.keys[row] for layer in layers],
                        None if layers is None else [layer.values[row] for layer in layers])
            for row, (before, row_ids) in enumerate(zip(earlier, new_ids))]
    return out, mask, positions, read


def past_cache(decoder: Any, earlier: list[ReadContext | None], width: int) -> Any:
    """A key-value cache of what the rows read before, each left-padded to `width` (zeros for rows that read
    nothing before)."""
    cache, sample = new_cache(decoder.model), next(read for read in earlier if read is not None)
    for layer, (keys, values) in enumerate(zip(sample.keys, sample.values)):
        rows = [(left_pad(read.keys[layer], width, -2), left_pad(read.values[layer], width, -2)) if read is not None
                else (keys.new_zeros(keys.shape[0], width, keys.shape[-1]),
                      values.new_zeros(values.shape[0], width, values.shape[-1])) for read in earlier]
        cache.update(torch.stack([k for k, _ in rows]), torch.stack([v for _, v in rows]), layer)
    return cache


def new_cache(model: Any) -> Any:
    """An empty key-value cache of the kind `model` keeps (dglm's own Llama has its own)."""
    if hasattr(model, "new_cache"):
        return model.new_cache()
    from transformers import DynamicCache

    return DynamicCache()


def dynamic_layers(cache) -> list | None:
    """The layers of a key-value cache whose keys and values rows can be dropped from and added to; None for a
    cache of another kind (a sliding window, a quantized cache)."""
    layers = getattr(cache, "layers", None)
    if layers is None or any(type(layer).__name__ not in ("DynamicLayer", "KeyValueLayer") for layer in layers):
        return None
    return layers


def cache_layers(cache) -> list:
    """`dynamic_layers`, or a clear refusal rather than batching another kind of cache wrongly."""
    layers = dynamic_layers(cache)
    if layers is None:
        raise DglmError("continuous batching needs a decoder whose key-value cache is a plain dynamic one; serve this "
                        "decoder with --batching static")
    return layers


def left_pad(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """`tensor` widened to `width` along `dim` by zeros on the left."""
    missing = width - tensor.shape[dim]
    if not missing:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def bias_table(logit_bias: list[dict[int, float]] | None, rows: int, vocab: int,
               device: torch.device) -> torch.Tensor | None:
    """The rows' logit biases as one (rows x vocabulary) table; None when no row has any."""
    if not logit_bias or not any(logit_bias):
        return None
    table = torch.zeros(rows, vocab, device=device)
    for row, biases in enumerate(logit_bias):
        for token, value in biases.items():
            if not 0 <= token < vocab:
                raise DglmError(f"logit_bias names token {token}, but the decoder's vocabulary has "
                                f"ids 0 to {vocab - 1}",
                                field="logit_bias")
            table[row, token] = value
    return table


class RowSettings:
    """Decoding settings as per-row tensors, so that rows with different settings share one batch; a row is
    filtered exactly as it would be alone."""

    def __init__(self, settings: list[DecodingSettings], device: torch.device):
        column = lambda values: torch.tensor(values, dtype=torch.float32, device=device)[:, None]
        self.max_new_tokens = torch.tensor([s.max_new_tokens for s in settings])
        self.greedy = [s.temperature == 0 for s in settings]  # these rows take the likeliest token
        self.divisor = column([s.temperature or 1.0 for s in settings])  # the temperature, 1 for greedy rows
        self.top_p = column([s.top_p for s in settings])
        self.penalty = column([s.repetition_penalty for s in settings])
        self.presence = column([s.presence_penalty for s in settings])
        self.frequency = column([s.frequency_penalty for s in settings])
        self.min_p = [s.min_p for s in settings]
        self.top_k = [s.top_k for s in settings]

    def filter(self, logits: torch.Tensor) -> torch.Tensor:
        """Top-k, then min-p, each on the rows that ask for it."""
        for k in sorted(set(self.top_k) - {0}):
            rows = torch.tensor([row_k == k for row_k in self.top_k], device=logits.device)[:, None]
            cut = logits < logits.topk(min(k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(cut & rows, float("-inf"))
        if any(self.min_p):
            logits = min_p_filter(logits, self.min_p)
        return logits

    def penalise(self, logits: torch.Tensor, seen: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Repetition penalty on the tokens each row has already seen (prefix included), then OpenAI's presence and
        frequency penalties on the tokens of the continuation."""
        rows, tokens = (seen & (self.penalty != 1.0)).nonzero(as_tuple=True)  # a few tokens a row: not the vocabulary
        if len(rows):
            values, penalty = logits[rows, tokens], self.penalty[rows, 0]
            logits = logits.index_put((rows, tokens), torch.where(values > 0, values / penalty, values * penalty))
        if bool((self.presence != 0).any() or (self.frequency != 0).any()):
            logits = logits - self.presence * (counts > 0) - self.frequency * counts
        return logits


def draw(probs: torch.Tensor, generators: list[torch.Generator]) -> list[int]:
    """One token per row of `probs` (finite probabilities, most of them zero after the filters), each row drawn with its
    own generator by the exponential race that `torch.multinomial` runs: the token whose probability over an Exp(1)
    draw is largest. Only the tokens a row can take race, one draw each, not the whole vocabulary: at 64 rows a step
    draws in 5 ms rather than 100 (NOTEBOOK, "A bfloat16 decoder"). The distribution is the same, the text another."""
    rows, tokens = probs.nonzero(as_tuple=True)
    counts = torch.bincount(rows, minlength=len(probs)).tolist()
    return [int(row_tokens[(row_probs / torch.empty(len(row_probs)).exponential_(generator=generator)).argmax()])
            for row_probs, row_tokens, generator in zip(probs[rows, tokens].split(counts), tokens.split(counts),
                                                        generators)]


def min_p_filter(logits: torch.Tensor, min_p: float | list[float]) -> torch.Tensor:
    """Drop the tokens less than min_p times as likely as the most likely one (min-p sampling).

    Unlike top-p, the cut follows the decoder's confidence: where the soft prompts make one word clearly
    likely, the long tail of unlikely words, which carries little of the requested attribute, is cut off.
    """
    values = [min_p] if isinstance(min_p, (int, float)) else min_p
    log_min_p = torch.tensor([math.log(m) if m > 0 else float("-inf") for m in values], device=logits.device)[:, None]
    log_probs = F.log_softmax(logits, dim=-1)
    floor = log_probs.max(dim=-1, keepdim=True).values + log_min_p
    return logits.masked_fill(log_probs < floor, float("-inf"))


def top_p_filter(probs: torch.Tensor, top_p: float | torch.Tensor) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability mass reaches top_p (a number, or one per row), renormalised.

    Only the likeliest `TOP_P_HEAD` tokens of each row are sorted when they decide every row: their mass passes top_p
    (with a margin for rounding), or the rest of the row is zero, as after min-p. Sorting the whole vocabulary was
    most of the cost of drawing a token in a large batch; the tokens kept are the same (only exactly tied
    probabilities at the cut may be taken in another order).
    """
    keep_all = torch.as_tensor(top_p, device=probs.device) >= 1.0  # rows that keep every token, as they are
    if bool(keep_all.all()):
        return probs
    sorted_probs, order = probs.topk(min(TOP_P_HEAD, probs.shape[-1]), dim=-1)
    head_decides = (sorted_probs.sum(-1, keepdim=True) > top_p + 1e-4) | (sorted_probs[:, -1:] == 0) | keep_all
    if not bool(head_decides.all()):
        sorted_probs, order = probs.sort(dim=-1, descending=True)
    outside = sorted_probs.cumsum(-1) - sorted_probs > top_p
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    filtered = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.where(keep_all, probs, filtered / filtered.sum(-1, keepdim=True))
