"""A sentence-transformers folder of the common shape (a transformer, mean pooling, normalisation), run without
sentence-transformers.

Importing sentence-transformers costs about two seconds of every start on a 2-core CPU (NOTEBOOK, "Start-up"),
more than generating a sample. The default encoder, all-MiniLM-L6-v2, and the tiny test encoders have this shape:
for them this module gives the same embeddings, bit for bit (tests/test_loading.py checks it against
sentence-transformers), by doing what sentence-transformers does: sort texts by length, tokenise each batch with
padding and the folder's length limit, mean-pool the last hidden states over the attention mask, normalise. Any
other folder, and every hub name, is loaded by sentence-transformers itself (`pretrained.load_sentence_transformer`).
The transformer itself runs on dglm's own forward pass when it is a BERT, as the default's is (`dglm.stages.bert`),
and on transformers otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from dglm.stages import bert
from dglm.stages.quiet import quiet_loading
from dglm.stages.tokenizer import FolderTokenizer

MODULES = ("Transformer", "Pooling", "Normalize")  # the last part of each module's type name in modules.json
ENCODER_ONLY = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel",
                "umt5": "UMT5EncoderModel"}  # seq2seq models' encoders


def is_pooled_folder(folder: Path) -> bool:
    """Whether `folder` is a sentence-transformers folder of exactly a transformer, mean pooling and normalisation."""
    try:
        modules = json.loads((folder / "modules.json").read_text())
        types = tuple(module["type"].rsplit(".", 1)[-1] for module in modules)
        pooling = json.loads((folder / modules[1]["path"] / "config.json").read_text())
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return False
    mode = pooling.get("pooling_mode") or ("mean" if pooling.get("pooling_mode_mean_tokens") else None)
    only_mean = mode == "mean" and not any(pooling.get(f"pooling_mode_{other}") for other in
                                           ("cls_token", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens",
                                            "lasttoken"))
    return types == MODULES and modules[0].get("path", "") == "" and only_mean


def folder_transformer(folder: Path, device: str) -> tuple:
    """A pooled folder's transformer and tokenizer: a BERT (the default encoder's) on dglm's own forward pass and the
    `tokenizers` library, sparing every start transformers' model machinery; any other through transformers."""
    if bert.fits(folder) and FolderTokenizer.fits(folder):
        return bert.BertEncoder.from_folder(folder, device), FolderTokenizer(folder, token_types=True)
    import transformers

    with quiet_loading():
        config = transformers.AutoConfig.from_pretrained(str(folder))
        model_class = getattr(transformers, ENCODER_ONLY.get(config.model_type, "AutoModel"))
        return (model_class.from_pretrained(str(folder)).to(device).eval(),
                transformers.AutoTokenizer.from_pretrained(str(folder)))


class PooledEncoder:
    """The transformer of a pooled folder, its tokenizer and its length limit (`max_seq_length`, in word pieces)."""

    def __init__(self, folder: Path, device: str = "cpu"):
        self.model, self.tokenizer = folder_transformer(folder, device)
        config = self.model.config
        settings_path = folder / "sentence_bert_config.json"
        settings = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
        limits = [self.tokenizer.model_max_length, getattr(config, "max_position_embeddings", None)]
        self.max_seq_length = int(settings.get("max_seq_length") or min(limit for limit in limits if limit))
        self.lowercase = bool(settings.get("do_lower_case", False))
        self.device = device

    def get_sentence_embedding_dimension(self) -> int:
        return int(self.model.config.hidden_size)  # T5's d_model answers to this name too

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64, show_progress_bar: bool = False,
               **_: object) -> torch.Tensor:
        """Unit embeddings, one row per text, in the order given."""
        from tqdm.auto import tqdm

        order = sorted(range(len(texts)), key=lambda index: -len(texts[index]))  # as sentence-transformers batches
        pooled = []
        for start in tqdm(range(0, len(texts), batch_size), desc="encoding", disable=not show_progress_bar):
            batch = [texts[index] for index in order[start:start + batch_size]]
            batch = [text.lower() for text in batch] if self.lowercase else batch
            features = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_seq_length,
                                      return_tensors="pt").to(self.device)
            tokens = self.model(**features).last_hidden_state
            mask = features["attention_mask"].unsqueeze(-1).expand(tokens.size()).to(tokens.dtype)
            means = torch.sum(tokens * mask, 1) / torch.clamp(mask.sum(1), min=1e-9)
            pooled.append(F.normalize(means, p=2, dim=1))
        embeddings = torch.cat(pooled) if pooled else torch.empty(0, self.get_sentence_embedding_dimension())
        result = torch.empty_like(embeddings)
        result[torch.tensor(order, dtype=torch.long)] = embeddings
        return result
