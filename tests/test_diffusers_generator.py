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
