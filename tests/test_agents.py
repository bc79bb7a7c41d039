"""Both agent backends: a tiny real Qwen3-VL through transformers, and chat completions over loopback HTTP."""

import base64
import io
from pathlib import Path

import pytest
from helpers import ChatServer, free_port, plan_text, verdict_text
from PIL import Image

from interleave_thinker.core.agents import AgentError, Decoding, load_agent
from interleave_thinker.core.agents.transformers_agent import resident_bytes
from interleave_thinker.core.endpoints import KEY_ENVS_ENV, EndpointPolicyError
from interleave_thinker.core.loop import LoopConfig, make_plan
from interleave_thinker.core.messages import critic_messages, planner_messages
from interleave_thinker.core.protocol import ProtocolError, parse_verdict

SHORT = Decoding(max_new_tokens=12)


@pytest.fixture(scope="module")
def tiny_agent(tiny_agent_dir):
    return load_agent(str(tiny_agent_dir), decoding=SHORT, device="cpu")


# ---------------------------------------------------------------------------------------------------------
# transformers


def test_image_tokens_in_the_inputs_match_the_images_sent(tiny_agent):
    before = Image.new("RGB", (300, 200), "white")
    after = Image.new("RGB", (64, 64), "red")
    inputs = tiny_agent.prepare(critic_messages(before, after, "a red square", "a red square"))
    grid = inputs["image_grid_thw"]
    assert grid.shape[0] == 2  # before and after, in that order
    merge = tiny_agent.processor.image_processor.merge_size
    expected = int(grid.prod(dim=1).sum()) // merge**2
    image_token = tiny_agent.model.config.image_token_id
    assert int((inputs["input_ids"] == image_token).sum()) == expected
    # The wider before image gets more patches than the small square after image.
    assert grid[0].prod() > grid[1].prod()


def test_decoding_returns_the_new_text_and_greedy_is_repeatable(tiny_agent):
    messages = planner_messages("a red circle, then a blue square")
    first = tiny_agent.complete(messages, seed=1)
    again = tiny_agent.complete(messages, seed=99)  # greedy: the seed does not matter
    assert isinstance(first, str) and first == again
    inputs = tiny_agent.prepare(messages)
    output = tiny_agent.model.generate(**inputs, **tiny_agent.generation_kwargs(None))
    assert output.shape[1] - inputs["input_ids"].shape[1] <= SHORT.max_new_tokens
    expected = tiny_agent.tokenizer.decode(
        output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )
    assert first == expected.strip()


def test_sampling_is_seeded(tiny_agent):
    messages = planner_messages("a red circle")
    one = tiny_agent.complete(messages, seed=5, temperature=1.0)
    assert one == tiny_agent.complete(messages, seed=5, temperature=1.0)


def test_end_of_turn_stops_generation(tiny_agent):
    vocab = tiny_agent.tokenizer.get_vocab()
    assert vocab["<|im_end|>"] in tiny_agent.eos_token_id


def test_cancel_stops_a_long_answer_between_two_tokens(tiny_agent_dir):
    """Cancel is asked after every generated token: a 2048-token answer stops a few tokens after it."""
    from interleave_thinker.core.errors import Cancelled

    agent = load_agent(str(tiny_agent_dir), decoding=Decoding(max_new_tokens=2048), device="cpu")
    agent.eos_token_id = [-1]  # never stop on its own: only Cancel can end this answer early
    asked = []

    def cancel():
        asked.append(True)
        return len(asked) > 5

    generated = []
    generate = agent.model.generate

    def recording_generate(**kwargs):
        output = generate(**kwargs)
        generated.append(output.shape[1] - kwargs["input_ids"].shape[1])
        return output

    agent.model.generate = recording_generate
    messages = planner_messages("a red circle", [], "narrative")
    with pytest.raises(Cancelled):
        agent.complete(messages, seed=0, cancel=cancel)
    assert generated and generated[0] <= 6  # not 2048
    assert (
        agent.complete(messages, seed=0, cancel=lambda: False) is not None
    )  # the hook alone changes nothing


def test_a_prompt_longer_than_the_context_is_refused_before_decoding(tiny_agent, monkeypatch):
    from interleave_thinker.core.agents.base import PromptTooLong
    from interleave_thinker.core.errors import BadInput

    monkeypatch.setattr(tiny_agent.model.config.text_config, "max_position_embeddings", 64)
    monkeypatch.setattr(tiny_agent.model, "generate", lambda **kwargs: pytest.fail("decoding started"))
    with pytest.raises(PromptTooLong, match=r"the prompt is \d+ tokens but .* reads at most 64") as refused:
        tiny_agent.complete(planner_messages("a red circle " * 200, [], "narrative"), seed=0)
    assert isinstance(refused.value, BadInput)  # the user's to fix: the CLI exits 2


