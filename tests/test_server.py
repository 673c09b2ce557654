"""`dglm serve` on a free localhost port, talked to with real clients: the official `openai` client, raw HTTP for
bad requests, concurrent requests for batching, a client that goes away mid-stream, and SIGTERM."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

import torch
from conftest import free_port  # noqa: E402

from dglm.errors import DglmError
from dglm.seeding import sample_generators
from dglm.server import ServerLimits, create_app, serve_in_thread  # noqa: E402
from dglm.stages.guidance import BatchGuidance


@pytest.fixture
def served(tiny_pipeline, toy_plugin):
    app = create_app(tiny_pipeline, "tiny", ServerLimits(max_n=8, max_tokens=64, max_body_kb=4, max_wait_ms=200))
    with serve_in_thread(app) as url:
        yield url, app


def request(url: str, method: str, path: str, body=None, headers=None, raw: bytes | None = None):
    """(status, parsed JSON) of one HTTP request."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    connection.request(method, path, body=payload, headers={"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    return response.status, json.loads(response.read() or b"null")


def alone(pipeline, prompt, seed, attributes=None, **settings) -> str:
    return pipeline.generate(prompt, attributes, seed=seed, **settings)[0].continuation


def stream_events(url: str, body: dict) -> list[dict]:
    """The parsed chunks of a streamed completion, read with raw HTTP."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("POST", "/v1/completions", json.dumps({**body, "stream": True}), {"Content-Type": "application/json"})
    return [json.loads(line[6:]) for line in connection.getresponse().read().decode().splitlines()
            if line.startswith("data: {")]


def slow_decoder(pipeline, monkeypatch, seconds: float) -> None:
    """Make each decoder step take `seconds` longer, so that what happens mid-generation can be seen."""
    forward = pipeline.decoder.model.forward

    def slow_forward(*args, **kwargs):
        time.sleep(seconds)
        return forward(*args, **kwargs)

    monkeypatch.setattr(pipeline.decoder.model, "forward", slow_forward)


def wait_for_steps(engine, steps: int = 5) -> None:
    """Wait (at most 30 s) until the engine has run `steps` decoder steps: a request is mid-generation."""
    deadline = time.monotonic() + 30
    while engine.decode_steps < steps and time.monotonic() < deadline:
        time.sleep(0.01)


def test_the_openai_client_gets_guided_completions_equal_to_the_python_api(served, tiny_pipeline):
    url, _ = served
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["tiny"]
    completion = client.completions.create(
        model="tiny", prompt="The movie", n=3, max_tokens=6, seed=40,
        extra_body={"attributes": [{"name": "toy_sentiment", "label": "positive", "weight": 2}], "return_scores": True,
                    "guidance_scale": 6.0},
    )
    texts = [c.text for c in completion.choices]
    expected = [s.continuation for s in tiny_pipeline.generate("The movie", {"toy_sentiment": ("positive", 2.0)}, 3,
                                                              max_new_tokens=6, seed=40, guidance_scale=6.0)]
    assert texts == expected
    assert [c.model_extra["seed"] for c in completion.choices] == [40, 41, 42]
    scores = completion.choices[0].model_extra["scores"]["toy_sentiment"]
    assert set(scores) == {"negative", "positive"} and abs(sum(scores.values()) - 1) < 1e-3
    count = tiny_pipeline.decoder.count_tokens
    assert completion.usage.completion_tokens == sum(6 if c.finish_reason == "length" else count(c.text) for c in completion.choices)
    assert completion.usage.prompt_tokens == count("The movie")


def test_streaming_sends_text_as_it_is_decoded_and_ends_with_done(served, tiny_pipeline):
    url, _ = served
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    chunks = list(client.completions.create(model="tiny", prompt=["The movie", "A film"], n=2, max_tokens=8, seed=5,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"attributes": ["toy_sentiment=negative"]}))
    texts = ["", "", "", ""]
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    expected = [s.continuation for s in tiny_pipeline.generate(["The movie", "A film"], ["toy_sentiment=negative"], 2,
                                                              max_new_tokens=8, seed=5)]
    assert texts == expected
    assert len(chunks) > 8, "text must arrive in pieces, not at the end"
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    finals = [c for chunk in chunks for c in chunk.choices if c.finish_reason]
    assert sorted(c.model_extra["seed"] for c in finals) == [5, 6, 7, 8]


def test_concurrent_requests_share_batches_and_each_gets_its_text_alone(served, tiny_pipeline):
    url, app = served
    jobs = [("The movie", 1, ["toy_sentiment=positive"], {"temperature": 0.7}),
            ("The movie", 2, ["toy_sentiment=negative:2"], {"top_k": 5, "max_tokens": 3}),
            ("A long and boring film", 3, [], {"min_p": 0.1, "presence_penalty": 1.5, "frequency_penalty": -0.5}),
            ("A film", 5, [], {"temperature": 0, "frequency_penalty": 2.0}),
            ("The match", 4, ["toy_sentiment=positive", "toy_sentiment=negative:-1"], {"guidance_scale": 8.0}),
            ("The film", 5, ["toy_sentiment=positive"], {"repetition_penalty": 1.0, "top_p": 0.5})] * 2

    def send(job):
        prompt, seed, attributes, settings = job
        status, body = request(url, "POST", "/v1/completions", {"prompt": prompt, "seed": seed, "attributes": attributes,
                                                                 "max_tokens": 7, **settings})
        assert status == 200, body
        return body["choices"][0]["text"]

    with ThreadPoolExecutor(len(jobs)) as pool:
        texts = list(pool.map(send, jobs))
    assert max(app.state.server.engine.batch_sizes) > 1, "concurrent requests were not batched"
    settings_of = lambda s: {("max_new_tokens" if k == "max_tokens" else k): v for k, v in {"max_tokens": 7, **s}.items()}
    assert texts == [alone(tiny_pipeline, p, seed, a, **settings_of(s)) for p, seed, a, s in jobs]


def test_requests_that_join_mid_flight_each_get_their_text_alone(tiny_pipeline, toy_plugin, monkeypatch):
    """A long request decodes alone; others (plain, guided, choosing among candidates, in segments, with penalties,
    logit_bias and stop strings) arrive while it runs, join its batch at a token step, and leave when they end: every
    text is the one the request gets alone from the Python API."""
    slow_decoder(tiny_pipeline, monkeypatch, 0.01)
    long = ("The movie", 1, ["toy_sentiment=positive"], {"max_tokens": 60, "repetition_penalty": 1.0, "temperature": 0.5})
    joining = [("A film", 2, [], {"max_tokens": 5}),
               ("The match", 3, ["toy_sentiment=negative"], {"max_tokens": 9, "top_k": 5, "frequency_penalty": 1.0}),
               ("A long and boring film", 4, ["toy_sentiment=positive"], {"max_tokens": 8, "candidates": 3}),
               ("The film", 5, ["toy_sentiment=positive"], {"max_tokens": 10, "segment_tokens": 4, "temperature": 0.3,
                                                            "repetition_penalty": 1.0}),
               ("x", 6, [], {"max_tokens": 6, "temperature": 0, "logit_bias": {"5": 3}})]
    app = create_app(tiny_pipeline, "tiny", ServerLimits(max_tokens=64))
    with serve_in_thread(app) as url:
        def send(job):
            prompt, seed, attributes, settings = job
            status, body = request(url, "POST", "/v1/completions", {"prompt": prompt, "seed": seed,
                                                                     "attributes": attributes, **settings})
            assert status == 200, body
            return body["choices"][0]["text"]

        with ThreadPoolExecutor(len(joining) + 1) as pool:
            first = pool.submit(send, long)
            wait_for_steps(app.state.server.engine)
            texts = list(pool.map(send, joining))
            texts.insert(0, first.result())
        sizes = list(app.state.server.engine.batch_sizes)
    assert sizes[:5] == [1] * 5 and max(sizes) > 1, "the requests did not join the running batch"
    assert sizes[-1] == 1, "rows that ended did not leave the batch"

    def settings_of(settings):
        settings = {("max_new_tokens" if k == "max_tokens" else k): v for k, v in settings.items()}
        bias = settings.pop("logit_bias", None)
        return settings, bias

    for (prompt, seed, attributes, settings), text in zip([long, *joining], texts):
        settings, bias = settings_of(settings)
        rows = list(tiny_pipeline.plan([prompt], attributes, 1, seed=seed, logit_bias=bias and {5: 3.0}, **settings))
        assert text == tiny_pipeline.decoder.decode(tiny_pipeline.generate_rows(rows)[0]), (prompt, settings)


def test_rows_keep_decoding_while_an_arriving_request_is_planned(tiny_pipeline, monkeypatch):
    """Planning a request that joins (the diffusion and the prefill) runs beside the decoding, not in its way: a slow
    plan leaves the running request's steps going on, and the joining request still gets its text alone."""
    slow_decoder(tiny_pipeline, monkeypatch, 0.01)
    app = create_app(tiny_pipeline, "tiny", ServerLimits(max_tokens=128))
    engine, start_writing, steps_while_planning = app.state.server.engine, tiny_pipeline.start_writing, []

    def slow_start_writing(rows, *args, **kwargs):
        if rows[0].prefix == "A film":
            before = engine.decode_steps
            time.sleep(0.5)
            steps_while_planning.append(engine.decode_steps - before)
        return start_writing(rows, *args, **kwargs)

    monkeypatch.setattr(tiny_pipeline, "start_writing", slow_start_writing)
    with serve_in_thread(app) as url, ThreadPoolExecutor(2) as pool:
        first = pool.submit(request, url, "POST", "/v1/completions", {"prompt": "The movie", "max_tokens": 120})
        wait_for_steps(engine)
        status, body = request(url, "POST", "/v1/completions", {"prompt": "A film", "max_tokens": 5, "seed": 3})
        assert first.result()[0] == status == 200, body
    assert steps_while_planning[0] >= 10, f"only {steps_while_planning[0]} steps ran while a request was planned"
    monkeypatch.undo()
    rows = list(tiny_pipeline.plan(["A film"], None, 1, seed=3, max_new_tokens=5))
    assert body["choices"][0]["text"] == tiny_pipeline.decoder.decode(tiny_pipeline.generate_rows(rows)[0])


