"""The sandbox world: rendering, reading back, the language, the generator's failure model, the judge."""

import io
import math
import random

import numpy as np
import pytest
from PIL import Image

from interleave_thinker.core.generators.base import Generator
from interleave_thinker.sandbox.generator import FailureModel, SandboxGenerator
from interleave_thinker.sandbox.grading import SandboxJudge, judge_step
from interleave_thinker.sandbox.language import (
    LanguageError,
    ResolveError,
    apply,
    is_precise,
    parse,
    precise_prompt,
)
from interleave_thinker.sandbox.tasks import random_story
from interleave_thinker.sandbox.world import (
    COLOURS,
    EMPTY,
    PLACES,
    UNKNOWN,
    Obj,
    Scene,
    WorldError,
    all_objects,
    cell_box,
    read,
    render,
)

RED_CIRCLE = Obj("circle", "red", "large")
BLUE_SQUARE = Obj("square", "blue", "small")


def random_scene(rng: random.Random) -> Scene:
    places = rng.sample(PLACES, rng.randint(0, len(PLACES)))
    return Scene.of({place: rng.choice(all_objects()) for place in places})


# ---------------------------------------------------------------------------------------------------------
# Rendering and reading


@pytest.mark.parametrize("size", [(64, 64), (96, 96), (129, 100), (300, 300)])
def test_reading_a_render_gives_back_the_scene(size):
    rng = random.Random(size[0])
    for _ in range(60):
        scene = random_scene(rng)
        assert read(render(scene, *size)) == scene


def test_renders_are_flat_palette_shapes_inside_their_cells():
    scene = Scene.of({"top left": RED_CIRCLE, "bottom right": BLUE_SQUARE})
    pixels = np.asarray(render(scene))
    colours = {tuple(c) for c in pixels.reshape(-1, 3)}
    assert colours == {(255, 255, 255), COLOURS["red"], COLOURS["blue"]}
    x0, y0, x1, y1 = cell_box(PLACES.index("top left"), 96, 96)
    red = np.all(pixels == COLOURS["red"], axis=-1)
    assert red[y0:y1, x0:x1].sum() == red.sum() > 0  # every red pixel lies in the circle's cell


def test_every_object_reads_as_itself_and_objects_differ():
    masks = set()
    for obj in all_objects():
        picture = render(Scene.of({"centre": obj}))
        assert read(picture)[PLACES.index("centre")] == obj
        masks.add(picture.tobytes())
    assert len(masks) == len(all_objects())


def test_reading_tolerates_resizing_and_jpeg_but_not_foreign_pixels():
    scene = Scene.of({"top": RED_CIRCLE, "left": Obj("triangle", "green", "small"), "centre": BLUE_SQUARE})
    picture = render(scene)
    assert read(picture.resize((192, 192), Image.Resampling.BILINEAR)) == scene
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=85)
    assert read(Image.open(buffer)) == scene
    scribbled = np.asarray(picture).copy()
    scribbled[70:90, 70:90] = (30, 30, 30)  # a dark blot in the bottom-right cell
    assert read(Image.fromarray(scribbled))[8] == UNKNOWN


def test_too_small_pictures_are_refused():
    with pytest.raises(WorldError, match="at least"):
        render(EMPTY, 10, 10)


# ---------------------------------------------------------------------------------------------------------
# Language


def test_parse_and_apply_every_kind_of_sentence():
    scene = Scene.of({"centre": RED_CIRCLE, "right": BLUE_SQUARE})
    assert apply("add a small green triangle above the red circle", scene)[1] == Obj(
        "triangle", "green", "small"
    )
    assert apply("remove the blue square", scene)[5] is None
    assert apply("make the red circle yellow", scene)[4].colour == "yellow"
    assert apply("make the red circle the same colour as the blue square", scene)[4].colour == "blue"
    assert apply("make the red circle small", scene)[4].size == "small"
    moved = apply("move the red circle below the blue square", scene)
    assert moved[4] is None and moved[8] == RED_CIRCLE
    drawn = apply("Draw a large red circle at the top left and a small blue square at the center.", EMPTY)
    assert drawn == Scene.of({"top left": RED_CIRCLE, "centre": BLUE_SQUARE})


