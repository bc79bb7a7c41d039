import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interleave_thinker.core.protocol import Plan, PlanStep, ProtocolError, Verdict, parse_plan, parse_verdict

STEPS = [
    {
        "step_number": 1,
        "step_name": "Sketch",
        "instruction": "A cat sits.",
        "prompt": "a cat sitting, watercolour",
        "auxiliary_text": None,
    },
    {
        "step_number": 2,
        "step_name": "Hat",
        "instruction": "Give it a hat.",
        "prompt": "add a red hat",
        "auxiliary_text": "Cats like hats.",
    },
]
EXPECTED = Plan(
    (
        PlanStep(1, "Sketch", "A cat sits.", "a cat sitting, watercolour", None),
        PlanStep(2, "Hat", "Give it a hat.", "add a red hat", "Cats like hats."),
    )
)

DIALECTS = {
    "strict json in answer": "<think>two steps</think><answer>"
    + json.dumps({"execution_plan": STEPS})
    + "</answer>",
    "python literal": "<think>x</think>\n<answer>" + repr({"execution_plan": STEPS}) + "</answer>",
    "whole text json": json.dumps({"execution_plan": STEPS}),
    "fenced json": "Here is the plan:\n```json\n" + json.dumps({"execution_plan": STEPS}, indent=2) + "\n```",
    "prose around object": "Sure! " + json.dumps({"execution_plan": STEPS}) + " Hope that helps.",
    "trailing commas": "<answer>{'execution_plan': [{'step_number': 1, 'step_name': 'Sketch', 'instruction': "
    "'A cat sits.', 'prompt': 'a cat sitting, watercolour', 'auxiliary_text': None,}, "
    "{'step_number': 2, 'step_name': 'Hat', 'instruction': 'Give it a hat.', 'prompt': "
    "'add a red hat', 'auxiliary_text': 'Cats like hats.',},]}</answer>",
    "cut off before closing tags": "<think>t</think><answer>" + json.dumps({"execution_plan": STEPS})[:-2],
    "string None and numbers as text": "<answer>"
    + json.dumps(
        {
            "execution_plan": [
                dict(STEPS[0], auxiliary_text="None", step_number="1"),
                dict(STEPS[1], step_number="2"),
            ]
        }
    )
    + "</answer>",
}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_every_dialect_parses_to_the_same_plan(dialect):
    assert parse_plan(DIALECTS[dialect]).steps == EXPECTED.steps


def test_reasoning_is_kept_apart_from_the_answer():
    plan = parse_plan(DIALECTS["strict json in answer"])
    assert plan.reasoning == "two steps"


@pytest.mark.parametrize(
    "text",
    [
        "<answer>{'previous_step_success': False, 'refine_prompt': 'add a red hat'}</answer>",
        '<think>hat missing</think><answer>{"previous_step_success": false, "refine_prompt": "add a red hat"}</answer>',
        '{"success": false, "refined_prompt": "add a red hat"}',
        "<answer>{'success': 'false', 'refine_prompt': ' add a red hat '}</answer>",
        "<answer>{'previous_step_success': False, 'refine_prompt': 'add a red hat',}",
    ],
)
def test_verdict_dialects(text):
    verdict = parse_verdict(text)
    assert (verdict.accepted, verdict.refine_prompt) == (False, "add a red hat")


def test_accepting_verdict_may_omit_the_prompt():
    assert parse_verdict("<answer>{'previous_step_success': True}</answer>") == Verdict(True, "", "")


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "no answer"),
        ("I cannot help with that.", "not a JSON"),
        ("<answer>{'execution_plan': []}</answer>", "no steps"),
        ("<answer>{'steps': [1]}</answer>", "execution_plan"),
        ("<answer>{'execution_plan': 'draw a cat'}</answer>", "not a list"),
        ("<answer>{'execution_plan': [{'step_number': 1, 'prompt': None}]}</answer>", "neither a prompt"),
        ("<answer>{'execution_plan': [{'step_number': 1, 'prompt': ['a']}]}</answer>", "not text"),
        ("<answer>{'execution_plan': [5]}</answer>", "not an object"),
    ],
)
def test_invalid_plans_raise_the_typed_error(text, reason):
    with pytest.raises(ProtocolError, match=reason):
        parse_plan(text)