def test_a_request_that_cannot_join_the_running_batch_fails_alone_with_the_reason(tiny_pipeline, monkeypatch):
    from dglm.stages.sampling import DecodingBatch

    def refuse(self, other):
        raise DglmError("this decoder's cache cannot be joined; serve it with --batching static")

    slow_decoder(tiny_pipeline, monkeypatch, 0.01)
    monkeypatch.setattr(DecodingBatch, "join", refuse)
    app = create_app(tiny_pipeline, "tiny", ServerLimits(max_tokens=128))
    engine = app.state.server.engine
    with serve_in_thread(app) as url, ThreadPoolExecutor(2) as pool:
        first = pool.submit(request, url, "POST", "/v1/completions", {"prompt": "The movie", "max_tokens": 60})
        wait_for_steps(engine)
        status, body = request(url, "POST", "/v1/completions", {"prompt": "A film", "max_tokens": 5})
        assert status == 400 and "--batching static" in body["error"]["message"], body
        assert first.result()[0] == 200
        assert request(url, "GET", "/health")[0] == 200


def test_a_full_queue_answers_429_with_retry_after_and_the_server_stays_healthy(tiny_pipeline, monkeypatch):
    slow_decoder(tiny_pipeline, monkeypatch, 0.01)
    app = create_app(tiny_pipeline, "tiny", ServerLimits(max_batch_size=2, max_queue=2))
    with serve_in_thread(app) as url:
        host, port = url.removeprefix("http://").split(":")

        def send(seed):
            connection = http.client.HTTPConnection(host, int(port), timeout=60)
            connection.request("POST", "/v1/completions", json.dumps({"prompt": "The movie", "max_tokens": 20,
                                                                      "seed": seed}),
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, response.getheader("Retry-After"), json.loads(response.read())

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(send, range(12)))
        statuses = [status for status, _, _ in answers]
        assert set(statuses) == {200, 429}, statuses
        refused = [(retry, body) for status, retry, body in answers if status == 429]
        assert all(retry == "1" and "requests are waiting (--max-queue)" in body["error"]["message"]
                   for retry, body in refused)
        assert request(url, "GET", "/health")[0] == 200
        assert request(url, "POST", "/v1/completions", {"prompt": "A film", "max_tokens": 3})[0] == 200
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.request("GET", "/metrics")
        metrics = connection.getresponse().read().decode()
    assert f'dglm_completion_requests_total{{status="429"}} {float(len(refused))}' in metrics
    assert "dglm_queue_depth 0.0" in metrics and "dglm_rows_in_flight" in metrics


def test_replicas_behind_a_balancer_answer_as_one_server(tiny_checkpoint, toy_plugin):
    """The server keeps nothing between requests but the model: two replicas loaded from one checkpoint, sent requests
    in turn as a round-robin balancer would, give every request the text one server gives it."""
    from dglm.pipeline import Pipeline

    replicas = [create_app(Pipeline.from_pretrained(tiny_checkpoint), "tiny") for _ in range(2)]
    bodies = [{"prompt": prompt, "seed": seed, "max_tokens": 6, "attributes": attributes}
              for seed, (prompt, attributes) in enumerate([("The movie", ["toy_sentiment=positive"]), ("A film", []),
                                                           ("The match", ["toy_sentiment=negative:2"])] * 2)]
    with serve_in_thread(replicas[0]) as first, serve_in_thread(replicas[1]) as second:
        by_balancer = [request([first, second][k % 2], "POST", "/v1/completions", body) for k, body in enumerate(bodies)]
        by_one = [request(first, "POST", "/v1/completions", body) for body in bodies]
    assert all(status == 200 for status, _ in by_balancer + by_one)
    assert [a["choices"][0]["text"] for _, a in by_balancer] == [a["choices"][0]["text"] for _, a in by_one]


