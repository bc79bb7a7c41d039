"""The VLM judge: our prompts, strict parsing of its scores, and failures that surface as JudgeError."""

from __future__ import annotations

import pytest
from helpers import ChatServer, ScriptedAgent
from PIL import Image

from interleave_thinker.core.agents.openai_agent import OpenAIAgent
from interleave_thinker.training.judge import (
    QUALITY_PROMPT,
    SEMANTICS_PROMPT,
    AgentJudge,
    JudgeError,
    load_judge,
    parse_scores,
)

BEFORE = Image.new("RGB", (64, 64), "white")
AFTER = Image.new("RGB", (64, 64), "red")


@pytest.mark.parametrize(
    "text, scores",
    [
        ('{"score": [7, 9], "reasoning": "fine"}', [7.0, 9.0]),
        ('  {"score": [0, 10]}\n', [0.0, 10.0]),
        ('```json\n{"score": [6.5, 8], "reasoning": "ok"}\n```', [6.5, 8.0]),
    ],
)
def test_well_formed_answers_parse(text, scores):
    assert parse_scores(text) == scores


@pytest.mark.parametrize(
    "text, reason",
    [
        ("Score: 7", "not one JSON object"),
        ('Here you go: {"score": [7, 9]}', "not one JSON object"),
        ("{'score': [7, 9]}", "not one JSON object"),  # a Python literal is not the JSON the prompt asks for
        ('{"scores": [7, 9]}', "no 'score' key"),
        ('{"score": [7]}', "list of 2 numbers"),
        ('{"score": 7}', "list of 2 numbers"),
        ('{"score": [7, 11]}', "outside 0-10"),
        ('{"score": [7, "high"]}', "not a number"),
        ('{"score": [true, 9]}', "not a number"),
        ('{"score": [NaN, 9]}', "not a number"),
    ],
)
def test_anything_else_is_a_parse_failure_never_a_guess(text, reason):
    with pytest.raises(JudgeError, match=reason):
        parse_scores(text)


def test_the_judge_prompts_are_ours_and_carry_their_placeholders():
    semantics = SEMANTICS_PROMPT.read_text(encoding="utf-8")
    assert "{instruction}" in semantics and '"score"' in semantics
    assert '"score"' in QUALITY_PROMPT.read_text(encoding="utf-8")


def test_an_agent_judge_asks_with_the_images_and_takes_the_lower_score():
    agent = ScriptedAgent(['{"score": [8, 6], "reasoning": "a red square"}', '{"score": [9, 4]}'])
    judge = AgentJudge(agent)
    assert judge.semantics(BEFORE, AFTER, "paint it red") == 6.0
    assert judge.quality(AFTER) == 4.0
    first, second = agent.calls
    parts = first.messages[0]["content"]
    assert [p["type"] for p in parts] == ["image", "image", "text"]
    assert '"paint it red"' in parts[-1]["text"] and "{instruction}" not in parts[-1]["text"]
    assert [p["type"] for p in second.messages[0]["content"]] == ["image", "text"]
    assert first.temperature == 0.0


def test_a_judge_prompt_without_its_placeholder_is_refused(tmp_path):
    own = tmp_path / "judge.txt"
    own.write_text("Rate the picture.", encoding="utf-8")
    with pytest.raises(JudgeError, match="instruction"):
        AgentJudge(ScriptedAgent(["{}"]), semantics_prompt=own)


def test_an_openai_compatible_judge_over_http():
    def reply(request, n):
        return '{"score": [7, 8], "reasoning": "close"}' if n == 0 else (500, {"error": "overloaded"})

    with ChatServer(reply) as server:
        judge = load_judge(server.url, model="judge")
        assert isinstance(judge.agent, OpenAIAgent)
        assert judge.semantics(BEFORE, AFTER, "paint it red") == 7.0
        request = server.requests[0]
        assert request["model"] == "judge"
        images = [p for p in request["messages"][0]["content"] if p["type"] == "image_url"]
        assert len(images) == 2 and images[0]["image_url"]["url"].startswith("data:image/png;base64,")
        judge.agent.retries = 0
        with pytest.raises(JudgeError, match="HTTP 500"):
            judge.quality(AFTER)