def test_degenerate_plan_serialised_into_one_field_is_rejected():
    inner = "{'step_number': 1, 'prompt': 'a cat', 'auxiliary_text': None}, {'step_number': 2, 'prompt': 'b'}"
    text = repr({"execution_plan": [{"step_number": 1, "prompt": "a cat", "auxiliary_text": inner}]})
    with pytest.raises(ProtocolError, match="serialised plan"):
        parse_plan(text)


def test_step_bound():
    steps = [dict(STEPS[0], step_number=i + 1) for i in range(5)]
    text = json.dumps({"execution_plan": steps})
    assert len(parse_plan(text, max_steps=5)) == 5
    with pytest.raises(ProtocolError, match="more than the limit of 4"):
        parse_plan(text, max_steps=4)


def test_steps_are_renumbered_in_order_from_the_first_number():
    steps = [dict(STEPS[0], step_number=n) for n in (3, 3, 9)]
    assert [s.step_number for s in parse_plan(json.dumps({"execution_plan": steps}))] == [3, 4, 5]
    steps = [dict(STEPS[0], step_number=n) for n in (0, None, "x")]
    assert [s.step_number for s in parse_plan(json.dumps({"execution_plan": steps}))] == [1, 2, 3]


def test_text_only_steps_and_display_text():
    plan = parse_plan(
        "<answer>{'execution_plan': [{'step_number': 1, 'step_name': 'Answer', "
        "'instruction': None, 'prompt': None, 'auxiliary_text': 'The water boils.'}]}</answer>"
    )
    step = plan.steps[0]
    assert not step.makes_image and step.display_text == "The water boils."
    assert EXPECTED.steps[0].display_text == "A cat sits."  # no auxiliary text: the instruction


def test_error_carries_a_short_excerpt_of_the_output():
    with pytest.raises(ProtocolError) as caught:
        parse_verdict("garbage " * 200)
    assert caught.value.excerpt.startswith("garbage garbage")
    assert len(caught.value.excerpt) <= 160


def test_plan_round_trips_through_the_official_schema():
    again = Plan.from_dict(json.loads(EXPECTED.to_json()))
    assert again == EXPECTED
    assert set(EXPECTED.to_dict()["execution_plan"][0]) == {
        "step_number",
        "step_name",
        "instruction",
        "prompt",
        "auxiliary_text",
    }


# --- property-based: any text gives a Plan/Verdict or the typed error, never anything else -------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "execution_plan",
                    "step_number",
                    "prompt",
                    "instruction",
                    "auxiliary_text",
                    "step_name",
                    "previous_step_success",
                    "refine_prompt",
                    "success",
                    "x",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)
wrappers = st.sampled_from(
    [
        "{}",
        "<answer>{}</answer>",
        "<think>t</think><answer>{}</answer>",
        "```json\n{}\n```",
        "<answer>{}",
    ]
)
fragments = st.lists(
    st.sampled_from(
        [
            "{",
            "}",
            "[",
            "]",
            "'",
            '"',
            ":",
            ",",
            "<answer>",
            "</answer>",
            "<think>",
            "</think>",
            "None",
            "True",
            "execution_plan",
            "step_number",
            "prompt",
            "previous_step_success",
            "\\",
            "\n",
            "1",
            "a b",
        ]
    ),
    max_size=40,
).map("".join)


def _parses_or_typed_error(parse, text):
    try:
        result = parse(text)
    except ProtocolError:
        return None
    assert isinstance(result, (Plan, Verdict))
    return result


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=300), fragments))
def test_any_text_gives_a_result_or_the_typed_error(text):
    _parses_or_typed_error(parse_plan, text)
    _parses_or_typed_error(parse_verdict, text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values, wrappers, st.booleans())
def test_any_object_gives_a_result_or_the_typed_error(value, wrapper, literal):
    body = repr(value) if literal else json.dumps(value)
    text = wrapper.replace("{}", body, 1)
    plan = _parses_or_typed_error(parse_plan, text)
    if plan is not None:
        assert 1 <= len(plan) and all(s.prompt or s.display_text for s in plan)
        assert [s.step_number for s in plan] == list(
            range(plan.steps[0].step_number, plan.steps[0].step_number + len(plan))
        )
    verdict = _parses_or_typed_error(parse_verdict, text)
    if verdict is not None:
        assert isinstance(verdict.accepted, bool) and isinstance(verdict.refine_prompt, str)
