import json

import pytest
from helpers import PaintGenerator, ScriptedAgent, pixels, plan_text, verdict_text
from PIL import Image

from interleave_thinker.core.loop import (
    Cancelled,
    LoopConfig,
    derive_seed,
    make_plan,
    run_plan,
    run_story,
)
from interleave_thinker.core.messages import message_images, message_text
from interleave_thinker.core.protocol import Plan, PlanStep, ProtocolError
from interleave_thinker.core.settings import BadSetting
from interleave_thinker.core.storyboard import Storyboard

CONFIG = LoopConfig(width=64, height=64, seed=7)


def story(plan, critic_replies, config=CONFIG, **kwargs):
    generator = PaintGenerator()
    critic = ScriptedAgent(critic_replies, "critic") if critic_replies is not None else None
    board = run_story("a tale", ScriptedAgent([plan], "planner"), generator, critic, config=config, **kwargs)
    return board, generator, critic


def test_every_retry_edits_the_same_before_image():
    board, generator, critic = story(
        plan_text("a cat", "add a hat"),
        [
            verdict_text(True),
            verdict_text(False, "a red hat"),
            verdict_text(False, "a big red hat"),
            verdict_text(True),
        ],
    )
    edits = [call for call in generator.calls if call[0] == "edit"]
    assert [call[1] for call in edits] == ["add a hat", "a red hat", "a big red hat"]
    step1 = board.steps[0].image
    assert all(pixels(call[3]) == pixels(step1) for call in edits)


def test_the_kept_image_becomes_the_next_before_image():
    board, generator, _ = story(
        plan_text("a cat", "add a hat", "add a scarf"),
        [verdict_text(True), verdict_text(False, "red hat"), verdict_text(True), verdict_text(True)],
    )
    edits = [call for call in generator.calls if call[0] == "edit"]
    scarf = [call for call in edits if call[1] == "add a scarf"][0]
    assert pixels(scarf[3]) == pixels(board.steps[1].image)
    assert board.steps[1].kept.prompt == "red hat"  # the accepted retry, not the rejected first try
    assert pixels(board.steps[1].image) != pixels(board.steps[1].attempts[0].image)


def test_attempts_are_bounded_and_the_last_one_is_kept():
    board, generator, critic = story(
        plan_text("a cat"),
        [verdict_text(False, "try again")],
        config=LoopConfig(width=64, height=64, max_attempts=3),
    )
    step = board.steps[0]
    assert len(generator.calls) == 3 and len(step.attempts) == 3
    assert [a.status for a in step.attempts] == ["rejected"] * 3
    assert step.status == "rejected" and step.kept is step.attempts[-1]


def test_narrative_step_one_is_drawn_from_text_and_judged_against_a_white_canvas():
    board, generator, critic = story(
        plan_text("a cat"), [verdict_text(False, "a cat, bigger"), verdict_text(True)]
    )
    assert [call[0] for call in generator.calls] == ["text_to_image", "text_to_image"]
    before, after = message_images(critic.calls[0].messages)
    assert before.size == (64, 64) and set(before.getdata()) == {(255, 255, 255)}
    assert pixels(after) == pixels(board.steps[0].attempts[0].image)
    text = message_text(critic.calls[1].messages)
    assert '"a cat"' in text and '"a cat, bigger"' in text  # original step prompt and the prompt used
    assert [a.route for a in board.steps[0].attempts] == ["text-to-image", "text-to-image"]


def test_critic_output_that_never_parses_keeps_the_image_unchecked():
    config = LoopConfig(width=64, height=64, critic_tries=3)
    board, generator, critic = story(plan_text("a cat", "a hat"), ["no idea", "still no idea"], config=config)
    assert len(critic.calls) == 6  # three tries for each step, then give up
    assert [call.temperature for call in critic.calls[:3]] == [None, 0.7, 0.7]
    assert len({call.seed for call in critic.calls}) == 6
    for step in board.steps:
        assert len(step.attempts) == 1 and step.status == "unchecked"
        assert "invalid verdict" in step.kept.critic_error and step.kept.critic_output == "still no idea"


def test_text_only_steps_do_not_call_the_generator():
    plan = (
        "<answer>{'execution_plan': [{'step_number': 1, 'instruction': 'Boil water', 'prompt': 'a kettle'}, "
        "{'step_number': 2, 'auxiliary_text': 'Wait three minutes.'}, "
        "{'step_number': 3, 'instruction': 'Pour', 'prompt': 'pour the tea'}]}</answer>"
    )
    board, generator, critic = story(plan, [verdict_text(True)])
    assert [call[1] for call in generator.calls] == ["a kettle", "pour the tea"]
    assert board.steps[1].attempts == [] and board.steps[1].status == "text"
    assert pixels(generator.calls[1][3]) == pixels(
        board.steps[0].image
    )  # the text step kept the before image
    assert board.text() == "Boil water\n\nWait three minutes.\n\nPour"
    assert len(board.images) == 2