@pytest.mark.parametrize("body, status, message, param", [
    ({"prompt": "x", "attributes": ["mood=happy"]}, 400, "unknown attribute 'mood'; known attributes: ", "attributes"),
    ({"prompt": "x", "attributes": ["toy_sentiment=happy"]}, 400, "known labels: negative, positive", "attributes"),
    ({"prompt": "x", "attributes": [{"name": "toy_sentiment", "label": "positive", "weight": "heavy"}]}, 400,
     "attributes.0.weight", "attributes"),
    ({"prompt": "x", "attributes": ["toy_sentiment=positive:inf"]}, 400, "must be a finite number, got inf", "attributes"),
    ({"prompt": "   "}, 400, "prompt 0 (counting from 0) is empty", "prompt"),
    ({"prompt": []}, 400, "no prompt given", "prompt"),
    ({"prompt": [1, 2]}, 400, "prompt must be a string or a list of strings", "prompt"),
    ({"prompt": "x", "n": 9}, 400, "at most 8 (--max-n)", "n"),
    ({"prompt": "x", "n": 0}, 400, "n must be at least 1", "n"),
    ({"prompt": "x", "max_tokens": 65}, 400, "max_tokens must be at most 64 (--max-tokens)", "max_tokens"),
    ({"prompt": "x", "max_tokens": "ten"}, 400, "field 'max_tokens': Input should be a valid integer", "max_tokens"),
    ({"prompt": "x", "top_p": 1.5}, 400, "top_p must be a number in (0, 1], got 1.5", "top_p"),
    ({"prompt": "x", "temperature": -1}, 400, "temperature must be a number >= 0", "temperature"),
    ({"prompt": "x", "seed": -3}, 400, "seed must be an integer from 0", "seed"),
    ({"prompt": "x", "sampler": "euler"}, 400, "unknown sampler 'euler'", "sampler"),
    ({"prompt": "x", "guidance_mode": "nearest"}, 400, "unknown guidance mode 'nearest'", "guidance_mode"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop must be a string or a list of at most 4", "stop"),
    ({"prompt": "x", "stop": [""]}, 400, "at most 4 non-empty strings", "stop"),
    ({"prompt": "x", "logit_bias": {"99999999": -100}}, 400, "logit_bias keys must be token ids from 0 to", "logit_bias"),
    ({"prompt": "x", "logit_bias": {"5": 101}}, 400, "logit_bias values must be numbers in [-100, 100], got 101", "logit_bias"),
    ({"prompt": "x", "logit_bias": {"5": "ban"}}, 400, "field 'logit_bias.5'", "logit_bias"),
    ({"prompt": "x", "best_of": 3}, 400, "best_of=3 is not supported by dglm; leave it out, or send null or 1", "best_of"),
    ({"prompt": "x", "candidates": 2, "logprobs": 1}, 400, "logprobs with candidates above 1 is not supported", "candidates"),
    ({"prompt": "x", "suffix": " The end."}, 400, "suffix=' The end.' is not supported by dglm", "suffix"),
    ({"prompt": "x", "echo": "yes"}, 400, "field 'echo'", "echo"),
    ({"prompt": "x", "logprobs": False}, 400, "field 'logprobs'", "logprobs"),
    ({"prompt": "x", "logprobs": 21}, 400, "field 'logprobs': Input should be less than or equal to 20", "logprobs"),
    ({"prompt": "x", "logprobs": 2, "echo": True}, 400, "logprobs with echo (the prompt's log-probabilities) is not "
                                                        "supported", "logprobs"),
    ({"prompt": "x", "max_tokens": 3, "max_new_tokens": 3}, 400,
     "max_tokens and max_new_tokens are one setting under two names; send only one of them", "max_new_tokens"),
    ({"prompt": "x", "colour": "blue"}, 400, "unknown field 'colour'; accepted fields: attributes", "colour"),
    ({"max_tokens": 3}, 400, "field 'prompt' is required", "prompt"),
    ({"prompt": "x", "model": "gpt-4"}, 404, "the model 'gpt-4' does not exist; this server serves tiny", "model"),
])
def test_a_bad_request_gets_a_4xx_in_openai_shape_naming_the_field_and_what_is_accepted(served, body, status, message,
                                                                                        param):
    got, answer = request(served[0], "POST", "/v1/completions", body)
    assert got == status, answer
    assert message in answer["error"]["message"] and answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["param"] == param


def test_malformed_json_a_big_body_chat_and_unknown_paths_are_refused_clearly(served):
    url = served[0]
    status, answer = request(url, "POST", "/v1/completions", raw=b'{"prompt": "x",')
    assert status == 400 and "not valid JSON" in answer["error"]["message"]
    status, answer = request(url, "POST", "/v1/completions", raw=json.dumps({"prompt": "x" * 5000}).encode())
    assert status == 413 and "larger than the server's limit of 4 KiB" in answer["error"]["message"]
    status, answer = request(url, "POST", "/v1/chat/completions", {"messages": []})
    assert status == 400 and "POST /v1/completions" in answer["error"]["message"]
    status, answer = request(url, "GET", "/v2/things")
    assert status == 404 and "no endpoint GET /v2/things" in answer["error"]["message"]


def test_attributes_health_and_the_playground_page_are_served(served):
    url = served[0]
    status, answer = request(url, "GET", "/v1/attributes")
    assert status == 200 and answer["data"][0]["name"] == "toy_sentiment" and answer["data"][0]["plugin"] == "toy"
    assert request(url, "GET", "/health") == (200, {"status": "ok", "model": "tiny"})
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("GET", "/")
    page = connection.getresponse().read().decode()
    assert "<title>dglm playground</title>" in page and "/v1/attributes" in page


def test_with_an_api_key_every_endpoint_but_health_needs_it(tiny_pipeline):
    with serve_in_thread(create_app(tiny_pipeline, "tiny", api_key="s3cret")) as url:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            status, answer = request(url, "POST", "/v1/completions", {"prompt": "x"}, headers)
            assert status == 401 and answer["error"]["code"] == "invalid_api_key"
            assert request(url, "GET", "/v1/models", headers=headers)[0] == 401
        assert request(url, "GET", "/health")[0] == 200
        assert request(url, "GET", "/openapi.json")[0] == 401  # the description too, unless --public-docs
        host, port = url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.request("GET", "/v1/attributes")
        assert connection.getresponse().getheader("WWW-Authenticate") == 'Bearer realm="dglm"'
        status, answer = request(url, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 2},
                                 {"Authorization": "Bearer s3cret"})
        assert status == 200 and len(answer["choices"]) == 1


