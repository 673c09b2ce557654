"""dglm's own Llama and BERT forward passes and its tokenizer-file reader (`dglm.stages.llama`, `bert`, `tokenizer`),
which spare every start transformers' model machinery, against transformers on tiny random models.

Every way generation calls the decoder must give logits equal bit for bit to transformers' (padded prefixes, soft
prompts, rows that leave and join a running batch, later segments that continue what was read), in both number
formats; otherwise a seed's text would depend on which loader ran it.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
from conftest import _tokenizer, toy_sentences

from dglm.config import DecodingSettings
from dglm.stages.decoder import SoftPromptDecoder
from dglm.stages.llama import LlamaDecoder
from dglm.stages.pretrained import load_causal_lm

PREFIXES = ["The movie was", "A", "The movie was", "The old house on the hill had been empty for years"]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A tiny random Llama with grouped key-value heads and tied embeddings, saved as transformers saves one."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("llama")
    tokenizer = _tokenizer(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def both(folder, dtype=torch.float32) -> tuple[SoftPromptDecoder, SoftPromptDecoder]:
    """The folder's decoder as transformers runs it and as dglm's own forward pass does, in `dtype`."""
    decoders = SoftPromptDecoder.load(str(folder), trainable=True), SoftPromptDecoder.load(str(folder))
    for decoder in decoders:
        decoder.model.requires_grad_(False)
        for parameter in decoder.model.parameters():
            parameter.data = parameter.data.to(dtype)
    return decoders


def test_a_plain_llama_folder_runs_on_dglms_forward_pass_and_training_or_another_model_on_transformers(
        tiny_llama, tiny_models):
    ours = load_causal_lm(str(tiny_llama))[0]
    assert isinstance(ours, LlamaDecoder) and ours.device == torch.device("cpu")  # the perplexity judge reads it
    assert not isinstance(load_causal_lm(str(tiny_llama), trainable=True)[0], LlamaDecoder)
    assert not isinstance(load_causal_lm(str(tiny_models["decoder"]))[0], LlamaDecoder)  # a GPT-2


def test_a_llama_file_with_other_weights_is_left_to_transformers_but_old_rotary_buffers_are_read_past(
        tiny_llama, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from dglm.stages import llama

    weights = load_file(str(tiny_llama / "model.safetensors"))
    for extra, runs_here in (("model.layers.0.self_attn.rotary_emb.inv_freq", True), ("score.weight", False)):
        folder = tmp_path / extra
        shutil.copytree(tiny_llama, folder)
        save_file({**weights, extra: torch.ones(4)}, str(folder / "model.safetensors"))
        assert llama.fits(folder) is runs_here
    assert llama.fits(tiny_llama)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_generation_gives_transformers_logits_bit_for_bit_with_padding_soft_prompts_and_shared_contexts(
        tiny_llama, dtype):
    outcomes = []
    for decoder in both(tiny_llama, dtype):
        soft = torch.randn(len(PREFIXES), 3, 32, generator=torch.Generator().manual_seed(1))
        steps = []
        generators = [torch.Generator().manual_seed(row) for row in range(len(PREFIXES))]
        tokens = decoder.generate_tokens(PREFIXES, soft, generators, DecodingSettings(max_new_tokens=10),
                                         on_step=lambda written, finished, logits: steps.append(logits.clone()))
        outcomes.append((tokens, steps))
    (their_tokens, their_steps), (our_tokens, our_steps) = outcomes
    assert our_tokens == their_tokens
    assert len(our_steps) == len(their_steps) and all(torch.equal(a, b) for a, b in zip(our_steps, their_steps))


@pytest.mark.parametrize("prefixes", [PREFIXES[:1], ["The movie was", "A movie was"]], ids=["one", "unpadded"])
def test_an_unpadded_prefill_takes_sdpas_causal_path_as_transformers_does(tiny_llama, prefixes):
    """Without padding the mask is dropped and attention is causal by SDPA's flag (`llama.attention_mask_for`)."""
    steps = []
    for decoder in both(tiny_llama):
        assert len({len(ids) for ids in decoder.token_ids(prefixes)}) == 1
        seen = []
        decoder.generate_tokens(prefixes, None, [torch.Generator().manual_seed(row) for row in range(len(prefixes))],
                                DecodingSettings(max_new_tokens=6),
                                on_step=lambda written, finished, logits: seen.append(logits.clone()))
        steps.append(seen)
    assert len(steps[0]) == len(steps[1]) and all(torch.equal(a, b) for a, b in zip(*steps))


def test_rows_that_leave_and_join_a_running_batch_get_transformers_logits_bit_for_bit(tiny_llama):
    logits = []
    for decoder in both(tiny_llama):
        soft = torch.randn(4, 2, 32, generator=torch.Generator().manual_seed(2))
        generators = [torch.Generator().manual_seed(row) for row in range(4)]
        settings = DecodingSettings(max_new_tokens=12)
        running = decoder.start(PREFIXES[:2], soft[:2], generators[:2], settings)
        seen = []
        for step in range(6):
            running.sample()
            running.advance()
            if step == 2:
                running.keep([1])  # the first row leaves
                running.join(decoder.start(PREFIXES[2:], soft[2:], generators[2:], settings))
            seen.append(running.logits.clone())
        logits.append(seen)
    assert all(torch.equal(a, b) for a, b in zip(*logits))


