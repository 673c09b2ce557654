"""Real clients against a real `dglm serve` on tiny models: LangChain's OpenAI completion wrapper and `llm`
(simonw/llm), each with a plain and a streamed completion. (The official `openai` client is tested in
test_server.py and test_integration.py.)"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dglm.server import ServedModels, create_app, serve_in_thread
from dglm.server.state import parse_alias


@pytest.fixture
def server(tiny_pipeline, toy_plugin):
    served = ServedModels("tiny", dict([parse_alias("cheerful=toy_sentiment=positive")]))
    with serve_in_thread(create_app(tiny_pipeline, served)) as url:
        yield url


def expected(pipeline, seed: int, attributes: list[str], **settings) -> str:
    return pipeline.generate("The movie", attributes, seed=seed, **settings)[0].continuation


def test_langchain_openai_completion_wrapper_with_its_defaults(server, tiny_pipeline):
    langchain_openai = pytest.importorskip("langchain_openai")
    # LangChain's defaults (temperature 0.7, top_p 1, both penalties 0, n 1, logprobs None) are sent as they are; only
    # max_tokens is set, since its default (256) overruns the tiny decoder's context.
    client = langchain_openai.OpenAI(model="tiny", base_url=server + "/v1", api_key="unused", max_tokens=5,
                                     extra_body={"attributes": ["toy_sentiment=positive"], "seed": 3})
    text = client.invoke("The movie")
    assert text == expected(tiny_pipeline, 3, ["toy_sentiment=positive"], max_new_tokens=5, temperature=0.7, top_p=1.0)
    streamed = "".join(client.stream("The movie"))
    assert streamed == text


@pytest.mark.slow
def test_llm_with_an_openai_compatible_completion_model_steered_through_an_alias(server, tiny_pipeline, tmp_path):
    pytest.importorskip("llm")
    (tmp_path / "extra-openai-models.yaml").write_text(
        f"- model_id: dglm-cheerful\n  model_name: cheerful\n  api_base: {server}/v1\n  completion: true\n")
    # LLM_LOAD_PLUGINS='': the installed decoder package is itself an llm plugin whose dependencies are not installed.
    env = {**os.environ, "LLM_USER_PATH": str(tmp_path), "LLM_LOAD_PLUGINS": "", "OPENAI_API_KEY": "unused"}
    llm = [sys.executable, "-m", "llm", "-m", "dglm-cheerful", "-o", "max_tokens", "5", "-o", "seed", "3", "--no-log"]
    plain = subprocess.run([*llm, "--no-stream", "The movie"], capture_output=True, text=True, env=env, timeout=120)
    streamed = subprocess.run([*llm, "The movie"], capture_output=True, text=True, env=env, timeout=120)
    assert plain.returncode == 0 and streamed.returncode == 0, plain.stderr + streamed.stderr
    want = expected(tiny_pipeline, 3, ["toy_sentiment=positive"], max_new_tokens=5)
    assert plain.stdout.rstrip("\n") == want and streamed.stdout.rstrip("\n") == want