def test_sentences_that_cannot_be_carried_out_exactly_say_why():
    scene = Scene.of({"top left": RED_CIRCLE, "right": Obj("circle", "red", "small")})
    with pytest.raises(ResolveError, match="ambiguous"):
        apply("remove the red circle", scene)
    with pytest.raises(ResolveError, match="edge"):
        apply("add a small blue square above the large red circle", scene)
    with pytest.raises(ResolveError, match="no green"):
        apply("remove the green square", scene)
    with pytest.raises(ResolveError, match="cannot read"):
        apply("paint it black", scene)
    with pytest.raises(LanguageError):
        from interleave_thinker.sandbox.language import _Parser

        _Parser("make the circle".split()).command()


def test_the_precise_prompt_of_any_change_does_exactly_that_change():
    rng = random.Random(3)
    for _ in range(150):
        sentences, scenes = random_story(rng, 4)
        for before, after in zip([EMPTY] + scenes, scenes):
            prompt = precise_prompt(before, after)
            assert is_precise(prompt), prompt
            assert apply(prompt, before) == after


def test_request_sentences_are_mostly_vague():
    rng = random.Random(4)
    sentences = [s for _ in range(100) for s in random_story(rng, 3)[0]]
    assert sum(map(is_precise, sentences)) == 0
    assert not is_precise(
        "add a small blue square to the right of the red circle; keep everything else unchanged"
    )
    assert is_precise("add a small blue square at the top; keep everything else unchanged")
    assert parse("make the red circle green, keep everything else unchanged").keep


# ---------------------------------------------------------------------------------------------------------
# Generator


def test_the_generator_is_an_engine_generator():
    generator = SandboxGenerator()
    assert isinstance(generator, Generator)
    assert generator.name == "sandbox" and generator.edit_route == "reference"
    before = render(Scene.of({"centre": RED_CIRCLE}), 96, 96)
    assert generator.edit(before, "remove the red circle", seed=1).size == (96, 96)
    assert generator.text_to_image(
        "draw a large red circle at the top", width=64, height=80, seed=1
    ).size == (64, 80)


def test_precise_prompts_always_render_right():
    generator = SandboxGenerator(FailureModel(1.0, 1.0, 1.0, 1.0, 1.0))  # every vagueness would fail
    rng = random.Random(5)
    for trial in range(120):
        sentences, scenes = random_story(rng, 3)
        before = EMPTY
        for after in scenes:
            prompt = precise_prompt(before, after)
            picture = (
                generator.text_to_image(prompt, width=96, height=96, seed=trial)
                if before == EMPTY
                else generator.edit(render(before), prompt, seed=trial)
            )
            assert read(picture) == after and generator.faults == []
            before = after


def test_same_seed_same_picture_other_seeds_vary():
    generator = SandboxGenerator()
    before = render(Scene.of({"centre": RED_CIRCLE, "top left": BLUE_SQUARE}))
    prompt = "add a large green triangle to the right of the red circle"
    first = generator.edit(before, prompt, seed=11).tobytes()
    assert generator.edit(before, prompt, seed=11).tobytes() == first
    assert len({generator.edit(before, prompt, seed=s).tobytes() for s in range(30)}) > 3


def test_nonsense_leaves_the_picture_unchanged():
    generator = SandboxGenerator()
    before = render(Scene.of({"centre": RED_CIRCLE}))
    assert generator.edit(before, "a cosy cabin in the snow", seed=0).tobytes() == before.tobytes()
    assert read(generator.text_to_image("", width=96, height=96, seed=0)) == EMPTY