def test_a_client_that_leaves_mid_stream_frees_its_rows_and_others_are_undisturbed(served, tiny_pipeline, monkeypatch):
    url, app = served
    slow_decoder(tiny_pipeline, monkeypatch, 0.02)  # 64 steps take over a second, so leaving early shows
    host, port = url.removeprefix("http://").split(":")
    leaving = socket.create_connection((host, int(port)))
    body = json.dumps({"prompt": "The movie", "max_tokens": 64, "seed": 1, "stream": True, "repetition_penalty": 1.0,
                       "temperature": 0.3}).encode()
    leaving.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body) + body)
    staying = ThreadPoolExecutor(1).submit(request, url, "POST", "/v1/completions",
                                           {"prompt": "A film", "max_tokens": 5, "seed": 2})
    received = b""
    while b"data:" not in received:  # streaming has started
        received += leaving.recv(4096)
    leaving.close()
    status, answer = staying.result(60)
    assert status == 200 and answer["choices"][0]["text"] == alone(tiny_pipeline, "A film", 2, max_new_tokens=5)
    time.sleep(1.5)
    assert app.state.server.engine.decode_steps < 40, "the departed client's 64 tokens were decoded all the same"


@pytest.mark.slow
def test_sigterm_answers_503_finishes_the_request_in_flight_then_exits(tiny_checkpoint):
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "-m", "dglm", "serve", "--model", str(tiny_checkpoint), "--port", str(port)],
                              stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in server.stderr:
            if "Uvicorn running on" in line:
                break
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("POST", "/v1/completions", json.dumps({"prompt": "The movie", "max_tokens": 64, "seed": 0,
                                                                  "stream": True, "repetition_penalty": 1.0}),
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        first = response.readline()
        server.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while (status := request(f"http://127.0.0.1:{port}", "GET", "/v1/models")[0]) == 200 and time.monotonic() < deadline:
            time.sleep(0.05)  # until the signal has arrived
        assert status == 503, "a draining server must answer new requests with 503, not refuse the connection"
        rest = response.read().decode()
        assert first.startswith(b"data: ") and rest.rstrip().endswith("data: [DONE]")
        assert server.wait(30) in (0, -signal.SIGTERM)  # uvicorn ends by re-raising the signal it caught
        assert "Traceback" not in server.stderr.read()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
    finally:
        server.kill()


def test_a_request_over_the_time_limit_gets_a_504_and_leaves_the_batch(tiny_pipeline, monkeypatch):
    slow_decoder(tiny_pipeline, monkeypatch, 0.05)
    app = create_app(tiny_pipeline, "tiny", ServerLimits(request_timeout_s=0.5))
    with serve_in_thread(app) as url:
        status, answer = request(url, "POST", "/v1/completions", {"prompt": "The movie", "max_tokens": 60,
                                                                   "repetition_penalty": 1.0, "temperature": 0.3})
        assert status == 504 and "longer than the server's limit of 0.5 s (--request-timeout-s)" in answer["error"]["message"]
        time.sleep(1.0)
        assert app.state.server.engine.decode_steps < 50, "the timed-out request kept its place in the batch"


def test_the_model_lists_its_settings_with_this_checkpoints_defaults_and_can_be_retrieved(served, tiny_pipeline):
    url = served[0]
    status, listing = request(url, "GET", "/v1/models")
    entry = listing["data"][0]
    diffusion, decoding = tiny_pipeline.settings()
    settings = entry["settings"]
    assert settings["guidance_scale"]["default"] == diffusion.guidance_scale and settings["guidance_scale"]["at_least"] == 0
    assert settings["max_tokens"]["default"] == decoding.max_new_tokens and settings["max_tokens"]["type"] == "int"
    assert settings["top_p"]["accepts"] == "a number in (0, 1]" and "max_new_tokens" not in settings
    status, one = request(url, "GET", f"/v1/models/{entry['id']}")
    assert status == 200 and one == entry
    status, missing = request(url, "GET", "/v1/models/gpt-4")
    assert status == 404 and missing["error"]["param"] == "model" and "served: tiny" in missing["error"]["message"]


def test_the_openai_fields_clients_send_at_their_defaults_are_accepted(served, tiny_pipeline):
    """LangChain's OpenAI wrapper and `llm` send these with every request, at these values."""
    defaults = {"stop": None, "logprobs": None, "echo": False, "best_of": 1, "suffix": None, "presence_penalty": 0,
                "frequency_penalty": 0.0, "logit_bias": {}, "user": "me"}
    status, answer = request(served[0], "POST", "/v1/completions", {"prompt": "x", "max_tokens": 3, "seed": 5, **defaults})
    assert status == 200, answer
    assert answer["choices"][0]["text"] == alone(tiny_pipeline, "x", 5, max_new_tokens=3)
    status, answer = request(served[0], "POST", "/v1/completions", {"prompt": "x", "max_tokens": 3, "seed": 5, "temperature": 0})
    assert status == 200 and answer["choices"][0]["text"] == alone(tiny_pipeline, "x", 5, max_new_tokens=3, temperature=0.0)


def test_cors_is_off_by_default_and_on_for_the_origins_named(tiny_pipeline):
    def headers_for(app, method, path, extra):
        with serve_in_thread(app) as url:
            host, port = url.removeprefix("http://").split(":")
            connection = http.client.HTTPConnection(host, int(port), timeout=10)
            connection.request(method, path, headers={"Origin": "https://app.example", **extra})
            response = connection.getresponse()
            return response.status, dict(response.getheaders())

    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    status, headers = headers_for(create_app(tiny_pipeline, "tiny"), "GET", "/v1/models", {})
    assert status == 200 and "access-control-allow-origin" not in {k.lower() for k in headers}
    app = create_app(tiny_pipeline, "tiny", api_key="s3cret", allowed_origins=["https://app.example"])
    status, headers = headers_for(app, "OPTIONS", "/v1/completions", preflight)
    assert status == 200 and headers["access-control-allow-origin"] == "https://app.example"
    status, headers = headers_for(app, "GET", "/v1/models", {"Authorization": "Bearer s3cret"})
    assert status == 200 and headers["access-control-allow-origin"] == "https://app.example"


def test_metrics_count_requests_tokens_and_batches_in_prometheus_format(served):
    url = served[0]
    assert request(url, "POST", "/v1/completions", {"prompt": "The movie", "max_tokens": 4, "n": 2, "seed": 1})[0] == 200
    assert request(url, "POST", "/v1/completions", {"prompt": "x", "top_p": 3})[0] == 400
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("GET", "/metrics")
    response = connection.getresponse()
    text = response.read().decode()
    assert response.status == 200 and response.getheader("Content-Type").startswith("text/plain")
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if not line.startswith("#")}
    assert values['dglm_completion_requests_total{status="200"}'] >= 1
    assert values['dglm_completion_requests_total{status="400"}'] >= 1
    assert 0 < values["dglm_completion_tokens_total"] and values["dglm_batch_size_count"] >= 1
    assert values["dglm_queue_wait_seconds_count"] >= 1 and values["dglm_completion_seconds_count"] >= 2


