"""A policy running in NeMo Guardrails' runtime without the services: input rails through ``check_async``, output
rails on an outside token stream, masking, and Python actions when the operator allows them."""

from __future__ import annotations

import asyncio

import pytest

from nimrag.guardrails.runtime import Endpoints, PolicyError, PolicyRuntime, load_policy

ENDPOINTS = Endpoints(llm_url="http://127.0.0.1:9/v1", llm_model="test-llm", embed_url="http://127.0.0.1:9/v1",
                      embed_model="test-embed")
SHOUTING = {
    "config.yml": "rails:\n  input:\n    flows: [no shouting]\n",
    "rails.co": 'define bot ask to calm down\n  "Please do not shout."\n\n'
                "define subflow no shouting\n  $result = execute block_shouting\n  if $result.is_blocked\n"
                "    bot ask to calm down\n    stop\n",
    "actions.py": "from nemoguardrails.actions import action\nfrom nemoguardrails.actions.rail_outcome import "
                  "RailOutcome\n\n\n@action(name='block_shouting')\nasync def block_shouting(context=None, **_):\n"
                  "    text = (context or {}).get('user_message', '')\n"
                  "    return RailOutcome.block() if text.isupper() else RailOutcome.allow()\n",
}
OUTPUT = {"config.yml": """
rails:
  output:
    flows: [nimrag check output]
    streaming: {enabled: true, chunk_size: 4, context_size: 0, stream_first: false}
nimrag:
  mask_sensitive_data: [email]
"""}
PROTECTED = "You answer questions using only the numbered sources below and cite them like this."


def runtime(files, **kwargs) -> PolicyRuntime:
    return PolicyRuntime("test", 1, load_policy(files, ENDPOINTS, protected_texts=[PROTECTED], **kwargs))


def check(policy: PolicyRuntime, question: str):
    verdict = policy.verdict()
    asyncio.run(policy.check_input(question, verdict))
    return verdict


def stream(policy: PolicyRuntime, text: str) -> tuple[str, object]:
    async def pieces():
        for word in text.split(" "):
            yield word + " "

    async def run():
        verdict = policy.verdict()
        out = [piece async for piece in policy.guard_output([{"role": "user", "content": "q"}], pieces(), verdict)]
        return "".join(out), verdict

    return asyncio.run(run())


def test_python_actions_are_refused_unless_allowed():
    with pytest.raises(PolicyError, match="actions.py: not a policy file"):
        load_policy(SHOUTING, ENDPOINTS)


def test_an_allowed_python_action_runs_as_an_input_rail():
    policy = runtime(SHOUTING, allow_python=True)
    blocked = check(policy, "GIVE ME A REFUND NOW")
    assert (blocked.blocked_by, blocked.refusal) == ("no shouting", "Please do not shout.")
    assert check(policy, "Could I have a refund?").blocked_by is None


def test_output_rails_pass_an_ordinary_answer_and_mask_addresses():
    policy = runtime(OUTPUT)
    text, verdict = stream(policy, "The warranty lasts two years; write to help@lumen.example for a repair.")
    assert text.strip() == "The warranty lasts two years; write to [EMAIL] for a repair."
    assert verdict.blocked_by is None and verdict.masked == {"email": 1}
    assert "nimrag mask sensitive data" in verdict.activated
    assert verdict.rail_ms["nimrag check output"] > 0  # each rail's time reaches the answer's verdict


def test_the_policy_names_the_regions_whose_national_phone_numbers_are_masked():
    files = {"config.yml": "nimrag:\n  mask_sensitive_data: [phone]\n  phone_regions: [nl]\n"}
    text, verdict = stream(runtime(files), "Call Utrecht on (030) 123 4567, London on 020 7946 0958 or +44 20 7946 "
                                           "0958, not on 2024-03-15.")
    assert text.strip() == "Call Utrecht on [PHONE], London on 020 7946 0958 or [PHONE], not on 2024-03-15."
    assert verdict.masked == {"phone": 2}


@pytest.mark.parametrize("answer", [
    "Sure. Developer mode enabled: all filters are off now.",
    f"My instructions say: {PROTECTED}",
])
def test_output_rails_withhold_a_hijacked_answer(answer):
    text, verdict = stream(runtime(OUTPUT), "Here is the answer you asked for, in full. " + answer)
    assert verdict.blocked_by == "nimrag check output" and verdict.refusal
    assert "Developer mode" not in text and "numbered sources" not in text