def test_the_same_seed_gives_the_same_storyboard_and_another_seed_does_not():
    replies = [verdict_text(False, "again"), verdict_text(True)]
    first, _, _ = story(plan_text("a cat", "a hat"), replies)
    second, _, _ = story(plan_text("a cat", "a hat"), replies)
    other, _, _ = story(plan_text("a cat", "a hat"), replies, config=LoopConfig(width=64, height=64, seed=8))
    assert [pixels(a.image) for a in first.attempts] == [pixels(a.image) for a in second.attempts]
    assert [a.seed for a in first.attempts] == [a.seed for a in second.attempts]
    assert [a.seed for a in first.attempts] != [a.seed for a in other.attempts]
    assert len({a.seed for a in first.attempts}) == len(first.attempts)  # each attempt varies the seed
    assert derive_seed(7, "image", 0, 1) == first.attempts[0].seed


def test_cancel_stops_before_the_next_model_call():
    generator = PaintGenerator()
    critic = ScriptedAgent([verdict_text(False, "again")])
    calls = []

    def cancel():
        # Ask to stop once the first image exists: the critic must not be called for it.
        return len(generator.calls) >= 1

    planner = ScriptedAgent([plan_text("a cat", "a hat")])
    with pytest.raises(Cancelled):
        run_story("a tale", planner, generator, critic, config=CONFIG, cancel=cancel, on_event=calls.append)
    assert len(generator.calls) == 1 and critic.calls == []
    assert [e.kind for e in calls] == ["PlanReady", "AttemptStarted", "ImageReady"]


def test_cancel_before_planning_calls_nothing():
    planner = ScriptedAgent([plan_text("a")])
    with pytest.raises(Cancelled):
        make_plan(planner, "a tale", cancel=lambda: True)
    assert planner.calls == []


def test_unparseable_plans_are_resampled_a_bounded_number_of_times_then_fail():
    planner = ScriptedAgent(["rubbish"])
    with pytest.raises(ProtocolError, match="no valid plan after 3 tries") as caught:
        make_plan(planner, "a tale", config=LoopConfig(planner_tries=3))
    assert caught.value.excerpt == "rubbish"
    assert len(planner.calls) == 3
    assert planner.calls[0].temperature is None and planner.calls[1].temperature > 0
    assert len({c.seed for c in planner.calls}) == 3


def test_a_later_sample_can_rescue_the_plan():
    planner = ScriptedAgent(["rubbish", plan_text("a cat")])
    result = make_plan(planner, "a tale")
    assert result.tries == 2 and len(result.plan) == 1 and "rubbish" in result.errors[0]


def test_fallback_single_step_plan_when_asked():
    planner = ScriptedAgent(["rubbish"])
    result = make_plan(planner, "  a cat in a hat ", config=LoopConfig(fallback_single_step=True))
    assert result.plan.steps == (PlanStep(1, "Result", "a cat in a hat", "a cat in a hat", None),)


def test_too_long_plans_are_invalid_and_resampled():
    planner = ScriptedAgent([plan_text(*"abcdef"), plan_text("a", "b")])
    result = make_plan(planner, "a tale", config=LoopConfig(max_steps=3))
    assert result.tries == 2 and len(result.plan) == 2


def test_without_a_critic_every_first_attempt_is_kept():
    board, generator, _ = story(plan_text("a cat", "a hat"), None)
    assert [len(s.attempts) for s in board.steps] == [1, 1]
    assert all(s.status == "unchecked" for s in board.steps)


def test_last_attempt_can_skip_the_critic():
    config = LoopConfig(width=64, height=64, max_attempts=2, check_last_attempt=False)
    board, generator, critic = story(plan_text("a cat"), [verdict_text(False, "again")], config=config)
    assert len(critic.calls) == 1 and [a.status for a in board.steps[0].attempts] == ["rejected", "unchecked"]


def test_guidance_stories_continue_from_the_last_user_image():
    user = [Image.new("RGB", (80, 48), "red"), Image.new("RGB", (80, 48), "blue")]
    plan = plan_text("stack the blue block on top")
    board, generator, critic = story(plan, [verdict_text(True)], images=user)
    assert board.mode == "guidance"
    kind, prompt, _, before = generator.calls[0]
    assert kind == "edit" and pixels(before) == pixels(user[1])
    assert board.steps[0].image.size == (80, 48)
    assert pixels(message_images(critic.calls[0].messages)[0]) == pixels(user[1])


def test_events_follow_the_story():
    events = []
    story(plan_text("a cat", "a hat"), [verdict_text(False, "x"), verdict_text(True)], on_event=events.append)
    kinds = [e.kind for e in events]
    assert kinds == [
        "PlanReady",
        "AttemptStarted",
        "ImageReady",
        "VerdictReady",
        "AttemptStarted",
        "ImageReady",
        "VerdictReady",
        "StepDone",
        "AttemptStarted",
        "ImageReady",
        "VerdictReady",
        "StepDone",
    ]
    assert events[-1].total_steps == 2