def test_public_docs_open_the_description_and_only_it(tiny_pipeline):
    with serve_in_thread(create_app(tiny_pipeline, "tiny", api_key="s3cret", public_docs=True)) as url:
        status, schema = request(url, "GET", "/openapi.json")
        assert status == 200 and "/v1/completions" in schema["paths"]
        body = schema["paths"]["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        fields = body["properties"]
        assert fields["top_p"]["exclusiveMinimum"] == 0 and fields["top_p"]["maximum"] == 1
        assert fields["temperature"]["minimum"] == 0 and fields["steps"]["maximum"] == 1000
        assert request(url, "GET", "/v1/models")[0] == 401
        host, port = url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.request("GET", "/docs")
        page = connection.getresponse().read().decode()
        assert "/docs/assets/swagger-ui-bundle.js" in page and "cdn" not in page.lower()
        connection.request("GET", "/docs/assets/swagger-ui-bundle.js")
        response = connection.getresponse()
        assert response.status == 200 and len(response.read()) > 100_000


def test_an_alias_serves_the_model_with_attributes_preset_and_lists_them(tiny_pipeline, toy_plugin):
    from dglm.server.state import ServedModels, parse_alias

    name, preset = parse_alias("cheerful=toy_sentiment=positive:2")
    served = ServedModels("tiny", {name: preset})
    with serve_in_thread(create_app(tiny_pipeline, served)) as url:
        status, listing = request(url, "GET", "/v1/models")
        assert [m["id"] for m in listing["data"]] == ["tiny", "cheerful"]
        assert listing["data"][1]["attributes"] == [{"attribute": "toy_sentiment", "label": "positive", "weight": 2.0}]
        body = {"prompt": "The movie", "max_tokens": 4, "seed": 3}
        status, answer = request(url, "POST", "/v1/completions", {**body, "model": "cheerful"})
        assert status == 200 and answer["model"] == "cheerful"
        assert answer["choices"][0]["text"] == alone(tiny_pipeline, "The movie", 3, ["toy_sentiment=positive:2"], max_new_tokens=4)
        status, answer = request(url, "POST", "/v1/completions", {**body, "model": "cheerful",
                                                                   "attributes": ["toy_sentiment=negative:-1"]})
        assert answer["choices"][0]["text"] == alone(tiny_pipeline, "The movie", 3,
                                                     ["toy_sentiment=positive:2", "toy_sentiment=negative:-1"], max_new_tokens=4)
        assert request(url, "POST", "/v1/completions", {**body, "model": "gpt-3.5-turbo-instruct"})[0] == 404
    with serve_in_thread(create_app(tiny_pipeline, ServedModels("tiny", accept_any=True))) as url:
        status, answer = request(url, "POST", "/v1/completions", {**body, "model": "gpt-3.5-turbo-instruct"})
        assert status == 200 and answer["choices"][0]["text"] == alone(tiny_pipeline, "The movie", 3, max_new_tokens=4)
    with pytest.raises(DglmError, match="unknown attribute 'mood'"):
        create_app(tiny_pipeline, ServedModels("tiny", {"x": [parse_alias("x=mood=happy")[1][0]]}))
    with pytest.raises(DglmError, match="is not of the form NAME=ATTR=LABEL"):
        parse_alias("cheerful")


def test_stop_strings_cut_the_text_streamed_or_not_and_leave_other_rows_alone(served, tiny_pipeline):
    url = served[0]
    body = {"prompt": ["The movie", "A film"], "max_tokens": 12, "seed": 4, "temperature": 0.7}
    full = [alone(tiny_pipeline, p, 4 + i, max_new_tokens=12, temperature=0.7) for i, p in enumerate(body["prompt"])]
    stop = next(full[0][k : k + 2] for k in range(3, len(full[0]) - 2) if full[0][k : k + 2].strip() and full[0][k : k + 2] not in full[0][:k])
    expected = full[0][: full[0].find(stop)]
    status, answer = request(url, "POST", "/v1/completions", {**body, "stop": [stop]})
    first, second = answer["choices"]
    assert status == 200 and first["text"] == expected and first["finish_reason"] == "stop"
    assert (second["text"] == full[1][: full[1].find(stop)]) if stop in full[1] else (second["text"] == full[1])
    events = stream_events(url, {**body, "prompt": "The movie", "stop": stop})
    assert "".join(e["choices"][0]["text"] for e in events) == expected
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(stop not in e["choices"][0]["text"] for e in events)  # held back, never sent


def test_a_choice_among_candidates_cut_at_a_stop_string_counts_only_the_tokens_it_kept(served, tiny_pipeline):
    """With candidates a choice is cut at its stop string only once chosen; its usage counts the tokens up to the one
    that wrote the stop string, as a choice cut while streaming does, not all it decoded."""
    url = served[0]
    body = {"prompt": "The movie", "max_tokens": 12, "seed": 4, "temperature": 0.7, "candidates": 2}
    status, whole = request(url, "POST", "/v1/completions", body)
    full = whole["choices"][0]["text"]
    stop = next(full[k : k + 2] for k in range(2, len(full) - 4) if full[k : k + 2].strip() and full[k : k + 2] not in full[:k])
    status, answer = request(url, "POST", "/v1/completions", {**body, "stop": [stop]})
    kept = full[: full.find(stop)]
    assert status == 200 and answer["choices"][0]["text"] == kept and answer["choices"][0]["finish_reason"] == "stop"
    ids = tiny_pipeline.decoder.token_ids([full])[0]
    written = next(n for n in range(1, len(ids) + 1) if stop in tiny_pipeline.decoder.decode(ids[:n]))
    assert answer["usage"]["completion_tokens"] == written < whole["usage"]["completion_tokens"]


def random_json(rng, depth: int = 0):
    """A JSON value of any shape: nested containers, extreme numbers, odd unicode, long strings and lists."""
    kind = rng.choice(["num", "num", "str", "bool", "null", "list", "dict"] if depth < 4 else ["num", "str", "null"])
    if kind == "num":
        return rng.choice([0, -1, 1, 2**31, -(2**63), 10**30, 1e308, -1e308, 5e-324, 0.5, 1e-30, 3.0, 256.0, 1e6])
    if kind == "str":
        return rng.choice(["", " ", "x", "\u0000", "\ud7ff\uffff", "💥" * 50, "a" * 3000, "sentiment=positive",
                           "toy_sentiment=positive:1e308", "toy_sentiment=negative:-1e308", "=", ":::", "ddim", "project"])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.choice([0, 1, 3, 200]))]
    return {rng.choice(["a", "prompt", "n", "weight", "name", "label"]): random_json(rng, depth + 1) for _ in range(3)}


EXTREME_BUT_VALID = {"guidance_scale": [1e30, 1e308], "prefix_guidance": [1e30, 0.0], "repetition_penalty": [1e-300, 1e300],
                     "temperature": [1e-300, 1e300, 0.0], "top_p": [5e-324], "min_p": [0.999999], "guidance_target": [1e-300],
                     "guidance_anchor": [1e308], "mc_draws": [1], "steps": [1]}


