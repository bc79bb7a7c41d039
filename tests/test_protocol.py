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
        '<think>hat missing</think><answer>{"previous_step_success": false, '
        '"refine_prompt": "add a red hat"}</answer>',
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


# --- property-based: any text gives a Plan/Verdict or the typed error, never anything else ---------------

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


# --- looping and hostile output: refused with the typed error (or parsed, where valid), never a hang -------

PLAN_ANSWER = DIALECTS["python literal"]


def _fill(unit, chars=200_000):
    return unit * (chars // len(unit))


LOOPING = {
    "200,000 open braces": _fill("{"),
    "200,000 open brackets": _fill("["),
    "deep balanced brackets": "[" * 100_000 + "]" * 100_000,
    "200 kB of <answer>": _fill("<answer>"),
    "200 kB of <think>": _fill("<think>"),
    "200 kB of answers never closed": _fill("<answer>{'refine_prompt': 'add a hat', "),
    'keys never closed, {"a{"a': _fill('{"a'),
    'strings never closed, ["a["a': _fill('["a'),
    "a string never closed": "<answer>{'execution_plan': [{'step_number': 1, 'prompt': '" + _fill("a cat "),
    "one step repeated, never closed": "<answer>{'execution_plan': [" + _fill(repr(STEPS[0]) + ", "),
    "a fence, then spaces": "```json" + _fill(" "),
    "200 kB of fences": _fill("```"),
    "a set of 66,000 numbers": "{" + _fill("1, ") + "}",
    "deep unary minus": "{'a': " + _fill("-") + "1}",
    "deep additions": "{'a': " + _fill("1+") + "1}",
    "a megabyte of braces": "{" * 1_000_000,
    "braces after a stray quote": "<answer>'" + _fill("{"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", LOOPING)
def test_looping_output_is_refused_with_the_typed_error(name):
    for parse in (parse_plan, parse_verdict):
        with pytest.raises(ProtocolError) as caught:
            parse(LOOPING[name])
        assert 0 < len(caught.value.excerpt) <= 160


@pytest.mark.timeout(60)
def test_deep_nesting_says_so():
    with pytest.raises(ProtocolError, match="nests deeper than 32 levels"):
        parse_plan("{" * 200_000)
    with pytest.raises(ProtocolError, match="nests deeper"):
        parse_verdict("<answer>{'previous_step_success': " + "[" * 5_000)


@pytest.mark.timeout(60)
def test_a_looping_verdict_cut_off_at_the_end_is_still_read():
    text = _fill("<answer>{'previous_step_success': False, 'refine_prompt': 'a hat")
    verdict = parse_verdict(text)
    assert (verdict.accepted, verdict.refine_prompt) == (False, "a hat")


def test_garbage_too_long_to_repair_says_so():
    with pytest.raises(ProtocolError, match="too long to repair"):
        parse_verdict("<answer>{'previous_step_success': True, 'refine_prompt': '" + "a cat " * 10_000)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "text",
    [
        _fill("<answer>", 150_000) + PLAN_ANSWER,  # an opening tag repeated, then the answer
        _fill(PLAN_ANSWER + "\n"),  # the whole answer repeated: the last one counts
        "<think>" + _fill("hmm, ", 150_000) + "</think>" + PLAN_ANSWER,
        "<answer>" + _fill(" ", 150_000) + repr({"execution_plan": STEPS}) + _fill(" ", 40_000) + "</answer>",
    ],
    ids=["repeated open tag", "repeated answer", "long reasoning", "padded answer"],
)
def test_looping_output_around_a_valid_answer_still_parses(text):
    assert parse_plan(text).steps == EXPECTED.steps


def test_nesting_inside_the_bound_parses_in_every_dialect():
    deep = {"execution_plan": [dict(STEPS[0], extra=[[[[[[[[["x"]]]]]]]]])]}
    for text in (json.dumps(deep), repr(deep), repr(deep)[:-2]):  # JSON, Python literal, repaired
        assert parse_plan(text).steps == EXPECTED.steps[:1]


def test_brackets_inside_strings_do_not_count_as_nesting():
    prompt = "a cat :-( " * 40 + "((masterpiece)), [[[detailed]]]"
    text = "<answer>" + repr({"execution_plan": [dict(STEPS[0], prompt=prompt)]}) + "</answer>"
    assert parse_plan(text).steps[0].prompt == prompt.strip()


@pytest.mark.parametrize(
    "text", ["{'a': " + "-" * 10_000 + "1}", "{'a': " + "not " * 5_000 + "1}", "\ud800{"]
)
def test_parser_limits_of_python_become_the_typed_error(text):
    # ast raises MemoryError or RecursionError on such input; it must not escape as that
    with pytest.raises(ProtocolError):
        parse_plan(text)


def test_excerpt_of_a_huge_output_is_short():
    with pytest.raises(ProtocolError) as caught:
        parse_plan(" " * 100_000 + "nonsense " * 100_000)
    assert caught.value.excerpt.startswith("nonsense nonsense") and len(caught.value.excerpt) <= 160


VALID_OUTPUTS = list(DIALECTS.values()) + [
    "<answer>{'previous_step_success': False, 'refine_prompt': 'add a red hat'}</answer>",
    '<think>hat missing</think><answer>{"previous_step_success": true}</answer>',
    '{"success": false, "refined_prompt": "add a red hat"}',
]
mutations = st.lists(
    st.tuples(
        st.sampled_from(["truncate", "duplicate", "brackets", "tags", "delete", "unicode"]),
        st.floats(0, 1),
        st.floats(0, 1),
        st.integers(1, 60),
        st.text(min_size=1, max_size=8),
    ),
    min_size=1,
    max_size=4,
)


def _mutate(text, steps):
    for op, where, span, count, chars in steps:
        at = int(where * len(text))
        end = at + int(span * (len(text) - at))
        if op == "truncate":
            text = text[:at]
        elif op == "duplicate":
            text = text[:at] + text[at:end] * count + text[end:]
        elif op == "brackets":
            text = text[:at] + "{[("[count % 3] * count + text[at:]
        elif op == "tags":
            text = (
                text[:at]
                + ("<answer>", "</answer>", "<think>", "</think>", "```")[count % 5] * count
                + text[at:]
            )
        elif op == "delete":
            text = text[:at] + text[end:]
        else:
            text = text[:at] + chars + text[at:]
    return text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID_OUTPUTS), mutations)
def test_mutated_answers_give_a_result_or_the_typed_error(text, steps):
    mutated = _mutate(text, steps)
    _parses_or_typed_error(parse_plan, mutated)
    _parses_or_typed_error(parse_verdict, mutated)
