"""The service on the transformers engine (the CUDA engine's code, here on the CPU), through the openai SDK:
the same API whatever the profile, and a clear 400 for what this engine cannot enforce."""

from __future__ import annotations

import openai
import pytest

from nimrag.services.llm.model import DEFAULT_MODEL_NAME
from tests.conftest import start_service
from tests.services.llm.conftest import metric


@pytest.fixture(scope="module")
def transformers_service(service_tmp):
    svc = start_service("llm", service_tmp, env={"NIM_MODEL_PROFILE": "transformers-fp32-tp1-latency"})
    yield svc
    svc.stop()


def test_chat_stream_and_unsupported_constraint(transformers_service):
    client = openai.OpenAI(base_url=transformers_service.base_url + "/v1", api_key="unused", max_retries=0)
    ask = {"model": DEFAULT_MODEL_NAME, "max_tokens": 8, "temperature": 0,
           "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    whole = client.chat.completions.create(**ask)
    assert whole.choices[0].message.content and whole.usage.completion_tokens <= 8
    assert whole.system_fingerprint == "nimrag-transformers-fp32-tp1-latency"
    chunks = list(client.chat.completions.create(**ask, n=2, stream=True))
    texts = ["".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
             for i in (0, 1)]
    assert texts == [whole.choices[0].message.content] * 2  # greedy: both choices, streamed, equal the whole
    with pytest.raises(openai.BadRequestError, match="not supported by the 'transformers' engine"):
        client.chat.completions.create(**ask, response_format={"type": "json_object"})
    assert metric(transformers_service.base_url, "num_requests_running") == 0
