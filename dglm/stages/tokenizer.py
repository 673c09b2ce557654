"""A folder's `tokenizer.json`, run by the `tokenizers` library alone.

Importing transformers' tokenizer classes pulls in its model-loading machinery (torch.distributed, sympy): about two
seconds of every start on a 2-core CPU, more than the tokenizing itself ever costs (NOTEBOOK, "Start-up"). For the
default decoder and encoder this class does what transformers' fast tokenizer does with the same file, calling the
same Rust tokenizer with the same truncation and padding settings, so the ids and texts are equal (tests check it
against transformers). It offers only the part of that interface dglm uses.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


class Encoded(dict):
    """A tokenizer's output (`input_ids`, `attention_mask`, ...), movable to a device when it holds tensors."""

    def to(self, device: str | torch.device) -> Encoded:
        return Encoded({key: value.to(device) for key, value in self.items()})


class FolderTokenizer:
    """The tokenizer of a folder holding `tokenizer.json` and `tokenizer_config.json`; `token_types` says whether
    its output has `token_type_ids` (a BERT's does, a Llama's does not: its model refuses them)."""

    def __init__(self, folder: Path, token_types: bool = False):
        from tokenizers import Tokenizer

        self.token_types = token_types
        self.backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        settings = json.loads((folder / "tokenizer_config.json").read_text())
        legacy_map = folder / "special_tokens_map.json"
        if "added_tokens_decoder" not in settings and legacy_map.is_file():  # as transformers reads an older folder
            settings.update(json.loads(legacy_map.read_text()))
        # transformers skips this clean-up for a BPE tokenizer (it would strip real spaces) unless told twice
        self.clean_up_spaces = bool(settings.get("clean_up_tokenization_spaces", False)) and (
            type(self.backend.model).__name__ != "BPE"
            or bool(settings.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output")))
        self.model_max_length = int(settings.get("model_max_length") or 10**30)
        self.eos_token_id = self._id_of(settings.get("eos_token"))
        self.eos_token = None if self.eos_token_id is None else self.backend.id_to_token(self.eos_token_id)
        self.pad_token_id = self._id_of(settings.get("pad_token"))
        if self.pad_token_id is None:  # dglm pads with the end-of-text token then (`pretrained.load_causal_lm`)
            self.pad_token_id = self.eos_token_id
        self.pad_token = self.backend.id_to_token(self.pad_token_id) if self.pad_token_id is not None else None

    @staticmethod
    def fits(folder: Path) -> bool:
        """Whether `folder` has what this class reads (anything else is left to transformers)."""
        return (folder / "tokenizer.json").is_file() and (folder / "tokenizer_config.json").is_file()

    def _id_of(self, token: str | dict | None) -> int | None:
        if isinstance(token, dict):  # an AddedToken written out in full
            token = token.get("content")
        return None if token is None else self.backend.token_to_id(token)

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __call__(self, text: str | list[str], add_special_tokens: bool = True, padding: bool = False,
                 padding_side: str = "right", truncation: bool = False, max_length: int | None = None,
                 return_tensors: str | None = None, return_offsets_mapping: bool = False) -> Encoded:
        """Ids, attention mask, token types (and offsets if asked) of a text or a list of texts; as tensors with
        `return_tensors="pt"`."""
        self._configure(padding, padding_side, truncation, max_length)
        texts = [text] if isinstance(text, str) else list(text)
        encodings = self.backend.encode_batch(texts, add_special_tokens=add_special_tokens) if texts else []
        fields = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings]}
        if self.token_types:
            fields["token_type_ids"] = [e.type_ids for e in encodings]
        if return_offsets_mapping:
            fields["offset_mapping"] = [e.offsets for e in encodings]
        if return_tensors == "pt":
            return Encoded({key: torch.tensor(value, dtype=torch.long) for key, value in fields.items()})
        return Encoded({key: value[0] if isinstance(text, str) else value for key, value in fields.items()})

    def _configure(self, padding: bool, padding_side: str, truncation: bool, max_length: int | None) -> None:
        """Set the backend's truncation and padding for one call, as transformers does (a folder's file may carry
        its own): only when they differ, since changing them while another thread encodes is refused."""
        wanted = ({"max_length": max_length or self.model_max_length, "stride": 0, "strategy": "longest_first",
                   "direction": "right"} if truncation else None)
        if self.backend.truncation != wanted:
            if wanted is None:
                self.backend.no_truncation()
            else:
                self.backend.enable_truncation(**wanted)
        pad = ({"length": None, "pad_to_multiple_of": None, "pad_id": self.pad_token_id, "pad_token": self.pad_token,
                "pad_type_id": 0, "direction": padding_side} if padding else None)
        if self.backend.padding != pad:
            if pad is None:
                self.backend.no_padding()
            else:
                self.backend.enable_padding(**pad)

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._clean(self.backend.decode(list(token_ids), skip_special_tokens=skip_special_tokens))

    def batch_decode(self, sequences: list[list[int]], skip_special_tokens: bool = False) -> list[str]:
        return [self._clean(text) for text in
                self.backend.decode_batch([list(ids) for ids in sequences], skip_special_tokens=skip_special_tokens)]

    def _clean(self, text: str) -> str:
        """transformers' `clean_up_tokenization` (spaces before punctuation and English contractions), where the
        folder asks for it."""
        if not self.clean_up_spaces:
            return text
        for spaced, joined in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                               (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
            text = text.replace(spaced, joined)
        return text