def test_garbage_from_a_real_model_ends_in_bounded_resampling_and_the_typed_error(tiny_agent, monkeypatch):
    calls = []
    generate = tiny_agent.model.generate

    def counting_generate(**kwargs):
        calls.append(kwargs.get("do_sample"))
        return generate(**kwargs)

    monkeypatch.setattr(tiny_agent.model, "generate", counting_generate)
    with pytest.raises(ProtocolError, match="no valid plan after 2 tries"):
        make_plan(tiny_agent, "a red circle", config=LoopConfig(planner_tries=2))
    assert calls == [False, True]  # greedy first, then one re-sample


def test_missing_model_folder_names_where_it_looked(tmp_path):
    with pytest.raises(AgentError, match=f"model folder not found: {tmp_path / 'nope'}"):
        load_agent(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(AgentError, match="has no config.json"):
        load_agent(str(tmp_path / "empty"))


# ---------------------------------------------------------------------------------------------------------
# Quantized weights (bitsandbytes, which runs int8 and nf4 on the CPU as well)

SHIPPED_PLANNER = Path(__file__).resolve().parents[1] / "sandbox" / "agents" / "planner"
PLAN_TOKENS = Decoding(max_new_tokens=400)  # a sandbox plan fits well within this


@pytest.fixture(scope="module")
def planners():
    """The shipped tiny Planner (trained to plan sandbox stories) in fp32, int8 and nf4."""
    pytest.importorskip("bitsandbytes", reason="quantized agents need bitsandbytes (the quant extra)")
    return {
        quantize: load_agent(
            SHIPPED_PLANNER, device="cpu", dtype="fp32", quantize=quantize, decoding=PLAN_TOKENS
        )
        for quantize in ("none", "int8", "nf4")
    }


def test_a_quantized_planner_plans_the_test_prompts_as_the_full_precision_one(planners):
    from interleave_thinker.sandbox.tasks import KINDS, make_tasks

    every = make_tasks("test", 60)
    tasks = [next(t for t in every if t.kind == kind) for kind in KINDS]  # one prompt of each kind
    plans = {
        quantize: [
            make_plan(agent, t.instruction, t.input_images(), config=LoopConfig(mode=t.mode)) for t in tasks
        ]
        for quantize, agent in planners.items()
    }
    assert all(result.tries == 1 for results in plans.values() for result in results)  # each answered at once
    # The whole parsed plan: steps, names, instructions, the generator's prompts and the reader's text. (On
    # this 1.2M-parameter model the reader's text is the most fragile part: bf16 alone changes it on some
    # other prompts; the prompts stay the same there too.)
    assert [r.plan.to_dict() for r in plans["int8"]] == [r.plan.to_dict() for r in plans["none"]]

    # nf4 keeps 4 bits of each weight: on the shipped Planner it plans the same steps, and one relation word
    # of one prompt flips ("left of" for "right of").
    def outline(result):
        return [(step.step_number, step.step_name, step.makes_image) for step in result.plan.steps]

    assert [outline(r) for r in plans["nf4"]] == [outline(r) for r in plans["none"]]

    def words(results):
        return [
            w for r in results for step in r.plan.steps for w in (step.prompt or step.display_text).split()
        ]

    assert sum(a != b for a, b in zip(words(plans["nf4"]), words(plans["none"]))) <= 1


def _linear_bytes(agent, names) -> int:
    modules = dict(agent.model.named_modules())
    return sum(resident_bytes(modules[name]) for name in names)


def test_quantized_linear_layers_take_a_fraction_of_their_fp32_size(planners):
    import bitsandbytes as bnb

    full = planners["none"]
    for quantize, kind, most in (("int8", bnb.nn.Linear8bitLt, 0.6), ("nf4", bnb.nn.Linear4bit, 0.35)):
        agent = planners[quantize]
        names = [name for name, module in agent.model.named_modules() if isinstance(module, kind)]
        assert len(names) >= 20, quantize  # every attention and MLP projection, the vision tower's too
        ratio = _linear_bytes(agent, names) / _linear_bytes(full, names)
        assert ratio <= most, (quantize, ratio)
        assert agent.size_bytes < full.size_bytes
        assert agent.info["weights"] == quantize and agent.info["resident_bytes"] == agent.size_bytes
        assert f"{quantize} weights" in agent.describe()
    assert full.info["weights"] == "fp32" and full.size_bytes == resident_bytes(full.model)


def test_a_story_records_each_agents_weights_and_resident_size(planners, tmp_path):
    from helpers import PaintGenerator

    from interleave_thinker.core.loop import run_story
    from interleave_thinker.core.storyboard import Storyboard
    from interleave_thinker.sandbox.tasks import make_tasks

    task = next(t for t in make_tasks("test", 20) if not t.input_images())
    agent = planners["nf4"]
    board = run_story(task.instruction, agent, PaintGenerator(), None, config=LoopConfig(width=64, height=64))
    recorded = board.settings["agents"]
    assert recorded == {"planner": agent.info} and recorded["planner"]["resident_bytes"] == agent.size_bytes
    assert board.settings["planner"] == "planner"  # the name, where it always was
    assert Storyboard.load(board.save(tmp_path / "story")).settings["agents"] == recorded


def test_an_unknown_or_unavailable_weight_format_is_refused_before_loading(tiny_agent_dir, monkeypatch):
    from importlib import metadata

    from interleave_thinker.core.settings import BadSetting

    with pytest.raises(BadSetting, match="quantize must be one of none, int8, nf4, got 'int3'"):
        load_agent(tiny_agent_dir, device="cpu", quantize="int3")
    real = metadata.version

    def missing(name):
        if name == "bitsandbytes":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "version", missing)
    with pytest.raises(AgentError, match=r"quantize=nf4 needs bitsandbytes>=0\.48 .*pip install"):
        load_agent(tiny_agent_dir, device="cpu", quantize="nf4")


