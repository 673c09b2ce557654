"""Loading the frozen models fast without changing what they compute: a pooled sentence-transformers folder runs on
transformers alone and gives sentence-transformers' embeddings bit for bit; the decoder adapter merges as peft
merges it; a file is hashed once until it changes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from dglm.stages.pooled_encoder import PooledEncoder, is_pooled_folder
from dglm.stages.pretrained import OFFLINE_ENCODERS, file_sha256, load_sentence_transformer

TEXTS = ["The movie", "A much longer prefix about a storm at sea that the sailors remembered for years", "x",
         "The chicken was a bad idea. It's not the kind of thing you can just sit around and laugh about", "Hi there",
         "Today", "   spaced   out   ", "émigrés and naïve cafés ☕"]


def sentence_transformers_embeddings(folder, texts, batch_size):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu").encode(texts, batch_size=batch_size, convert_to_tensor=True)


@pytest.mark.parametrize("batch_size", [3, 64])
def test_a_pooled_folder_encodes_as_sentence_transformers_does_bit_for_bit(tiny_models, batch_size):
    encoder = load_sentence_transformer(str(tiny_models["encoder"]))
    assert isinstance(encoder, PooledEncoder)
    ours = encoder.encode(TEXTS, batch_size=batch_size)
    assert torch.equal(ours, sentence_transformers_embeddings(tiny_models["encoder"], TEXTS, batch_size))
    assert encoder.get_sentence_embedding_dimension() == ours.shape[1] == 32 and encoder.max_seq_length == 64


@pytest.mark.integration
def test_the_default_encoder_is_pooled_and_bit_for_bit_sentence_transformers():
    folder = OFFLINE_ENCODERS["all-MiniLM-L6-v2"].locate()
    encoder = load_sentence_transformer("all-MiniLM-L6-v2")
    assert isinstance(encoder, PooledEncoder) and encoder.max_seq_length == 256
    long_texts = TEXTS + ["word " * 400]  # past the window: cut as sentence-transformers cuts it
    assert torch.equal(encoder.encode(long_texts, batch_size=4), sentence_transformers_embeddings(folder, long_texts, 4))


def test_a_folder_of_another_shape_is_left_to_sentence_transformers(tiny_models, tmp_path):
    folder = tmp_path / "cls-pooled"
    shutil.copytree(tiny_models["encoder"], folder)
    pooling = folder / "1_Pooling" / "config.json"
    pooling.write_text(json.dumps({**json.loads(pooling.read_text()), "pooling_mode": "cls"}))
    assert is_pooled_folder(tiny_models["encoder"]) and not is_pooled_folder(folder)
    encoder = load_sentence_transformer(str(folder))
    assert type(encoder).__name__ == "SentenceTransformer"
    assert not is_pooled_folder(tmp_path / "nowhere")


def test_the_adapter_merges_bit_for_bit_as_peft_merges_it(tiny_models):
    from peft.tuners.tuners_utils import BaseTunerLayer

    from dglm.config import AdapterConfig
    from dglm.stages.decoder_adapter import ADAPTER_PREFIX, adapter_state, add_adapter, load_adapter
    from dglm.stages.pretrained import load_causal_lm

    config = AdapterConfig(rank=2, alpha=6.0, targets=["c_attn", "c_proj"])
    by_peft, _ = load_causal_lm(str(tiny_models["decoder"]))
    add_adapter(by_peft, config)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in by_peft.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    state = adapter_state(by_peft)
    assert state and all(key.startswith(ADAPTER_PREFIX) for key in state)
    with torch.no_grad():
        for name, module in list(by_peft.named_modules()):
            if isinstance(module, BaseTunerLayer):
                module.merge()
                parent, attribute = name.rsplit(".", 1)
                setattr(by_peft.get_submodule(parent), attribute, module.get_base_layer())
    ours, _ = load_causal_lm(str(tiny_models["decoder"]))
    load_adapter(ours, config, state)
    merged, expected = ours.state_dict(), by_peft.state_dict()
    assert merged.keys() == expected.keys() and all(torch.equal(merged[key], expected[key]) for key in merged)
    plain, _ = load_causal_lm(str(tiny_models["decoder"]))
    assert not torch.equal(plain.state_dict()["transformer.h.0.attn.c_attn.weight"], merged["transformer.h.0.attn.c_attn.weight"])


def test_an_adapter_that_does_not_fit_the_decoder_is_refused(tiny_models):
    from dglm.config import AdapterConfig
    from dglm.errors import DglmError
    from dglm.stages.decoder_adapter import ADAPTER_PREFIX, load_adapter
    from dglm.stages.pretrained import load_causal_lm

    model, _ = load_causal_lm(str(tiny_models["decoder"]))
    state = {f"{ADAPTER_PREFIX}transformer.h.0.attn.c_attn.lora_A.weight": torch.zeros(2, 32)}
    with pytest.raises(DglmError, match="does not fit decoder GPT2LMHeadModel: 2 adapted layers missing"):
        load_adapter(model, AdapterConfig(rank=2, targets=["c_attn"]), state)


def test_a_file_is_hashed_once_until_it_changes(tmp_path, monkeypatch):
    import hashlib
    import os

    monkeypatch.setenv("DGLM_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights")
    assert file_sha256(model) == hashlib.sha256(b"weights").hexdigest()
    calls = []
    monkeypatch.setattr(hashlib, "sha256", lambda data=b"": calls.append(data) or hashlib.new("sha256", data))
    assert file_sha256(model) == hashlib.new("sha256", b"weights").hexdigest()
    assert [call for call in calls if call != str(model.resolve()).encode()] == []  # only the stamp's name was hashed
    model.write_bytes(b"other weights")
    os.utime(model, ns=(1, 1))
    assert file_sha256(model) == hashlib.new("sha256", b"other weights").hexdigest()
