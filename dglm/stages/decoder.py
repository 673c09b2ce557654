"""The autoregressive decoder, fed [prefix tokens ; soft prompts] through `inputs_embeds`.

Sampling is written out here (top-p, temperature, repetition penalty, KV cache) rather than
delegated to `generate`, so that each row draws from its own generator: a sample's text then
depends on its seed only, whether it is generated alone or in a batch.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

import torch
import torch.nn.functional as F

from dglm.config import DecodingSettings
from dglm.errors import DglmError


class SoftPromptDecoder:
    def __init__(self, model, tokenizer, name: str):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name

    @classmethod
    def load(cls, name: str, device: str = "cpu") -> "SoftPromptDecoder":
        """The decoder named `name` (a local path, an offline registry package or a hub name), as published."""
        from dglm.stages.pretrained import load_causal_lm

        model, tokenizer = load_causal_lm(name, device=device)
        return cls(model, tokenizer, name)

    @property
    def _cache_name(self) -> str:
        """The key-value cache's argument and output name: `cache` since transformers 5.2x renamed
        `past_key_values` (the old name is deprecated there); older 5.x releases know only the old one. The model
        class's signature is read, not the instance's `forward`, which a wrapper (a profiler, a test) may replace."""
        return "cache" if "cache" in inspect.signature(type(self.model).forward).parameters else "past_key_values"

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().embedding_dim)

    @property
    def vocab_size(self) -> int:
        """Token ids run from 0 to this, less one (the LM head's rows, which may exceed the tokenizer's)."""
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids, without special tokens: one tokenizer call for the batch, not one per text
        (with a fast tokenizer, per-text calls cost more than a tiny model's forward pass)."""
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    def count_tokens(self, text: str) -> int:
        return len(self.token_ids([text])[0])

    @property
    def context(self) -> int | None:
        """The most positions the model can attend to (None when its config does not say)."""
        config = self.model.config
        return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)

    def check_fits(self, prefix_ids: list[int], soft_prompts: int, max_new_tokens: int) -> None:
        """Refuse a prefix that, with the soft prompts and the tokens to write, would overrun the decoder's context
        (the model would fail deep inside, or silently wrap its positions)."""
        context = self.context
        if context and len(prefix_ids) + soft_prompts + max_new_tokens > context:
            raise DglmError(f"a prefix of {len(prefix_ids)} tokens ({self.tokenizer.decode(prefix_ids[:8])!r}...) with "
                            f"{soft_prompts} soft prompts and {max_new_tokens} new tokens overruns the decoder's "
                            f"context of {context} tokens; shorten the prefix or ask for fewer tokens")

    def _left_padded(self, prefixes: list[str], soft_prompts: torch.Tensor | None):
        """Embeddings, attention mask and token ids of [pad ; prefix ; soft prompts], left-padded."""
        ids = self.token_ids(prefixes)
        if any(len(row) == 0 for row in ids):
            raise DglmError("a prefix produced no tokens; give a non-empty prefix")
        width = max(map(len, ids))
        pad = self.tokenizer.pad_token_id
        padded = torch.tensor([[pad] * (width - len(row)) + row for row in ids], device=self.device)
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids], device=self.device)
        embeds = self.model.get_input_embeddings()(padded)
        if soft_prompts is not None:
            embeds = torch.cat([embeds, soft_prompts.to(embeds.dtype)], dim=1)
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], soft_prompts.shape[1])], dim=1)
        return embeds, mask, ids

    def generate(
        self,
        prefixes: list[str],
        soft_prompts: torch.Tensor | None,
        generators: list[torch.Generator],
        settings: DecodingSettings | list[DecodingSettings],
        adjust_logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> list[str]:
        """Sample one continuation per row and return its text; see `generate_tokens`."""
        return [self.decode(ids) for ids in self.generate_tokens(prefixes, soft_prompts, generators, settings,
                                                                 adjust_logits)]

    @torch.no_grad()
    def generate_tokens(
        self,
        prefixes: list[str],
        soft_prompts: torch.Tensor | None,
        generators: list[torch.Generator],
        settings: DecodingSettings | list[DecodingSettings],
        adjust_logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        on_step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None,
        logit_bias: list[dict[int, float]] | None = None,
    ) -> list[list[int]]:
        """Sample one continuation per row; soft_prompts is (rows, k, hidden) or None for plain sampling.

        Returns each row's token ids, ending with the end-of-sequence token when the row stopped on it.
        `settings` is one DecodingSettings for all rows or one per row (a server batches requests that
        differ in temperature, top-p, length...). `adjust_logits(logits, generated)` may rewrite each step's
        logits given the tokens generated so far (rows x step); token-level steering baselines plug in here.
        `logit_bias`: one {token id: bias} per row, added to the logits before any filter (OpenAI's field).
        `on_step(generated, finished, logits)` sees the tokens after each step, for streaming, with the step's
        logits (rows x vocabulary) as the decoder gave them with the soft prompts, before filters, penalties, bias and
        temperature (what OpenAI's `logprobs` report), and may return a boolean mask of rows to stop (a client that
        went away).
        """
        rows = len(prefixes)
        row_settings = RowSettings(settings if isinstance(settings, list) else [settings] * rows, self.device)
        embeds, mask, ids = self._left_padded(prefixes, soft_prompts)
        for row_ids, limit in zip(ids, row_settings.max_new_tokens.tolist()):
            self.check_fits(row_ids, 0 if soft_prompts is None else soft_prompts.shape[1], limit)
        vocab = self.vocab_size
        bias = bias_table(logit_bias, rows, vocab, self.device)
        seen = torch.zeros(rows, vocab, dtype=torch.bool, device=self.device)
        counts = torch.zeros(rows, vocab, device=self.device)  # each token's count in the continuation so far
        for row, row_ids in enumerate(ids):
            seen[row, row_ids] = True
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1)
        eos, cache_name = self.tokenizer.eos_token_id, self._cache_name
        longest = int(row_settings.max_new_tokens.max())
        generated = torch.full((rows, longest), self.tokenizer.pad_token_id, dtype=torch.long)
        finished = torch.zeros(rows, dtype=torch.bool)
        lengths = torch.zeros(rows, dtype=torch.long)
        for step in range(longest):
            raw = out.logits[:, -1].float()
            logits = row_settings.filter(raw if bias is None else raw + bias)
            if adjust_logits is not None:
                logits = adjust_logits(logits, generated[:, :step])
            logits = row_settings.penalise(logits, seen, counts)
            probs = row_settings.top_p_filter(F.softmax(logits / row_settings.divisor, dim=-1)).cpu()
            if not bool(probs.isfinite().all()):
                raise DglmError("the next-token probabilities are not finite numbers: the settings are too extreme "
                                "(a guidance or prefix-guidance scale far too large, a temperature or repetition "
                                "penalty near 0); use values closer to the defaults")
            likeliest = logits.argmax(dim=-1).tolist()
            tokens = torch.tensor([eos if done else top if greedy else torch.multinomial(p, 1, generator=g).item()
                                   for p, g, done, greedy, top in zip(probs, generators, finished, row_settings.greedy,
                                                                      likeliest)])
            generated[:, step] = torch.where(finished, generated[:, step], tokens)
            lengths += ~finished
            finished |= (tokens == eos) | (row_settings.max_new_tokens <= step + 1)
            if on_step is not None:
                stop = on_step(generated[:, : step + 1], finished, raw)
                if stop is not None:
                    finished |= stop
            if bool(finished.all()):
                break
            seen[torch.arange(rows), tokens.to(self.device)] = True
            counts[torch.arange(rows), tokens.to(self.device)] += 1
            mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
            positions = positions[:, -1:] + 1
            out = self.model(
                input_ids=tokens[:, None].to(self.device),
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{cache_name: getattr(out, cache_name)},
            )
        return [row[:length] for row, length in zip(generated.tolist(), lengths.tolist())]

    def decode(self, token_ids: list[int]) -> str:
        """Text of generated token ids, cut at the first end-of-sequence token."""
        eos = self.tokenizer.eos_token_id
        if eos in token_ids:
            token_ids = token_ids[: token_ids.index(eos)]
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def loss(self, prefixes: list[str], continuations: list[str], soft_prompts: torch.Tensor,
             max_target_tokens: int | None = None) -> torch.Tensor:
        """Mean cross-entropy of the continuation tokens given [prefix ; soft prompts] (for training)."""
        logits, labels = self._continuation_logits(prefixes, continuations, soft_prompts, max_target_tokens)
        if not labels:  # every continuation empty: nothing to predict
            return logits.sum() * 0.0
        return F.cross_entropy(logits.float(), torch.tensor(labels, device=self.device))

    def anchor_loss(self, prefixes: list[str], continuations: list[str],
                    max_target_tokens: int | None = None) -> torch.Tensor:
        """KL divergence from the published decoder to this one, both reading [prefix ; continuation] without soft
        prompts, over the continuation's tokens (for training with a LoRA adapter): it holds the adapter to changing
        the decoder only where soft prompts ask it to."""
        from dglm.stages.decoder_adapter import adapter_disabled

        adapted, _ = self._continuation_logits(prefixes, continuations, None, max_target_tokens)
        with torch.no_grad(), adapter_disabled(self.model):
            published, _ = self._continuation_logits(prefixes, continuations, None, max_target_tokens)
        if not len(adapted):  # every continuation empty
            return adapted.sum() * 0.0
        return F.kl_div(F.log_softmax(adapted.float(), -1), F.log_softmax(published.float(), -1), log_target=True,
                        reduction="batchmean")

    def _continuation_logits(self, prefixes: list[str], continuations: list[str], soft_prompts: torch.Tensor | None,
                             max_target_tokens: int | None) -> tuple[torch.Tensor, list[int]]:
        """The logits that predict each continuation token from [prefix ; soft prompts (if any) ; continuation so
        far], with the tokens they predict.

        The rows are packed into one sequence, each attending only to itself (its positions restart at 0,
        which the model reads as a new sequence), so no compute goes to padding; logits are computed only
        where a continuation token is predicted, not over the whole vocabulary at every position.
        """
        rows = [(p, c[:max_target_tokens]) for p, c in zip(self.token_ids(prefixes), self.token_ids(continuations))]
        k = 0 if soft_prompts is None else soft_prompts.shape[1]
        table = self.model.get_input_embeddings()
        embeds, positions, predict_at, labels = [], [], [], []
        offset = 0
        for row, (prefix_ids, target_ids) in enumerate(rows):
            token_embeds = table(torch.tensor(prefix_ids + target_ids, device=self.device))
            soft = [] if soft_prompts is None else [soft_prompts[row].to(token_embeds.dtype)]
            embeds += [token_embeds[: len(prefix_ids)], *soft, token_embeds[len(prefix_ids):]]
            length = len(prefix_ids) + k + len(target_ids)
            positions.append(torch.arange(length))
            # The token at position p is predicted from position p - 1: the last soft prompt (or prefix token)
            # predicts the first target.
            first = offset + len(prefix_ids) + k - 1
            predict_at.append(torch.arange(first, first + len(target_ids)))
            labels += target_ids
            offset += length
        position_ids = torch.cat(positions)[None].to(self.device)
        keep = torch.cat(predict_at).to(self.device)
        logits = self.model(inputs_embeds=torch.cat(embeds)[None], position_ids=position_ids, use_cache=False,
                            logits_to_keep=keep).logits[0]
        return logits, labels

    def bag_of_words_loss(self, continuations: list[str], soft_prompts: torch.Tensor,
                          max_target_tokens: int | None = None) -> torch.Tensor:
        """Cross-entropy of the continuation's tokens under the soft prompts read through the LM head as a
        mixture of k token distributions (for training).

        It pulls each soft prompt toward the embeddings of words the continuation uses, a form the decoder
        already knows how to read, instead of leaving the prompt generator to discover one through the
        whole decoder; with tied embeddings the LM head *is* the input embedding table.
        """
        k = soft_prompts.shape[1]
        log_probs = F.log_softmax(self.model.get_output_embeddings()(soft_prompts).float(), dim=-1)
        mixture = log_probs.logsumexp(dim=1) - math.log(k)
        targets = [sorted(set(ids[:max_target_tokens])) for ids in self.token_ids(continuations)]
        # A continuation with no tokens (the decoder may end at once when it writes targets) has nothing to teach.
        losses = [-mixture[row, ids].mean() for row, ids in enumerate(targets) if ids]
        return torch.stack(losses).mean() if losses else mixture.sum() * 0.0


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
        penalised = torch.where(logits > 0, logits / self.penalty, logits * self.penalty)
        logits = torch.where(seen & (self.penalty != 1.0), penalised, logits)
        return logits - self.presence * (counts > 0) - self.frequency * counts

    def top_p_filter(self, probs: torch.Tensor) -> torch.Tensor:
        keep_all = self.top_p >= 1.0
        if bool(keep_all.all()):
            return probs
        return torch.where(keep_all, probs, top_p_filter(probs, self.top_p))


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
    """Keep the smallest set of tokens whose probability mass reaches top_p (a number, or one per row), renormalised."""
    if not torch.is_tensor(top_p) and top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    outside = sorted_probs.cumsum(-1) - sorted_probs > top_p
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    filtered = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return filtered / filtered.sum(-1, keepdim=True)
