"""Build a tiny Qwen3-VL agent folder from a config: random weights, a tokenizer trained here.

Nothing is downloaded. The folder loads with ``AutoProcessor`` / ``AutoModelForImageTextToText`` exactly as a
released Qwen3-VL checkpoint does, so it drives the real transformers path in tests, and it is the starting
point that the SFT script overfits into the shipped sandbox agents.

    python -m interleave_thinker.training.tiny --out models/LLM/tiny-agent
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

from ..core.prompts import ROLES, load_template

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Tags the agents write; single tokens keep tiny models' outputs short and easy to learn.
ADDED_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]

# A Qwen-style chat template of our own: one user turn with image parts, then the assistant turn.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' or 'image' in part %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'video' or 'video' in part %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in part %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Pixel budget of the tiny image processor: a 128x128 image becomes 8x8 patches of 16, merged 2x2 = 16 tokens.
TINY_MIN_PIXELS = 32 * 32
TINY_MAX_PIXELS = 128 * 128


def transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def rope_settings(mrope_section: list[int], theta: float = 10000.0) -> dict:
    """The text config's rotary settings, spelled as the installed transformers reads them: 5.x takes
    ``rope_parameters``; 4.x (Qwen3-VL arrived in 4.57) takes ``rope_theta`` plus ``rope_scaling``."""
    rope = {"rope_type": "default", "mrope_section": mrope_section, "mrope_interleaved": True}
    if transformers_major() >= 5:
        return {"rope_parameters": {**rope, "rope_theta": theta}}
    return {"rope_theta": theta, "rope_scaling": rope}


def tokenizer_corpus(extra: list[str] | None = None) -> list[str]:
    """Text the tokenizer is trained on: our templates, the schema and plain English words."""
    lines = [load_template(role).text for role in ROLES]
    lines += [
        "{'execution_plan': [{'step_number': 1, 'step_name': 'Start', 'instruction': None, 'prompt': None, "
        "'auxiliary_text': None}]}",
        '{"execution_plan": [{"step_number": 2, "step_name": "", "instruction": null, "prompt": "", '
        '"auxiliary_text": null}]}',
        "{'previous_step_success': True, 'refine_prompt': ''} {'previous_step_success': False}",
        "red green blue yellow orange purple white black grey pink brown cyan circle square triangle star "
        "heart small medium large left right top bottom centre center above below next to beside add remove "
        "move recolour colour make draw place put a an the of on in with and keep unchanged everything else "
        "0 1 2 3 4 5 6 7 8 9 10 cat dog tree house sun moon car boat bird flower cake hat",
    ]
    return lines + list(extra or [])


def template_phrases() -> list[str]:
    """The fixed text of every role template, line by line and cut at its placeholders.

    As added tokens they turn a 700-token prompt into a few dozen tokens: a tiny model then spends its
    training on the text that varies (the request, the step, the prompt used) instead of re-reading the same
    paragraphs.
    """
    phrases: list[str] = []
    for role in ROLES:
        for line in load_template(role).text.splitlines(keepends=True):
            for piece in re.split(r"\{[a-z_]+\}", line):
                if piece.strip() and piece not in phrases:
                    phrases.append(piece)
    return phrases


def build_tokenizer(
    vocab_size: int = 1024, extra_text: list[str] | None = None, template_tokens: bool = False
):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(tokenizer_corpus(extra_text), trainer=trainer)
    data = json.loads(tokenizer.to_str())
    vocab = data["model"]["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in data["model"]["merges"]]
    names = {"unk_token": None, "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    if transformers_major() >= 5:
        qwen = Qwen2Tokenizer(vocab=vocab, merges=merges, **names)
    else:  # transformers 4 builds the same byte-level BPE only from vocab.json and merges.txt files
        import tempfile

        from transformers import Qwen2TokenizerFast

        with tempfile.TemporaryDirectory() as folder:
            vocab_file, merges_file = Path(folder, "vocab.json"), Path(folder, "merges.txt")
            vocab_file.write_text(json.dumps(vocab), encoding="utf-8")
            merges_file.write_text(
                "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
            )
            qwen = Qwen2TokenizerFast(vocab_file=str(vocab_file), merges_file=str(merges_file), **names)
    # Every control token must be one token: "<|im_start|>" opens every turn.
    controls = [token for token in SPECIAL_TOKENS if token not in ("<|endoftext|>", "<|im_end|>")]
    qwen.add_special_tokens({"additional_special_tokens": controls})
    qwen.add_tokens(ADDED_TOKENS)
    if template_tokens:
        from tokenizers import AddedToken

        qwen.add_tokens([AddedToken(p, normalized=False, single_word=False) for p in template_phrases()])
    qwen.chat_template = CHAT_TEMPLATE
    return qwen


def build_tiny_agent(
    out: str | Path,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    vocab_size: int = 1024,
    seed: int = 0,
    extra_text: list[str] | None = None,
    template_tokens: bool = False,
    vision_hidden_size: int = 32,
    vision_depth: int = 1,
    tie_embeddings: bool = True,
    vision_position_scale: float | None = None,
) -> Path:
    """Write a tiny random-weight Qwen3-VL agent folder to ``out`` and return its path.

    ``vision_position_scale`` redraws the vision tower's position embedding with that standard deviation. At
    the usual 0.02 a patch's position is lost next to its pixels, so every empty cell gives the same token; at
    unit scale each token also says where it is, and a vision tower that stays frozen (trained with the
    language model from random weights, it collapses every token to one vector) still tells the language model
    what is where.
    """
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    if hidden_size % heads or (hidden_size // heads) % 8:
        raise ValueError("hidden_size / heads must be a multiple of 8 (the rotary sections need it)")
    out = Path(out)
    tokenizer = build_tokenizer(vocab_size, extra_text, template_tokens)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    head_dim = hidden_size // heads
    quarter = head_dim // 8
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden_size,
            "intermediate_size": hidden_size * 2,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": max(1, heads // 2),
            "head_dim": head_dim,
            "max_position_embeddings": 8192,
            # mrope sections (time, height, width) must sum to head_dim / 2.
            **rope_settings([2 * quarter, quarter, quarter]),
            "tie_word_embeddings": tie_embeddings,
        },
        vision_config={
            "depth": vision_depth,
            "hidden_size": vision_hidden_size,
            "intermediate_size": vision_hidden_size * 2,
            "num_heads": 2,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": hidden_size,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [vision_depth - 1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tie_embeddings,
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).eval()
    if vision_position_scale is not None:
        with torch.no_grad():
            model.model.visual.pos_embed.weight.normal_(0.0, vision_position_scale)
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )
    pixels = {"shortest_edge": TINY_MIN_PIXELS, "longest_edge": TINY_MAX_PIXELS}
    image_processor = Qwen2VLImageProcessor(
        size=pixels,
        patch_size=16,
        merge_size=2,
        temporal_patch_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    video_processor = Qwen3VLVideoProcessor(
        size=pixels,
        patch_size=16,
        merge_size=2,
        temporal_patch_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    for path in out.iterdir():  # safetensors writes 0600; a server running as another user must read them
        os.chmod(path, 0o644)
    return out


def build_tiny_pipeline(out: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny random-weight Stable Diffusion pipeline folder (about 1 M parameters) to ``out``.

    It has the real SD layout (UNet, 8x VAE, CLIP text encoder, scheduler), so the diffusers generator loads
    it with ``DiffusionPipeline.from_pretrained`` and derives img2img from it, as it would a full checkpoint.
    """
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from ..core.generators.diffusers_generator import import_diffusers

    diffusers = import_diffusers()  # an extra: a clear error naming it when it is not installed

    out = Path(out)
    torch.manual_seed(seed)
    # A byte-level CLIP vocabulary: every byte alone and as a word end, plus the start/end tokens.
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(alphabet + [t + "</w>" for t in alphabet])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )
    )
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=32,
    )
    vae = diffusers.AutoencoderKL(
        block_out_channels=(16, 32, 32, 32),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=64,
    )
    scheduler = diffusers.EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    pipe = diffusers.StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    for path in out.rglob("*"):
        if path.is_file():
            os.chmod(path, 0o644)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write (e.g. ComfyUI/models/LLM/tiny-agent)")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build_tiny_agent(
        args.out,
        hidden_size=args.hidden_size,
        layers=args.layers,
        heads=args.heads,
        vocab_size=args.vocab_size,
        seed=args.seed,
    )
    print(f"wrote a tiny Qwen3-VL agent to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
