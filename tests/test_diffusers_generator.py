"""The diffusers backend on a tiny random-weight Stable Diffusion pipeline built offline."""

import pytest
from helpers import pixels
from PIL import Image

from interleave_thinker.core.generators import GeneratorError
from interleave_thinker.core.generators.diffusers_generator import DiffusersGenerator


@pytest.fixture(scope="module")
def generator(tiny_pipeline_dir):
    return DiffusersGenerator(str(tiny_pipeline_dir), steps=2, device="cpu")


def test_text_to_image_and_edit_make_images_of_the_requested_size(generator):
    first = generator.text_to_image("a red cat", width=64, height=48, seed=1)
    assert first.size == (64, 48) and first.mode == "RGB"
    edited = generator.edit(first, "add a hat", seed=2)
    assert edited.size == (64, 48)
    assert pixels(edited) != pixels(first)


def test_plain_text_to_image_families_edit_by_img2img(generator):
    assert generator.edit_route == "img2img"


def test_the_same_seed_gives_the_same_pixels(generator):
    one = generator.text_to_image("a boat", width=64, height=64, seed=7)
    assert pixels(one) == pixels(generator.text_to_image("a boat", width=64, height=64, seed=7))
    assert pixels(one) != pixels(generator.text_to_image("a boat", width=64, height=64, seed=8))
    before = Image.new("RGB", (64, 64), (200, 30, 30))
    assert pixels(generator.edit(before, "a sail", seed=3)) == pixels(
        generator.edit(before, "a sail", seed=3)
    )


def test_the_edit_depends_on_the_before_image(generator):
    red, blue = Image.new("RGB", (64, 64), (220, 20, 20)), Image.new("RGB", (64, 64), (20, 20, 220))
    assert pixels(generator.edit(red, "a sail", seed=3)) != pixels(generator.edit(blue, "a sail", seed=3))


def test_text_to_image_route_makes_independent_steps(tiny_pipeline_dir):
    generator = DiffusersGenerator(str(tiny_pipeline_dir), steps=2, device="cpu", edit_route="text-to-image")
    red, blue = Image.new("RGB", (64, 64), (220, 20, 20)), Image.new("RGB", (64, 64), (20, 20, 220))
    assert pixels(generator.edit(red, "a sail", seed=3)) == pixels(generator.edit(blue, "a sail", seed=3))


def test_a_route_the_pipeline_cannot_do_is_refused(tiny_pipeline_dir):
    with pytest.raises(GeneratorError, match="cannot do the 'reference' edit route"):
        DiffusersGenerator(str(tiny_pipeline_dir), device="cpu", edit_route="reference")


def test_bad_folders_and_settings_say_what_to_fix(tmp_path, tiny_pipeline_dir):
    with pytest.raises(GeneratorError, match="generator folder not found"):
        DiffusersGenerator(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(GeneratorError, match="expected model_index.json"):
        DiffusersGenerator(str(tmp_path / "empty"))
    with pytest.raises(GeneratorError, match="strength must be in"):
        DiffusersGenerator(str(tiny_pipeline_dir), strength=0)


class _RecordingPipe:
    """Stands in for a diffusers pipeline class of a given name: records each call's keyword arguments."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompt=None, image=None, height=None, width=None, generator=None, output_type=None):
        self.calls.append({"image": image, "height": height, "width": width})

        class Out:
            images = [Image.new("RGB", (width, height), "white")]

        return Out()


def _generator_over(pipe_class_name: str, route: str):
    from interleave_thinker.core.generators.diffusers_generator import DiffusersGenerator, reference_slots

    pipe = type(pipe_class_name, (_RecordingPipe,), {})()
    generator = object.__new__(DiffusersGenerator)  # the wiring only: no weights can be downloaded
    generator.name, generator.steps, generator.guidance, generator.strength = pipe_class_name, None, None, 0.6
    generator.negative_prompt, generator.edit_route = None, route
    generator.text_pipe = generator.edit_pipe = pipe
    generator.max_references = reference_slots(pipe, route)
    import torch

    generator._torch = torch
    return generator, pipe


def test_a_multi_reference_pipeline_gets_the_edited_picture_first_then_the_references():
    generator, pipe = _generator_over("Flux2KleinPipeline", "reference")
    before, cast = (
        Image.new("RGB", (64, 64), "red"),
        [Image.new("RGB", (32, 32), c) for c in ("blue", "green")],
    )
    generator.edit(before, "the fox waves", seed=1, references=cast)
    sent = pipe.calls[-1]["image"]
    assert [image.getpixel((0, 0)) for image in sent] == [(255, 0, 0), (0, 0, 255), (0, 128, 0)]
    generator.text_to_image("the fox", width=64, height=64, seed=1, references=cast)
    assert len(pipe.calls[-1]["image"]) == 2  # step 1 from the references alone
    with pytest.raises(GeneratorError, match="takes 3 reference picture"):
        generator.edit(before, "x", seed=1, references=cast * 2)


def test_kontext_and_img2img_pipelines_take_no_references():
    from interleave_thinker.core.generators.diffusers_generator import reference_slots

    assert reference_slots(type("FluxKontextPipeline", (), {})(), "reference") == 0  # a list is a batch there
    assert reference_slots(type("Flux2Pipeline", (), {})(), "img2img") == 0
    assert reference_slots(type("QwenImageEditPlusPipeline", (), {})(), "reference") == 2
