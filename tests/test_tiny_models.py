"""The tiny agents' build options that let a model of a million parameters learn the sandbox on a CPU."""

import pytest

from interleave_thinker.core.messages import critic_messages
from interleave_thinker.sandbox.world import EMPTY, Obj, Scene, render


def _vision_tokens(folder, image):
    import torch
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    model = Qwen3VLForConditionalGeneration.from_pretrained(folder).eval()
    pixels = AutoProcessor.from_pretrained(folder).image_processor(images=[image], return_tensors="pt")
    with torch.no_grad():
        out = model.model.visual(pixels["pixel_values"], grid_thw=pixels["image_grid_thw"])
    tokens = out.pooler_output if hasattr(out, "pooler_output") else out[0]
    return torch.nn.functional.normalize(tokens, dim=-1)


@pytest.fixture(scope="module")
def sandbox_base(tmp_path_factory):
    from interleave_thinker.sandbox.train import build_base

    return build_base(tmp_path_factory.mktemp("models") / "sandbox-base")


def test_template_tokens_make_a_critic_prompt_short_and_lossless(sandbox_base, tiny_agent_dir):
    from transformers import AutoProcessor

    white, after = render(EMPTY), render(Scene.of({"centre": Obj("circle", "red", "large")}))
    messages = critic_messages(
        white, after, "draw a large red circle at the centre", "draw a large red circle"
    )
    lengths = {}
    for folder in (sandbox_base, tiny_agent_dir):
        processor = AutoProcessor.from_pretrained(folder)
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = processor.tokenizer(text)["input_ids"]
        assert processor.tokenizer.decode(ids) == text  # nothing of the prompt is lost
        lengths[folder] = len(ids) - text.count("<|image_pad|>")
    assert lengths[sandbox_base] < 120 < 4 * lengths[sandbox_base] < lengths[tiny_agent_dir]


def test_a_unit_scale_position_embedding_tells_the_cells_of_a_random_vision_tower_apart(
    sandbox_base, tiny_agent_dir
):
    import torch

    empty = render(EMPTY)
    for folder, apart in ((sandbox_base, True), (tiny_agent_dir, False)):
        tokens = _vision_tokens(folder, empty)  # nine cells, all white: only their places differ
        similarity = tokens @ tokens.T
        off_diagonal = similarity[~torch.eye(9, dtype=torch.bool)]
        assert (off_diagonal.max() < 0.95) == apart, folder