def fuzz_body(rng) -> object:
    """A third each: anything at all; random values in the real fields; valid values so extreme that float
    arithmetic overflows (weights, scales, penalties)."""
    draw = rng.random()
    if draw < 0.33:
        return random_json(rng)
    if draw < 0.66:
        body = {"prompt": "The movie", "max_tokens": 3, "seed": rng.randrange(1000)}
        for name in rng.sample(sorted(EXTREME_BUT_VALID), 2):
            body[name] = rng.choice(EXTREME_BUT_VALID[name])
        body["attributes"] = [{"name": "toy_sentiment", "label": "positive", "weight": rng.choice([1e308, -1e308, 1e-300, 7.0])}]
        return body
    fields = ["model", "prompt", "n", "seed", "stream", "attributes", "return_scores", "stop", "max_tokens", "temperature",
              "top_p", "top_k", "min_p", "repetition_penalty", "guidance_scale", "guidance_mode", "guidance_target",
              "guidance_anchor", "steps", "mc_draws", "prefix_guidance", "renoise_alpha2", "sampler", "logit_bias",
              "presence_penalty", "echo", "stream_options", "user", "unknown_field"]
    body = {"prompt": "The movie", "max_tokens": 3}
    for name in rng.sample(fields, rng.choice([1, 2, 4])):
        body[name] = random_json(rng)
    if rng.random() < 0.5:  # attributes that parse, with extreme weights
        body["attributes"] = [{"name": "toy_sentiment", "label": "positive", "weight": rng.choice([1e308, -1e308, 1e-300, 7.0])}]
    return body


STRING_FIELDS = {  # where a string can sit in a request, each as a body holding a lone surrogate there
    "prompt": {"prompt": "The \ud800 movie"},
    "prompt.1": {"prompt": ["A film", "\udfff"]},
    "attributes.0.text": {"attributes": [{"text": "a storm \ud800", "weight": 1}]},
    "attributes.0.name": {"attributes": [{"name": "toy_\ud800", "label": "positive"}]},
    "attributes.0.label": {"attributes": [{"name": "toy_sentiment", "label": "pos\ud800"}]},
    "attributes.0": {"attributes": ["toy_sentiment=\ud800"]},
    "stop": {"stop": "\ud800"},
    "stop.0": {"stop": ["\ud800"]},
    "model": {"model": "tiny\ud800"},
    "user": {"user": "\ud800"},
    "guidance_mode": {"guidance_mode": "\ud800"},
    "sampler": {"sampler": "dd\ud800im"},
    "logit_bias.\ud800": {"logit_bias": {"\ud800": 1}},
}
NUMERIC_FIELDS = ["n", "seed", "max_tokens", "logprobs", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                  "guidance_scale", "guidance_target", "guidance_anchor", "phrase_cosine", "steps", "mc_draws",
                  "prefix_guidance", "renoise_alpha2", "presence_penalty", "best_of"]
EXTREMES = [10**30, -(10**30), 2**63, 1e308, -1e308, 5e-324, 0, -1]


def malformed_bodies() -> list[tuple[str, bytes]]:
    """(what it is, the raw body) for every class of body a careless or hostile client sends: nesting deeper than
    any parser's recursion, lone surrogates in every string field, numbers JSON has no word for, and every
    numeric field at its extremes (plain fields, an attribute's weight and a logit bias)."""
    base = {"prompt": "The movie", "max_tokens": 3, "seed": 1}
    bodies = [("nested 1,900 deep", b"[" * 1900 + b"]" * 1900),
              ("a prompt nested 1,000 deep", b'{"prompt": ' + b"[" * 1000 + b'"x"' + b"]" * 1000 + b"}")]
    bodies += [(f"a lone surrogate in {where}", json.dumps({**base, **fields}).encode()) for where, fields in STRING_FIELDS.items()]
    bodies += [(f"{word} as temperature", b'{"prompt": "The movie", "temperature": %s}' % word)
               for word in (b"NaN", b"Infinity", b"-Infinity", b"1e999")]
    bodies += [(f"{name}={value!r}", json.dumps({**base, name: value}).encode()) for name in NUMERIC_FIELDS for value in EXTREMES]
    bodies += [(f"attribute weight {value!r}", json.dumps({**base, "attributes": [{"name": "toy_sentiment", "label": "positive",
                                                                                    "weight": value}]}).encode())
               for value in EXTREMES]
    bodies += [(f"logit bias {value!r}", json.dumps({**base, "logit_bias": {"5": value}}).encode()) for value in EXTREMES]
    return bodies


def post_raw(url: str, raw: bytes) -> tuple[int, str]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("POST", "/v1/completions", body=raw, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, response.read().decode()


def assert_a_clear_answer(what: str, status: int, text: str) -> None:
    """A 200 with no error event, or a 4xx in OpenAI's error shape with no Python exception in it."""
    assert status == 200 or 400 <= status < 500, (what, status, text)
    assert "Error:" not in text and "Traceback" not in text and "server_error" not in text, (what, text)
    if status != 200:
        answer = json.loads(text)
        assert set(answer["error"]) == {"message", "type", "param", "code"} and answer["error"]["message"], (what, answer)


@pytest.mark.slow
def test_no_request_body_gets_a_5xx_and_the_server_stays_healthy(served, tiny_pipeline):
    import random as random_module

    url = served[0]
    rng = random_module.Random(1234)
    answers = {}
    for _ in range(150):
        body = fuzz_body(rng)
        status, answer = request(url, "POST", "/v1/completions", raw=json.dumps(body, allow_nan=False).encode())
        answers[status] = answers.get(status, 0) + 1
        assert status == 200 or 400 <= status < 500, (status, body, answer)
        if status != 200:
            assert set(answer["error"]) == {"message", "type", "param", "code"}, answer
    assert answers.get(200, 0) > 10 and sum(n for s, n in answers.items() if s != 200) > 10, answers
    for what, raw in malformed_bodies():
        assert_a_clear_answer(what, *post_raw(url, raw))
        if raw.startswith(b"{"):
            assert_a_clear_answer(f"{what}, streamed", *post_raw(url, raw[:-1] + b', "stream": true}'))
    for where, fields in STRING_FIELDS.items():  # each names its field
        status, text = post_raw(url, json.dumps({"prompt": "The movie", **fields}).encode())
        assert status == 400 and f"field {where!r} is not valid text" in json.loads(text)["error"]["message"], text
    status, text = post_raw(url, b"[" * 1900 + b"]" * 1900)
    assert status == 400 and "nests deeper than 16 levels" in text
    assert request(url, "GET", "/health")[0] == 200
    status, answer = request(url, "POST", "/v1/completions", {"prompt": "The movie", "max_tokens": 3, "seed": 1})
    assert status == 200 and answer["choices"][0]["text"] == alone(tiny_pipeline, "The movie", 1, max_new_tokens=3)


def test_idle_connections_held_open_do_not_stop_real_requests(served, tiny_pipeline):
    url = served[0]
    host, port = url.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port))) for _ in range(20)]
    try:
        for index, connection in enumerate(idle[:10]):  # half of them send half a request, and stop
            connection.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"prompt\"" if index % 2
                               else b"GET /v1/mod")
        started = time.monotonic()
        for seed in range(3):
            status, answer = request(url, "POST", "/v1/completions", {"prompt": "A film", "max_tokens": 3, "seed": seed})
            assert status == 200 and answer["choices"][0]["text"] == alone(tiny_pipeline, "A film", seed, max_new_tokens=3)
        assert time.monotonic() - started < 30
    finally:
        for connection in idle:
            connection.close()
    assert request(url, "GET", "/health")[0] == 200