def test_every_hidden_state_equals_transformers_with_right_padding(tiny_llama):
    outputs = []
    for decoder in both(tiny_llama):
        batch = decoder.tokenizer(PREFIXES, add_special_tokens=False, padding=True, padding_side="right",
                                  return_tensors="pt")
        with torch.no_grad():
            outputs.append(decoder.model(**batch, output_hidden_states=True).hidden_states)
    assert len(outputs[0]) == len(outputs[1]) == 3
    assert all(torch.equal(a, b) for a, b in zip(*outputs))


def test_segments_and_candidates_write_the_same_text_on_either_forward_pass(tiny_llama, tiny_config, tiny_pipeline):
    from dglm.pipeline import Pipeline

    config = dataclasses.replace(tiny_config, decoder=str(tiny_llama))
    texts = []
    for decoder in both(tiny_llama):
        pipeline = Pipeline(config, tiny_pipeline.encoder, decoder, tiny_pipeline.parts)
        samples = pipeline.generate(PREFIXES[:2], num_samples=2, seed=3, max_new_tokens=16, segment_tokens=5,
                                    candidates=2)
        texts.append([sample.continuation for sample in samples])
    assert texts[0] == texts[1] and any(texts[0])


def test_packed_rows_attend_only_within_themselves_as_in_transformers(tiny_llama):
    """`SoftPromptDecoder.loss` packs rows into one sequence whose positions restart at each row."""
    losses = []
    for decoder in both(tiny_llama):
        soft = torch.randn(3, 2, 32, generator=torch.Generator().manual_seed(4))
        losses.append(decoder.loss(PREFIXES[:3], ["went on and on", "B", "was quiet"], soft))
    assert torch.equal(*losses)


def test_the_tokenizer_file_reader_gives_transformers_ids_offsets_padding_and_text(tiny_llama):
    from transformers import AutoTokenizer

    from dglm.stages.tokenizer import FolderTokenizer

    theirs, ours = AutoTokenizer.from_pretrained(str(tiny_llama)), FolderTokenizer(tiny_llama)
    texts = toy_sentences(40) + ["", "  spaced  out ", "naïve café \U0001F600"]
    assert (len(ours), ours.eos_token_id, ours.pad_token_id) == (len(theirs), theirs.eos_token_id,
                                                               theirs.pad_token_id)
    for options in [{"add_special_tokens": False}, {"return_offsets_mapping": True},
                    {"padding": True, "truncation": True, "max_length": 7, "return_tensors": "pt"},
                    {"padding": True, "padding_side": "left", "return_tensors": "pt"}]:
        want, have = theirs(texts, **options), ours(texts, **options)
        assert set(have) - {"token_type_ids"} == set(want) - {"token_type_ids"}, options  # a Llama takes no types
        for key in have:
            same = torch.equal(want[key], have[key]) if options.get("return_tensors") else want[key] == have[key]
            assert same, (options, key)
    ids = [theirs(text, add_special_tokens=False)["input_ids"] + [theirs.eos_token_id] for text in texts]
    assert [ours.decode(row, skip_special_tokens=True) for row in ids] == theirs.batch_decode(
        ids, skip_special_tokens=True)
    assert ours.batch_decode(ids) == theirs.batch_decode(ids)


@pytest.mark.parametrize("extra", [{}, {"clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output": True}])
def test_the_tokenizer_file_reader_cleans_up_spaces_only_where_transformers_does(tiny_llama, tmp_path, extra):
    """A folder asking for `clean_up_tokenization_spaces` gets it on a BPE tokenizer only when it insists."""
    import json
    import shutil

    from transformers import AutoTokenizer

    from dglm.stages.tokenizer import FolderTokenizer

    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_llama / name, tmp_path / name)
    settings = json.loads((tmp_path / "tokenizer_config.json").read_text())
    settings.update(clean_up_tokenization_spaces=True, **extra)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(settings))
    theirs, ours = AutoTokenizer.from_pretrained(str(tmp_path)), FolderTokenizer(tmp_path)
    ids = theirs("The movie , was n't it ? It 's good .", add_special_tokens=False)["input_ids"]
    assert ours.decode(ids) == theirs.decode(ids) and ours.batch_decode([ids]) == theirs.batch_decode([ids])


def test_dglms_bert_gives_transformers_hidden_states_bit_for_bit_with_and_without_padding(tmp_path):
    from transformers import BertConfig, BertModel

    from dglm.stages.bert import BertEncoder, fits

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=64)).save_pretrained(tmp_path)
    assert fits(tmp_path)
    theirs, ours = BertModel.from_pretrained(str(tmp_path)).eval(), BertEncoder.from_folder(tmp_path)
    ids = torch.randint(1, 120, (3, 9), generator=torch.Generator().manual_seed(0))
    for mask in (torch.ones(3, 9, dtype=torch.long), torch.tensor([[1] * 9, [1] * 4 + [0] * 5, [1] * 7 + [0] * 2])):
        types = torch.zeros_like(ids)
        with torch.no_grad():
            want = theirs(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
            have = ours(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        assert torch.equal(want, have)


@pytest.mark.integration
def test_generating_on_the_bundled_model_never_imports_transformers_or_its_model_machinery():
    """What keeps a warm start near `import torch` (NOTEBOOK, "Start-up"): the default decoder, encoder and their
    tokenizers run without transformers, sentence-transformers or torch's compiler stack."""
    script = ("import sys; from dglm import Pipeline; Pipeline.from_pretrained().generate('The movie', 'sentiment="
              "positive', seed=0); print(sorted(m for m in ('transformers', 'sentence_transformers', 'peft', "
              "'torch._dynamo', 'sklearn') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
