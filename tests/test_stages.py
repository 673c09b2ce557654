"""Shapes and basic behaviour of every stage, on tiny random models."""

import pytest
import torch

from dglm.config import DecodingSettings
from dglm.errors import DglmError
from dglm.seeding import sample_generators
from dglm.stages.sampling import draw, min_p_filter, top_p_filter
from dglm.stages.schedule import CosineSchedule, noise_to_level


def test_encoder_gives_unit_embeddings_of_its_dimension(tiny_pipeline):
    embeddings = tiny_pipeline.encoder.encode(["A good movie.", "The market fell."])
    assert embeddings.shape == (2, 32)
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_normalizer_round_trips_unit_embeddings(tiny_pipeline):
    normalizer = tiny_pipeline.parts.normalizer
    embeddings = torch.nn.functional.normalize(torch.randn(50, 32), dim=-1)
    normalizer_copy = type(normalizer)(32).fit(embeddings)
    latents = normalizer_copy.to_latent(embeddings)
    assert torch.allclose(latents.mean(0), torch.zeros(32), atol=1e-5)
    assert torch.allclose(normalizer_copy.to_embedding(latents), embeddings, atol=1e-5)


def test_schedule_goes_from_signal_to_noise():
    schedule = CosineSchedule()
    alpha, sigma = schedule.alpha_sigma(torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(alpha**2 + sigma**2, torch.ones(3), atol=1e-6)
    assert alpha[0] > 0.99 and alpha[2] < 0.01 and abs(alpha[1] ** 2 - 0.5) < 1e-4
    shifted_alpha, _ = CosineSchedule(shift=1.0).alpha_sigma(torch.tensor([0.5]))
    assert shifted_alpha > alpha[1]


def test_noise_to_level_keeps_variance():
    x, noise = torch.randn(1000, 8), torch.randn(1000, 8)
    assert abs(noise_to_level(x, 0.95, noise).std().item() - 1.0) < 0.05


def test_denoiser_and_prompt_generator_shapes(tiny_pipeline):
    parts = tiny_pipeline.parts
    z, prefix = torch.randn(3, 32), torch.randn(3, 32)
    v = parts.denoiser(z, torch.zeros(3), prefix, self_cond=torch.randn(3, 32))
    assert v.shape == (3, 32)
    free = parts.denoiser(z, torch.zeros(3), prefix, prefix_mask=torch.zeros(3, dtype=torch.bool))
    other_prefix = parts.denoiser(z, torch.zeros(3), torch.randn(3, 32), prefix_mask=torch.zeros(3, dtype=torch.bool))
    assert torch.allclose(free, other_prefix), "a masked prefix must be replaced by the null prefix"
    assert parts.prompt_generator(torch.randn(3, 32)).shape == (3, 2, 32)


def test_proposed_latents_become_soft_prompts_of_the_right_shape(tiny_pipeline):
    generators = sample_generators([1, 2])
    latents = tiny_pipeline.propose_latents(["One.", "Two words."], generators, diffusion=tiny_pipeline.config.diffusion.updated(steps=3))
    soft = tiny_pipeline.soft_prompts(latents, generators)
    assert soft.shape == (2, 2, 32) and torch.isfinite(soft).all()


def test_decoder_reads_its_soft_prompts(tiny_pipeline):
    """Greedy decoding (top_k 1, so that the near-flat logits of a random decoder cannot hide it): each row's text
    follows its own soft prompts, and the same soft prompts give the same text."""
    decoder, settings = tiny_pipeline.decoder, DecodingSettings(max_new_tokens=6, top_k=1)

    def write(soft):
        return decoder.generate_tokens(["The movie", "A"], soft, sample_generators([1, 2]), [settings, settings])

    first, second = (torch.randn(2, 2, 32, generator=torch.Generator().manual_seed(seed)) for seed in (0, 1))
    plain, steered, other = write(None), write(first), write(second)
    assert all(len({tuple(plain[row]), tuple(steered[row]), tuple(other[row])}) == 3 for row in range(2))
    assert write(first) == steered
    assert decoder.decode(steered[0]) == decoder.generate(["The movie", "A"], first, sample_generators([1, 2]), settings)[0]


def test_decoder_loss_is_finite_and_reaches_soft_prompts(tiny_pipeline):
    soft = (torch.randn(2, 2, 32) * 0.02).requires_grad_(True)
    loss = tiny_pipeline.decoder.loss(["The movie", "A film"], [" was good.", " was bad and dull."], soft)
    loss.backward()
    assert torch.isfinite(loss) and soft.grad.abs().sum() > 0


def test_top_p_keeps_the_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = top_p_filter(probs, 0.7)
    assert torch.allclose(kept, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    assert torch.equal(top_p_filter(probs, 1.0), probs)


def test_top_p_keeps_the_same_tokens_whether_the_likeliest_decide_or_the_whole_vocabulary_is_sorted():
    """The filter sorts only a row's likeliest tokens when they decide the cut; the result must be the full sort's."""
    def fully_sorted(probs, top_p):
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        sorted_probs = sorted_probs.masked_fill(sorted_probs.cumsum(-1) - sorted_probs > top_p, 0.0)
        filtered = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        return filtered / filtered.sum(-1, keepdim=True)

    generator = torch.Generator().manual_seed(0)
    peaked = torch.randn(8, 3000, generator=generator) * 6  # a nucleus of a few tokens: the likeliest decide
    flat = torch.randn(8, 3000, generator=generator) * 0.1  # a nucleus of thousands: the whole row is sorted
    cut = min_p_filter(torch.randn(8, 3000, generator=generator) * 3, 0.2)  # zeros past a short head
    for logits in (peaked, flat, cut, torch.cat([peaked, flat])):
        probs = torch.softmax(logits, dim=-1)
        for top_p in (0.5, 0.9, torch.rand(len(probs), 1, generator=generator)):
            assert torch.equal(top_p_filter(probs, top_p), fully_sorted(probs, top_p))
        per_row = torch.full((len(probs), 1), 0.9)
        per_row[0] = 1.0  # a row that keeps every token stays as it is, beside rows that are cut
        kept = top_p_filter(probs, per_row)
        assert torch.equal(kept[0], probs[0]) and torch.equal(kept[1:], fully_sorted(probs[1:], 0.9))


def test_a_draw_takes_only_kept_tokens_as_often_as_their_probability_and_each_row_from_its_own_generator():
    probs = torch.zeros(3, 1000)
    probs[0, [3, 500, 999]] = torch.tensor([0.5, 0.3, 0.2])
    probs[1, 42] = 1.0
    probs[2, [7, 8]] = torch.tensor([0.9, 0.1])
    generators = sample_generators([0, 1, 2])
    drawn = [draw(probs, generators) for _ in range(4000)]
    firsts = torch.tensor([row[0] for row in drawn])
    assert {token for row in drawn for token in row[:1]} <= {3, 500, 999} and all(row[1] == 42 for row in drawn)
    for token, share in [(3, 0.5), (500, 0.3), (999, 0.2)]:
        assert abs(float((firsts == token).float().mean()) - share) < 0.03, token
    assert {row[2] for row in drawn} == {7, 8}
    # A row's draws depend on its generator alone, not on the rows drawn beside it, and use it as much alone.
    even = torch.zeros(4, 1000)
    even[:, 100:150] = 1 / 50
    shared, alone = sample_generators([5, 6, 7, 8]), sample_generators([5, 6, 7, 8])
    together = [draw(even, shared) for _ in range(5)]
    assert together == [[draw(even[row:row + 1], [alone[row]])[0] for row in range(4)] for _ in range(5)]
    assert len({tuple(row) for row in together}) > 1 and len(set(together[0])) > 1
    assert [float(torch.rand(1, generator=g)) for g in shared] == [float(torch.rand(1, generator=g)) for g in alone]


def test_bag_of_words_loss_rewards_soft_prompts_on_the_continuations_words(tiny_pipeline):
    decoder = tiny_pipeline.decoder
    text = " great movie"
    ids = decoder.tokenizer(text, add_special_tokens=False)["input_ids"]
    table = decoder.model.get_input_embeddings().weight.detach()
    others = [i for i in range(len(table)) if i not in ids][: len(ids)]
    on_words = table[ids][None] * 20  # one soft prompt per token of the text, scaled up to be peaked
    elsewhere = table[others][None] * 20
    assert decoder.bag_of_words_loss([text], on_words) < decoder.bag_of_words_loss([text], elsewhere)


def test_an_empty_continuation_adds_nothing_to_the_training_losses(tiny_pipeline):
    """The decoder sometimes ends at once when it writes its own targets: such a pair must not turn a batch's loss
    into NaN (a mean over no tokens), and must not change what the other rows are taught."""
    decoder = tiny_pipeline.decoder
    torch.manual_seed(0)
    soft = torch.randn(2, 3, decoder.model.get_input_embeddings().weight.shape[1], requires_grad=True)
    alone = decoder.bag_of_words_loss([" a fine day"], soft[:1])
    assert torch.allclose(decoder.bag_of_words_loss([" a fine day", ""], soft), alone)
    with_empty = decoder.loss(["It was", "Then"], [" a fine day", ""], soft)
    assert torch.allclose(with_empty, decoder.loss(["It was"], [" a fine day"], soft[:1]))
    nothing = (decoder.bag_of_words_loss([""], soft[:1]) + decoder.loss(["Then"], [""], soft[:1])
               + decoder.anchor_loss(["Then"], [""]))
    assert float(nothing.detach()) == 0.0
    nothing.backward()  # a training step on such a batch goes through, and moves nothing
    assert not soft.grad.any()


def test_planned_rows_decode_without_building_a_graph(tiny_pipeline):
    """Generation outside `torch.no_grad` (the server's worker, the evaluation) must not record autograd graphs: one
    kept through every step holds every step's activations (gigabytes at batch 32) and slows each step."""
    rows = list(tiny_pipeline.plan(["The movie", "A film"], None, 1, seed=1, max_new_tokens=3))
    writing = tiny_pipeline.start_writing(rows, [r.prefix for r in rows], [r.seed for r in rows],
                                          [r.decoding for r in rows])
    writing.batch.sample()
    writing.batch.advance()
    assert not writing.batch.logits.requires_grad
    assert not any(layer.keys.requires_grad for layer in writing.batch.cache.layers)


def reading_widths(decoder, monkeypatch) -> list[tuple[int, int]]:
    """Record the (rows, positions) of every input the decoder's model reads from now on."""
    widths, forward = [], decoder.model.forward

    def recorded(*args, **kwargs):
        inputs = kwargs.get("inputs_embeds") if kwargs.get("inputs_embeds") is not None else kwargs["input_ids"]
        widths.append(tuple(inputs.shape[:2]))
        return forward(*args, **kwargs)

    monkeypatch.setattr(decoder.model, "forward", recorded)
    return widths


def test_rows_with_the_same_context_share_one_reading_of_it_and_write_as_they_would_alone(tiny_pipeline,
                                                                                           monkeypatch):
    decoder, settings = tiny_pipeline.decoder, DecodingSettings(max_new_tokens=5, min_p=0.0, top_p=0.95)
    soft = torch.randn(3, 2, 32, generator=torch.Generator().manual_seed(0))
    alone = [decoder.generate_tokens([prefix], soft[row:row + 1], sample_generators([row]), settings)[0]
             for row, prefix in enumerate(["The movie", "The movie", "A film about the sea"])]
    widths = reading_widths(decoder, monkeypatch)
    together = decoder.generate_tokens(["The movie", "The movie", "A film about the sea"], soft,
                                       sample_generators([0, 1, 2]), settings)
    assert together == alone
    assert widths[0][0] == 2 and widths[1] == (3, 2)  # two contexts read, then each row's soft prompts


def test_rows_whose_cache_cannot_be_shared_read_their_context_each(tiny_pipeline, monkeypatch):
    """A decoder whose key-value cache cannot select rows (static, recurrent, quantized) reads each row's context."""
    import dglm.stages.sampling as sampling

    decoder, settings = tiny_pipeline.decoder, DecodingSettings(max_new_tokens=4)
    soft = torch.randn(2, 2, 32, generator=torch.Generator().manual_seed(0))
    prefix = "The movie was long and slow"
    alone = [decoder.generate_tokens([prefix], soft[row:row + 1], sample_generators([row]), settings)[0]
             for row in range(2)]
    monkeypatch.setattr(sampling, "dynamic_layers", lambda cache: None)
    widths = reading_widths(decoder, monkeypatch)
    assert decoder.generate_tokens([prefix] * 2, soft, sample_generators([0, 1]), settings) == alone
    length = len(decoder.token_ids([prefix])[0])
    assert widths[:3] == [(1, length), (2, length), (2, 2)]  # shared, then row by row, then the soft prompts


def test_a_context_too_long_for_the_decoder_is_refused_before_the_decoder_reads_it(tiny_pipeline, monkeypatch):
    decoder = tiny_pipeline.decoder
    widths = reading_widths(decoder, monkeypatch)
    with pytest.raises(DglmError, match="overruns the decoder's context"):
        decoder.generate_tokens(["word " * decoder.context], None, sample_generators([0]), DecodingSettings())
    assert widths == []


def test_a_continued_context_reads_only_its_new_tokens_and_reads_as_the_whole_text_would(tiny_pipeline, monkeypatch):
    from dglm.stages.sampling import Continued, read_contexts

    decoder = tiny_pipeline.decoder
    before, new = decoder.token_ids(["The film was long"])[0], decoder.token_ids([" and the ending was sad"])[0]
    whole = decoder.tokenizer.decode(before + new)
    assert decoder.token_ids([whole])[0] == before + new
    _, _, _, (read, _) = read_contexts(decoder, ["The film was long", "A much longer prefix than that one, by far"],
                                      keep=True)
    widths = reading_widths(decoder, monkeypatch)
    continued, _, _, (continued_read, other) = read_contexts(decoder, [Continued(read, new), "A"], keep=True)
    assert widths == [(2, len(new))]  # the earlier tokens are not read again
    fresh, _, _, (fresh_read, _) = read_contexts(decoder, [whole, "A"])
    assert continued_read.ids == fresh_read.ids == before + new and other.ids == decoder.token_ids(["A"])[0]
    assert fresh_read.keys is None and continued_read.keys is not None  # kept only when asked (segments)
    assert torch.allclose(continued.logits[0, -1], fresh.logits[0, -1], atol=1e-5)
    assert torch.allclose(continued.logits[1, -1], fresh.logits[1, -1], atol=1e-5)  # the row beside it, unaffected