FAILURE = FailureModel(
    wrong_place=0.3, wrong_colour=0.6, collateral=0.25, extra_object=0.15, missing_object=0.45
)
TWO = Scene.of({"centre": RED_CIRCLE, "top left": BLUE_SQUARE})


def fault_rate(prompt: str, before: Scene, expected: Scene, trials: int = 1500) -> float:
    generator = SandboxGenerator(FAILURE)
    wrong = 0
    for seed in range(trials):
        wrong += generator.carry_out(prompt, before, seed) != expected
    return wrong / trials


@pytest.mark.parametrize(
    "prompt, before, expected, configured",
    [
        (
            "add a small green triangle to the right of the red circle; keep everything else unchanged",
            TWO,
            TWO.with_cell(5, Obj("triangle", "green", "small")),
            FAILURE.wrong_place,
        ),
        (
            "make the large red circle at the centre the same colour as the blue square; "
            "keep everything else unchanged",
            TWO,
            TWO.with_cell(4, Obj("circle", "blue", "large")),
            FAILURE.wrong_colour,
        ),
        (
            "make the large red circle at the centre green",
            TWO,
            TWO.with_cell(4, Obj("circle", "green", "large")),
            FAILURE.collateral,
        ),
        (
            "draw a large red circle at the centre",
            EMPTY,
            Scene.of({"centre": RED_CIRCLE}),
            FAILURE.extra_object,
        ),
        (
            "draw a large red circle at the centre and a small blue square at the top left; nothing else",
            EMPTY,
            TWO,
            FAILURE.missing_object,
        ),
    ],
)
def test_each_vagueness_fails_at_its_configured_rate(prompt, before, expected, configured):
    trials = 1500
    rate = fault_rate(prompt, before, expected, trials)
    sigma = math.sqrt(configured * (1 - configured) / trials)
    assert abs(rate - configured) < 4 * sigma + 0.01, (rate, configured)


def test_an_ambiguous_name_picks_one_of_the_matches():
    before = Scene.of({"left": Obj("circle", "red", "small"), "right": Obj("circle", "red", "large")})
    rate = fault_rate(
        "remove the red circle; keep everything else unchanged", before, before.with_cell(3, None)
    )
    assert abs(rate - 0.5) < 0.06


def test_failure_model_probabilities_are_checked():
    with pytest.raises(ValueError, match="wrong_place"):
        FailureModel(wrong_place=1.5)


# ---------------------------------------------------------------------------------------------------------
# Oracle judge


def test_the_judge_scores_right_wrong_and_collateral_pictures():
    before = render(TWO)
    step = "add a small green triangle to the right of the red circle"
    right = render(TWO.with_cell(5, Obj("triangle", "green", "small")))
    wrong_place = render(TWO.with_cell(8, Obj("triangle", "green", "small")))
    collateral = render(TWO.with_cell(5, Obj("triangle", "green", "small")).with_cell(0, None))
    good = judge_step(step, before, right)
    assert good.success and good.evaluation() == {"success": True, "semantics": 10, "quality": 10}
    bad = judge_step(step, before, wrong_place)
    assert not bad.success and bad.intent == 0 and bad.preservation == 6
    assert "at the right expected a small green triangle, found nothing" in bad.problems
    side = judge_step(step, before, collateral)
    assert not side.success and side.intent == 10 and side.semantics == 6
    impossible = judge_step("remove the purple star", before, before)
    assert not impossible.success and impossible.error


def test_sandbox_judge_fits_the_training_judge_protocol():
    from interleave_thinker.training.judge import Judge

    judge = SandboxJudge()
    assert isinstance(judge, Judge)
    before = render(TWO)
    assert judge.semantics(before, render(TWO.with_cell(4, None)), "remove the red circle") == 10.0
    assert judge.semantics(before, before, "remove the red circle") == 0.0
    assert judge.quality(before) == 10.0
