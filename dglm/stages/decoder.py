"""The autoregressive decoder, fed [prefix tokens ; soft prompts] through `inputs_embeds`.

Sampling is written out here (top-p, temperature, repetition penalty, KV cache) rather than
delegated to `generate`, so that each row draws from its own generator: a sample's text then
depends on its seed only, whether it is generated alone or in a batch.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Callable

import torch
import torch.nn.functional as F

from dglm.config import DecodingSettings
from dglm.endings import ends_sentence
from dglm.errors import DglmError
from dglm.stages.sampling import Continued, DecodingBatch


class SoftPromptDecoder:
    def __init__(self, model, tokenizer, name: str):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name

    @classmethod
    def load(cls, name: str, device: str = "cpu", trainable: bool = False) -> "SoftPromptDecoder":
        """The decoder named `name` (a local path, an offline registry package or a hub name), as published;
        `trainable` loads it through transformers whatever its kind, for training (`pretrained.load_causal_lm`)."""
        from dglm.stages.pretrained import load_causal_lm

        model, tokenizer = load_causal_lm(name, device=device, trainable=trainable)
        return cls(model, tokenizer, name)

    @property
    def cache_name(self) -> str:
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

    @property
    def dtype(self) -> torch.dtype:
        """The number format the decoder computes in (`dglm.stages.precision`)."""
        return self.model.get_input_embeddings().weight.dtype

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
        return self.start(prefixes, soft_prompts, generators, settings, logit_bias).run(adjust_logits, on_step)

    def start(self, prefixes: list[str | Continued], soft_prompts: torch.Tensor | None,
              generators: list[torch.Generator], settings: DecodingSettings | list[DecodingSettings],
              logit_bias: list[dict[int, float]] | None = None, keep_read: bool = False,
              end_at_sentence: list[bool] | None = None) -> DecodingBatch:
        """The rows read [prefix ; soft prompts] (the prefill), ready to be decoded a token at a time. A prefix may
        continue what the decoder read before (`Continued`: a next segment); `keep_read` keeps what each row read
        for that. The rows flagged in `end_at_sentence` end at their first token that ends a sentence."""
        settings = settings if isinstance(settings, list) else [settings] * len(prefixes)
        return DecodingBatch(self, prefixes, soft_prompts, generators, settings, logit_bias, keep_read,
                             end_at_sentence)

    @functools.cached_property
    def sentence_end_tokens(self) -> torch.Tensor:
        """Which token ids end a sentence (`dglm.endings`), their trailing spaces and line breaks aside: "Mr." and "3."
        count too, as far as one token can tell."""
        texts = self.tokenizer.batch_decode([[token] for token in range(min(len(self.tokenizer), self.vocab_size))])
        ends = torch.zeros(self.vocab_size, dtype=torch.bool)
        ends[: len(texts)] = torch.tensor([ends_sentence(text.rstrip()) for text in texts])
        return ends

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
