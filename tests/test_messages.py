import pytest
from PIL import Image

from interleave_thinker.core.messages import (
    MessageError,
    critic_messages,
    fit_pixels,
    message_images,
    message_text,
    planner_messages,
    white_canvas,
)
from interleave_thinker.core.prompts import TemplateError, load_template


def _kinds(messages):
    return [part["type"] for part in messages[0]["content"]]


def test_narrative_planner_message_is_one_user_turn_with_the_instruction():
    messages = planner_messages("A fox learns to paint")
    assert len(messages) == 1 and messages[0]["role"] == "user"
    assert _kinds(messages) == ["text"]
    text = message_text(messages)
    assert '"A fox learns to paint"' in text and "{text_input}" not in text
    assert "execution_plan" in text  # the template demands the official schema


def test_user_images_stand_at_their_markers():
    red, blue = Image.new("RGB", (64, 64), "red"), Image.new("RGB", (64, 64), "blue")
    messages = planner_messages("Before: <image> after: <IMAGE>. Continue the story.", [red, blue])
    parts = messages[0]["content"]
    assert _kinds(messages) == ["text", "image", "text", "image", "text"]
    assert parts[0]["text"].endswith("Before: ") and parts[2]["text"] == " after: "
    assert parts[1]["image"].getpixel((0, 0)) == (255, 0, 0)
    assert parts[3]["image"].getpixel((0, 0)) == (0, 0, 255)
    assert "Task A" in message_text(messages)  # images given: the guidance template


def test_images_without_markers_come_first_in_order():
    images = [Image.new("RGB", (32, 32), c) for c in ("red", "lime")]
    messages = planner_messages("What happens next?", images)
    assert [im.getpixel((0, 0)) for im in message_images(messages)] == [(255, 0, 0), (0, 255, 0)]


def test_marker_and_image_counts_must_agree():
    with pytest.raises(MessageError, match="2 <image> marker"):
        planner_messages("<image> and <image>", [Image.new("RGB", (8, 8))])
    with pytest.raises(MessageError, match="guidance mode needs"):
        planner_messages("continue", [], mode="guidance")
    with pytest.raises(MessageError, match="empty"):
        planner_messages("   ")


def test_pixel_budget_defaults_to_1024_squared_and_shrinks_with_five_images():
    big = Image.new("RGB", (2048, 1024))
    one = message_images(planner_messages("x", [big]))[0]
    assert one.width * one.height <= 1024 * 1024 and one.width / one.height == pytest.approx(2, rel=0.01)
    five = message_images(planner_messages("x", [big] * 5))
    assert all(im.width * im.height <= 384 * 384 for im in five)
    small = Image.new("RGB", (100, 50))
    assert fit_pixels(small, 1024 * 1024).size == (100, 50)  # never upscaled


def test_critic_sees_before_then_after_then_the_text():
    before, after = white_canvas(64, 48), Image.new("RGB", (64, 48), "black")
    messages = critic_messages(before, after, "draw a cat", "a cute cat, watercolour")
    parts = messages[0]["content"]
    assert _kinds(messages) == ["image", "image", "text"]
    assert parts[0]["image"].getpixel((0, 0)) == (255, 255, 255)
    assert parts[1]["image"].getpixel((0, 0)) == (0, 0, 0)
    assert '"draw a cat"' in parts[2]["text"] and '"a cute cat, watercolour"' in parts[2]["text"]


def test_placeholders_in_user_text_are_not_substituted_again():
    messages = critic_messages(white_canvas(8, 8), white_canvas(8, 8), "say {rewritten_prompt}", "p")
    assert '"say {rewritten_prompt}"' in message_text(messages)


def test_transparent_images_become_white_not_black():
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert fit_pixels(clear, 1024).getpixel((0, 0)) == (255, 255, 255)


def test_custom_template_files(tmp_path):
    good = tmp_path / "mine.txt"
    good.write_text("Plan this: {text_input}\nAnswer in <answer></answer>.")
    messages = planner_messages("a cat", template=load_template("narrative", good))
    assert message_text(messages) == "Plan this: a cat\nAnswer in <answer></answer>."
    bad = tmp_path / "bad.txt"
    bad.write_text("Judge the picture.")
    with pytest.raises(TemplateError, match=r"lacks the placeholder\(s\) \{original_instruction\}"):
        load_template("critic", bad)
    with pytest.raises(TemplateError, match="not found"):
        load_template("critic", tmp_path / "missing.txt")
