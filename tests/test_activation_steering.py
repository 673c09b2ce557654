"""Activation steering (CAA), the baseline a user would try first: vectors, the hook, and the method."""

import csv

import pytest
import torch
from conftest import toy_sentiment

from dglm.constraints import Constraint
from dglm.errors import DglmError
from dglm.evaluation.baselines import ActivationSteering, PlainSampling
from dglm.evaluation.steering_vectors import contrastive_vectors, mean_activations, steered

ROWS = [("The movie", 0), ("The movie", 1), ("A film", 2)]


@pytest.fixture
def toy_texts(tmp_path):
    path = tmp_path / "toy.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(zip(*toy_sentiment(40, seed=2)))
    return path


def test_two_label_vectors_are_opposite_and_leave_out_the_first_position(tiny_pipeline):
    texts, labels = toy_sentiment(20, seed=1)
    vectors = contrastive_vectors(tiny_pipeline.decoder, texts, labels, layer=1, per_label=10)
    assert set(vectors) == {"negative", "positive"}
    assert torch.allclose(vectors["positive"], -vectors["negative"])
    # A text of one token has only a first position: nothing to average.
    with pytest.raises(DglmError, match="more than one token"):
        mean_activations(tiny_pipeline.decoder, ["a"], layer=0)


def test_the_hook_steers_only_while_it_is_on(tiny_pipeline):
    model, tokens = tiny_pipeline.decoder.model, torch.tensor([[5, 17, 42]])
    with torch.no_grad():
        before = model(input_ids=tokens).logits
        with steered(model, 0, torch.full((model.config.hidden_size,), 3.0)):
            during = model(input_ids=tokens).logits
        after = model(input_ids=tokens).logits
    assert not torch.allclose(before, during) and torch.equal(before, after)
    with pytest.raises(DglmError, match=r"layer must be in \[0, 1\] for this decoder \(2 layers\), got 5"):
        with steered(model, 5, torch.zeros(model.config.hidden_size)):
            pass


def test_activation_steering_at_multiplier_zero_is_plain_sampling(tiny_pipeline, toy_texts):
    target = [Constraint("toy_sentiment", "positive")]
    plain = PlainSampling(tiny_pipeline).continue_rows(ROWS, target, 6)
    options = dict(layer=1, texts={"toy_sentiment": str(toy_texts)}, per_label=10)
    assert ActivationSteering(tiny_pipeline, multiplier=0.0, **options).continue_rows(ROWS, target, 6) == plain
    assert ActivationSteering(tiny_pipeline, multiplier=50.0, **options).continue_rows(ROWS, target, 6) != plain
    with pytest.raises(DglmError, match="no texts labelled 'neutral'"):
        ActivationSteering(tiny_pipeline, **options).continue_rows(ROWS, [Constraint("toy_sentiment", "neutral")], 6)


def test_activation_steering_without_its_texts_says_which_file(tiny_pipeline, tmp_path):
    method = ActivationSteering(tiny_pipeline, layer=1, texts={"toy_sentiment": str(tmp_path / "missing.csv")})
    with pytest.raises(DglmError, match="missing.csv does not exist"):
        method.continue_rows(ROWS, [Constraint("toy_sentiment", "positive")], 6)