# ---------------------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP


def _critic_call():
    return critic_messages(Image.new("RGB", (32, 32), "white"), Image.new("RGB", (32, 32), "blue"), "a", "b")


def test_http_request_carries_model_images_and_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("TEST_AGENT_KEY", "s3cret")
    monkeypatch.setenv(KEY_ENVS_ENV, "TEST_AGENT_KEY")  # the owner allowed this variable to hold a key
    with ChatServer(lambda body, n: verdict_text(True)) as server:
        agent = load_agent(server.url, model="critic-8b", api_key_env="TEST_AGENT_KEY", decoding=SHORT)
        answer = agent.complete(_critic_call(), seed=3)
    assert parse_verdict(answer).accepted is True
    request = server.requests[0]
    assert request["model"] == "critic-8b" and request["max_tokens"] == SHORT.max_new_tokens
    assert request["temperature"] == 0.0 and request["seed"] == 3
    assert request["_headers"]["Authorization"] == "Bearer s3cret"
    parts = request["messages"][0]["content"]
    assert [part["type"] for part in parts] == ["image_url", "image_url", "text"]
    header, data = parts[1]["image_url"]["url"].split(",", 1)
    assert header == "data:image/png;base64"
    assert Image.open(io.BytesIO(base64.b64decode(data))).getpixel((0, 0)) == (0, 0, 255)


def test_http_500_is_retried_with_backoff_then_answers():
    waits = []
    replies = [(500, {"error": {"message": "overloaded"}}), plan_text("a cat")]
    with ChatServer(lambda body, n: replies[n]) as server:
        agent = load_agent(server.url, model="m")
        agent._sleep = waits.append
        assert "execution_plan" in agent.complete(planner_messages("a cat"), seed=0)
    assert len(server.requests) == 2 and round(sum(waits), 6) == 1.0


def test_http_errors_name_the_url_and_status():
    with ChatServer(lambda body, n: (500, {"error": {"message": "model crashed"}})) as server:
        agent = load_agent(server.url, model="m")
        agent.retries, agent._sleep = 2, lambda s: None
        with pytest.raises(AgentError) as caught:
            agent.complete(planner_messages("a cat"), seed=0)
    message = str(caught.value)
    assert server.url in message and "HTTP 500" in message and "model crashed" in message
    assert "after 3 attempt(s)" in message and len(server.requests) == 3


def test_http_client_errors_are_not_retried():
    with ChatServer(lambda body, n: (404, {"error": "no such model"})) as server:
        agent = load_agent(server.url, model="m")
        with pytest.raises(AgentError, match="HTTP 404: no such model"):
            agent.complete(planner_messages("a cat"), seed=0)
    assert len(server.requests) == 1


def test_http_timeout_is_bounded():
    with ChatServer(lambda body, n: ("sleep", 1.5)) as server:
        agent = load_agent(server.url, model="m", timeout=0.3)
        agent.retries, agent._sleep = 1, lambda s: None
        # The timeout bounds the whole call: the first attempt used it all, so there was no second.
        with pytest.raises(AgentError, match=r"no complete answer within 0.3 s .* after 1 attempt\(s\)"):
            agent.complete(planner_messages("a cat"), seed=0)


def test_unreachable_endpoint_says_so():
    url = f"http://127.0.0.1:{free_port()}/v1"
    agent = load_agent(url, model="m")
    agent.retries = 0
    with pytest.raises(AgentError, match="unreachable") as caught:
        agent.complete(planner_messages("a cat"), seed=0)
    assert url in str(caught.value)


def test_a_missing_api_key_variable_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    monkeypatch.setenv(KEY_ENVS_ENV, "NO_SUCH_KEY_VAR")
    with pytest.raises(EndpointPolicyError, match="environment variable NO_SUCH_KEY_VAR is not set"):
        load_agent("http://127.0.0.1:1/v1", model="m", api_key_env="NO_SUCH_KEY_VAR")