def test_echo_puts_the_prompt_before_the_text_streamed_or_not(served, tiny_pipeline):
    url = served[0]
    body = {"prompt": ["The movie", "A film"], "max_tokens": 4, "seed": 2, "echo": True}
    status, answer = request(url, "POST", "/v1/completions", body)
    want = [p + alone(tiny_pipeline, p, 2 + i, max_new_tokens=4) for i, p in enumerate(body["prompt"])]
    assert status == 200 and [c["text"] for c in answer["choices"]] == want
    events = stream_events(url, body)
    streamed = ["".join(e["choices"][0]["text"] for e in events if e["choices"][0]["index"] == i) for i in range(2)]
    assert streamed == want


def first_token_log_probs(pipeline, prefix: str, seed: int) -> torch.Tensor:
    """The decoder's distribution for a sample's first token, with its soft prompts and nothing else, computed
    here step by step as `Pipeline.generate_rows` draws them (no guidance)."""
    generators = sample_generators([seed])
    latents = pipeline.propose_latents([prefix], generators, BatchGuidance([None], [0.0]))
    soft = pipeline.soft_prompts(latents, generators)
    decoder = pipeline.decoder
    embeds = torch.cat([decoder.model.get_input_embeddings()(torch.tensor([decoder.token_ids([prefix])[0]])), soft], dim=1)
    with torch.no_grad():
        return torch.log_softmax(decoder.model(inputs_embeds=embeds).logits[0, -1].float(), dim=-1)


def test_logprobs_report_the_decoders_own_distribution_in_openai_shape_streamed_or_not(served, tiny_pipeline):
    url = served[0]
    greedy = {"prompt": "The movie", "max_tokens": 6, "seed": 3, "temperature": 0, "repetition_penalty": 1.0,
              "top_p": 1.0, "logprobs": 3}
    status, answer = request(url, "POST", "/v1/completions", greedy)
    choice = answer["choices"][0]
    logprobs = choice["logprobs"]
    assert status == 200 and "".join(logprobs["tokens"]) == choice["text"]
    assert logprobs["text_offset"] == [len("".join(logprobs["tokens"][:i])) for i in range(len(logprobs["tokens"]))]
    for chosen, top in zip(logprobs["token_logprobs"], logprobs["top_logprobs"]):
        assert 1 <= len(top) <= 4 and chosen <= 0  # tokens whose text reads alike share one entry
        assert chosen == max(top.values()), "greedy without penalties takes the likeliest token of the raw distribution"
    first_step = first_token_log_probs(tiny_pipeline, "The movie", seed=3)
    assert logprobs["token_logprobs"][0] == round(float(first_step.max()), 4)
    assert sorted(logprobs["top_logprobs"][0].values(), reverse=True)[0] == round(float(first_step.max()), 4)
    sampled = {**greedy, "temperature": 0.7, "repetition_penalty": 1.2, "stop": "e", "n": 2, "max_tokens": 12}
    status, answer = request(url, "POST", "/v1/completions", sampled)
    events = stream_events(url, sampled)
    for choice in answer["choices"]:
        assert "".join(choice["logprobs"]["tokens"]) == choice["text"], "tokens after the stop string are left out"
        parts = [e["choices"][0]["logprobs"] for e in events if e["choices"][0]["index"] == choice["index"]]
        assert {key: sum((part[key] for part in parts), []) for key in parts[0]} == choice["logprobs"]
    plain = request(url, "POST", "/v1/completions", {"prompt": "The movie", "max_tokens": 3})[1]
    assert plain["choices"][0]["logprobs"] is None


def test_logit_bias_bans_or_forces_tokens(served, tiny_pipeline):
    url = served[0]
    body = {"prompt": "The movie", "max_tokens": 5, "seed": 1, "temperature": 0}
    first = tiny_pipeline.decoder.token_ids([request(url, "POST", "/v1/completions", body)[1]["choices"][0]["text"]])[0][0]
    banned = request(url, "POST", "/v1/completions", {**body, "logit_bias": {str(first): -100}})[1]["choices"][0]["text"]
    assert tiny_pipeline.decoder.token_ids([banned])[0][0] != first
    forced = tiny_pipeline.decoder.token_ids([" good"])[0][0]
    text = request(url, "POST", "/v1/completions", {**body, "temperature": 1.0, "logit_bias": {str(forced): 100}})[1]
    assert tiny_pipeline.decoder.token_ids([text["choices"][0]["text"]])[0] == [forced] * 5


def test_a_request_that_chooses_among_candidates_gets_the_python_apis_text_streamed_or_not(served, tiny_pipeline):
    url = served[0]
    body = {"prompt": ["The movie", "A film"], "max_tokens": 8, "seed": 6, "candidates": 3,
            "attributes": ["toy_sentiment=positive"]}
    want = [alone(tiny_pipeline, p, 6 + i, ["toy_sentiment=positive"], max_new_tokens=8, candidates=3)
            for i, p in enumerate(body["prompt"])]
    with ThreadPoolExecutor(2) as pool:  # beside a request that does not choose, which may not share its batch
        plain = pool.submit(request, url, "POST", "/v1/completions", {"prompt": "The movie", "max_tokens": 8, "seed": 6})
        status, answer = request(url, "POST", "/v1/completions", body)
    assert status == 200 and [c["text"] for c in answer["choices"]] == want
    assert plain.result()[1]["choices"][0]["text"] == alone(tiny_pipeline, "The movie", 6, max_new_tokens=8)
    events = stream_events(url, {**body, "prompt": "A film", "seed": 7})
    assert "".join(e["choices"][0]["text"] for e in events) == want[1]
    stop = want[0][2:4]
    status, answer = request(url, "POST", "/v1/completions", {**body, "prompt": "The movie", "stop": stop})
    assert answer["choices"][0]["text"] == want[0][: want[0].find(stop)] and answer["choices"][0]["finish_reason"] == "stop"


