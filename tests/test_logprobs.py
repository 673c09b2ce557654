"""OpenAI's logprobs entries: recorded a token at a time, they always join up to the text, streamed or not."""

import torch

from dglm.server.logprobs import LogprobRecorder

PIECES = {0: "x", 1: "ab", 2: "c th", 3: "at", 4: "y"}


def decode(ids: list[int]) -> str:
    return "".join(PIECES[i] for i in ids)


def test_a_token_cut_by_text_held_back_waits_for_the_chunk_that_holds_it_whole():
    recorder = LogprobRecorder(decode, top=2)
    streamed, sent = [], 0
    for token, visible in ((1, "ab"), (2, "abc "), (3, "abc that")):  # " th" held back while it could start "the"
        recorder.add(token, torch.log_softmax(torch.arange(5.0), dim=0))
        whole = recorder.tokens(visible, complete=True)[sent:]
        sent += len(whole)
        streamed += whole
    assert [t.text for t in streamed] == ["ab", "c th", "at"] and "".join(t.text for t in streamed) == "abc that"
    assert [t.offset for t in streamed] == [0, 2, 6]
    assert [t.text for t in recorder.tokens("abc that")] == ["ab", "c th", "at"]
    assert [t.text for t in recorder.tokens("abc t")] == ["ab", "c t"]  # cut at a stop string: the rest left out
    assert streamed[0].logprob == round(float(torch.log_softmax(torch.arange(5.0), dim=0)[1]), 4)
    assert len(streamed[0].top) == 3  # the two likeliest and the chosen one