def test_run_plan_records_the_route_and_settings():
    generator = PaintGenerator(edit_route="reference")
    plan = Plan((PlanStep(1, "a", None, "a cat"), PlanStep(2, "b", None, "a hat")))
    board = run_plan(plan, generator, None, instruction="x", config=CONFIG)
    assert [s.kept.route for s in board.steps] == ["text-to-image", "reference"]
    assert board.settings["edit_route"] == "reference" and board.settings["generator"] == "paint"


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_attempts", 0),
        ("max_attempts", 11),
        ("max_steps", 0),
        ("max_steps", 1000),
        ("width", 8),
        ("planner_tries", 0),
        ("mode", "poem"),
        ("seed", -1),
    ],
)
def test_bad_loop_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field if field != "mode" else "mode"):
        LoopConfig(**{field: value})


class _DownCritic:
    """A Critic whose endpoint fails on every call."""

    name = "down"

    def __init__(self, error):
        self.error, self.calls = error, 0

    def complete(self, messages, *, seed, temperature=None, cancel=None):
        self.calls += 1
        raise self.error


def test_a_critic_that_cannot_be_used_keeps_each_picture_unchecked_with_the_error():
    from interleave_thinker.core.agents.base import AgentError

    critic = _DownCritic(AgentError("http://127.0.0.1:9/v1/chat/completions: HTTP 500: boom"))
    generator = PaintGenerator()
    board = run_story(
        "a tale", ScriptedAgent([plan_text("a cat", "a hat")]), generator, critic, config=CONFIG
    )
    assert (
        len(generator.calls) == 2 and critic.calls == 2
    )  # one picture a step, kept: no retries on a failure
    for step in board.steps:
        assert step.status == "unchecked" and step.kept.verdict is None and step.kept.critic_failed
        assert step.kept.critic_error == (
            "the Critic could not be used: http://127.0.0.1:9/v1/chat/completions: HTTP 500: boom"
        )
    assert len(board.images) == 2


def test_an_unparseable_verdict_is_unchecked_but_not_a_failed_critic():
    board, _, _ = story(plan_text("a cat"), ["no idea"])
    assert board.steps[0].status == "unchecked" and not board.steps[0].kept.critic_failed


def test_cancel_inside_the_critic_is_not_taken_for_a_failure():
    critic = _DownCritic(Cancelled("cancelled during generation"))
    with pytest.raises(Cancelled):
        run_story("a tale", ScriptedAgent([plan_text("a cat")]), PaintGenerator(), critic, config=CONFIG)


# ---------------------------------------------------------------------------------------------------------
# Best of the attempts


def _rejecting(messages, n):
    """Rejects everything; the second attempt's verdict names one problem, the others three."""
    problems = "the hat is missing" if n == 1 else "the hat is missing, the colour is wrong, an extra cat"
    return verdict_text(False, f"try {n + 2}", think=problems)


def test_best_keeps_the_rejected_attempt_naming_the_fewest_problems_and_says_why(tmp_path):
    config = LoopConfig(width=64, height=64, max_attempts=3, keep_attempt="best")
    board, generator, _ = story(plan_text("a cat", "add a hat"), _rejecting, config=config)
    step = board.steps[0]
    assert [a.status for a in step.attempts] == ["rejected"] * 3
    assert step.kept is step.attempts[1] and pixels(step.image) == pixels(step.attempts[1].image)
    edits = [call for call in generator.calls if call[0] == "edit"]
    assert edits and all(pixels(call[3]) == pixels(step.attempts[1].image) for call in edits)
    assert "attempt 2 names the fewest problems" in step.kept_reason
    # The next step edits the kept picture, and the saved folder shows it and loads back the same.
    loaded = Storyboard.load(board.save(tmp_path / "s"))
    assert loaded == board and loaded.steps[0].kept.number == 2
    with Image.open(tmp_path / "s" / "steps" / "step-01.png") as saved:
        assert pixels(saved) == pixels(step.attempts[1].image)
    data = json.loads((tmp_path / "s" / "storyboard.json").read_text())
    assert data["steps"][0]["kept"]["attempt"] == 2 and data["steps"][0]["image"] == "steps/step-01.png"


def test_last_is_the_default_and_keeps_the_last_rejected_attempt():
    board, _, _ = story(
        plan_text("a cat"), _rejecting, config=LoopConfig(width=64, height=64, max_attempts=3)
    )
    step = board.steps[0]
    assert LoopConfig().keep_attempt == "last" and step.kept is step.attempts[-1] and step.kept_number is None


def test_best_changes_nothing_when_an_attempt_is_accepted_or_no_verdict_gives_reasons():
    config = LoopConfig(width=64, height=64, max_attempts=3, keep_attempt="best")
    board, _, _ = story(
        plan_text("a cat"), [verdict_text(False, "x", think="missing"), verdict_text(True)], config=config
    )
    assert board.steps[0].kept is board.steps[0].attempts[-1] and board.steps[0].status == "accepted"
    board, _, _ = story(plan_text("a cat"), [verdict_text(False, "x", think="")], config=config)
    assert board.steps[0].kept is board.steps[0].attempts[-1] and board.steps[0].kept_reason == ""


def test_an_unknown_keep_attempt_is_refused():
    with pytest.raises(BadSetting, match="keep_attempt must be one of last, best"):
        LoopConfig(keep_attempt="first")