def test_a_request_written_in_segments_gets_the_python_apis_text_streamed_token_by_token(served, tiny_pipeline):
    url = served[0]
    body = {"prompt": "A film", "max_tokens": 9, "seed": 4, "segment_tokens": 3, "attributes": ["toy_sentiment=positive"],
            "repetition_penalty": 1.0, "temperature": 0.3}
    settings = {"max_new_tokens": 9, "segment_tokens": 3, "repetition_penalty": 1.0, "temperature": 0.3}
    want = alone(tiny_pipeline, "A film", 4, ["toy_sentiment=positive"], **settings)
    status, answer = request(url, "POST", "/v1/completions", body)
    assert status == 200 and answer["choices"][0]["text"] == want
    events = stream_events(url, {**body, "stream": True})
    assert "".join(e["choices"][0]["text"] for e in events) == want
    assert sum(bool(e["choices"][0]["text"]) for e in events) > 3, "segments were not streamed as they were decoded"
    status, answer = request(url, "POST", "/v1/completions", {**body, "logprobs": 1})
    assert status == 200 and "".join(answer["choices"][0]["logprobs"]["tokens"]) == want
    first_segment = tiny_pipeline.decoder.decode(tiny_pipeline.decoder.token_ids([want])[0][:3])
    stop = want[len(first_segment) - 1: len(first_segment) + 1]  # spans the first segment's end
    status, answer = request(url, "POST", "/v1/completions", {**body, "stop": stop})
    assert answer["choices"][0]["text"] == want[: want.find(stop)] and answer["choices"][0]["finish_reason"] == "stop"
    with serve_in_thread(create_app(tiny_pipeline, "tiny", ServerLimits(batching="static"))) as static_url:
        assert request(static_url, "POST", "/v1/completions", body)[1]["choices"][0]["text"] == want
        status, answer = request(static_url, "POST", "/v1/completions", {**body, "logprobs": 1})
        assert status == 400 and "logprobs with segment_tokens needs continuous batching" in answer["error"]["message"]
        status, answer = request(static_url, "POST", "/v1/completions", {**body, "logprobs": 1, "max_tokens": 3})
        assert status == 200, "a request that fits in one segment is written whole, so it may ask for logprobs"


def test_a_segmented_request_guides_its_later_segments_as_the_python_api_does(served, tiny_pipeline):
    settings = {"max_new_tokens": 9, "segment_tokens": 3, "guidance_scale": 1000.0}  # strong enough to change tokens
    body = {"prompt": "A film", "seed": 4, "attributes": ["toy_sentiment=positive"], **settings}
    wants = []
    for share in (0.0, 1.0):
        wants.append(alone(tiny_pipeline, "A film", 4, ["toy_sentiment=positive"], segment_guidance=share, **settings))
        status, answer = request(served[0], "POST", "/v1/completions", {**body, "segment_guidance": share})
        assert status == 200 and answer["choices"][0]["text"] == wants[-1]
    assert wants[0] != wants[1]
    with serve_in_thread(create_app(tiny_pipeline, "tiny", ServerLimits(batching="static"))) as static_url:
        status, answer = request(static_url, "POST", "/v1/completions", {**body, "segment_guidance": 0.0})
        assert status == 200 and answer["choices"][0]["text"] == wants[0]


def test_a_segmented_request_with_candidates_passes_over_repeats_as_the_python_api_does(served, tiny_pipeline):
    the = tiny_pipeline.decoder.token_ids([" the"])[0][0]
    settings = {"max_new_tokens": 9, "segment_tokens": 3, "candidates": 3}  # " the" often: some drafts repeat it
    changed = 0
    for seed in range(4):
        texts = []
        for words in (0, 1):  # 1: a candidate that repeats a word of the text so far is passed over
            texts.append(alone(tiny_pipeline, "A film", seed, avoid_repeats=words, logit_bias={the: 5.0}, **settings))
            body = {"prompt": "A film", "seed": seed, "avoid_repeats": words, "logit_bias": {str(the): 5.0}, **settings}
            status, answer = request(served[0], "POST", "/v1/completions", body)
            assert status == 200 and answer["choices"][0]["text"] == texts[-1]
        changed += texts[0] != texts[1]
    assert changed, "the setting changed no choice: the test shows nothing"


def test_a_request_whose_segments_end_at_sentences_is_written_as_the_python_api_writes_it(served, tiny_pipeline):
    period = tiny_pipeline.decoder.token_ids(["."])[0][0]
    settings = {"max_new_tokens": 12, "segment_tokens": 4, "segment_end": "sentence"}
    for seed in range(2):
        want = alone(tiny_pipeline, "A film", seed, logit_bias={period: 5.0}, **settings)
        body = {"prompt": "A film", "seed": seed, "logit_bias": {str(period): 5.0}, **settings}
        status, answer = request(served[0], "POST", "/v1/completions", body)
        assert status == 200 and answer["choices"][0]["text"] == want
        assert "".join(e["choices"][0]["text"] for e in stream_events(served[0], body)) == want
    # rows that end at sentences and rows that do not share batches, and later segments join rows still decoding
    # (one plan of 40 tokens): each request still gets its text alone
    jobs = [(seed, {"segment_end": end}) for seed in range(4) for end in ("sentence", "length")]
    jobs += [(seed, {"segment_tokens": 0, "max_new_tokens": 40}) for seed in (7, 8)]

    def send(job):
        body = {"prompt": "A film", "seed": job[0], "logit_bias": {str(period): 5.0}, **settings, **job[1]}
        return request(served[0], "POST", "/v1/completions", body)[1]["choices"][0]["text"]

    with ThreadPoolExecutor(len(jobs)) as pool:
        texts = list(pool.map(send, jobs))
    assert max(served[1].state.server.engine.batch_sizes) > 1, "the requests were not batched together"
    assert texts == [alone(tiny_pipeline, "A film", seed, logit_bias={period: 5.0}, **{**settings, **changed})
                     for seed, changed in jobs]


def test_a_request_that_ends_at_a_sentence_streams_only_whole_sentences(served, tiny_pipeline):
    url, decoder = served[0], tiny_pipeline.decoder
    bias = {decoder.token_ids(["."])[0][0]: 4.0, decoder.token_ids([" the"])[0][0]: 4.0}  # write ". the" often

    def alone_ending(seed, **settings):
        rows = list(tiny_pipeline.plan(["The movie"], None, 1, seed=seed, logit_bias=bias, max_new_tokens=30,
                                       **settings))
        return decoder.decode(tiny_pipeline.generate_rows(rows)[0])

    cut = 0
    for seed in range(6):
        body = {"prompt": "The movie", "max_tokens": 30, "seed": seed, "end_at": "sentence",
                "logit_bias": {str(token): value for token, value in bias.items()}}
        want = alone_ending(seed, end_at="sentence")
        status, answer = request(url, "POST", "/v1/completions", body)
        assert status == 200 and answer["choices"][0]["text"] == want
        assert "".join(e["choices"][0]["text"] for e in stream_events(url, body)) == want
        if want != alone_ending(seed):
            cut += 1
            assert answer["choices"][0]["finish_reason"] == "stop"
    assert cut >= 2, "too few answers were cut for the test to show anything"


def test_json_depth_counts_brackets_outside_strings_and_reads_an_unclosed_string_once():
    from dglm.server.protocol import json_depth

    assert json_depth(b'{"a": [{"b": "x\\"[[", "c": [1, [2, [3]]]}]}') == 6
    assert json_depth(b'{"a": "unclosed [[[[') == 1
    assert json_depth(b'\\"' * 32000) == 0  # a quote on every other byte, none closed: one linear pass, not n^2


def test_a_surrogate_sent_as_json_is_called_a_surrogate_not_a_byte(served):
    status, answer = request(served[0], "POST", "/v1/completions", raw=b'{"prompt": "The \\udcff movie"}')
    assert status == 400 and "character 4 is a lone surrogate (\\udcff)" in answer["error"]["message"]
