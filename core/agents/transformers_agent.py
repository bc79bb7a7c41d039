"""A local VLM folder (Qwen3-VL, Qwen2.5-VL and other image-text-to-text models) run with transformers."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import settings
from ..messages import Message
from ..errors import Cancelled, check_cancel
from .base import AgentError, AgentSpecError, Decoding, PromptTooLong

DTYPES = settings.DTYPES
MEMORY_POLICIES = settings.MEMORY_POLICIES
END_OF_TURN = ("<|im_end|>", "<|endoftext|>")


def check_model_folder(path: str | Path) -> Path:
    """The folder as a Path, or an AgentSpecError that says where it looked and what it expected."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise AgentSpecError(f"model folder not found: {folder} (expected a Hugging Face model folder there)")
    if not (folder / "config.json").is_file():
        raise AgentSpecError(f"{folder} is not a model folder: it has no config.json")
    return folder


def pick_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(dtype: str, device: str):
    import torch

    settings.check_choice("dtype", dtype, DTYPES)
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32  # half precision on CPU is slow and gains nothing for correctness
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]


class TransformersAgent:
    """An agent backed by ``AutoModelForImageTextToText`` loaded from a local folder, never from a hub.

    ``memory="offload"`` keeps the weights on the CPU between calls; ``make_room(bytes, device)`` is called
    before the weights move to an accelerator so a host (ComfyUI) can free memory first.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        dtype: str = "auto",
        device: str = "auto",
        decoding: Decoding = Decoding(),
        memory: str = "keep",
        attn_implementation: str | None = None,
        make_room: Callable[[int, str], None] | None = None,
    ):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        settings.check_choice("memory", memory, MEMORY_POLICIES)
        self.path = check_model_folder(path)
        self.name = self.path.name
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.decoding = decoding
        self.memory = memory
        self.make_room = make_room
        kwargs: dict[str, Any] = {"local_files_only": True, "dtype": self.dtype}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        try:
            self.processor = AutoProcessor.from_pretrained(self.path, local_files_only=True)
            self.model = AutoModelForImageTextToText.from_pretrained(self.path, **kwargs).eval()
        except (OSError, ValueError, KeyError) as error:
            raise AgentError(f"cannot load the model in {self.path}: {error}") from error
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.eos_token_id = self._end_of_turn_ids()
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.eos_token_id[0]
        self._home = "cpu" if memory == "offload" else self.device
        self._move(self._home)
        self._torch = torch

    # -- memory -------------------------------------------------------------------------------------------
    @property
    def size_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def _move(self, device: str) -> None:
        current = str(next(self.model.parameters()).device)
        if current.split(":")[0] == device.split(":")[0]:
            return
        if device != "cpu" and self.make_room is not None:
            self.make_room(self.size_bytes, device)
        self.model.to(device)

    def offload(self) -> None:
        """Move the weights to the CPU (the host needs the accelerator for something else)."""
        self._move("cpu")

    # -- inference ----------------------------------------------------------------------------------------
    def prepare(self, messages: Sequence[Message]) -> dict[str, Any]:
        """Tokenised inputs with image features, on the agent's device."""
        inputs = self.processor.apply_chat_template(
            list(messages), tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        return inputs.to(self.device)

    def generation_kwargs(self, temperature: float | None) -> dict[str, Any]:
        temperature = self.decoding.temperature if temperature is None else temperature
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.decoding.max_new_tokens,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "do_sample": temperature > 0,
        }
        if temperature > 0:
            kwargs.update(temperature=temperature, top_p=self.decoding.top_p, top_k=0)
        else:  # the checkpoint's generation_config may ask for sampling: override it to be greedy
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs

    @property
    def context_length(self) -> int | None:
        """How many positions the language model reads, from its config (None when it does not say)."""
        config = self.model.config
        text = getattr(config, "text_config", None) or config
        return getattr(text, "max_position_embeddings", None)

    def complete(
        self,
        messages: Sequence[Message],
        *,
        seed: int,
        temperature: float | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> str:
        torch = self._torch
        check_cancel(cancel)
        self._move(self.device)
        try:
            inputs = self.prepare(messages)
            kwargs = self.generation_kwargs(temperature)
            kwargs["max_new_tokens"] = self._room_to_answer(
                inputs["input_ids"].shape[1], kwargs["max_new_tokens"]
            )
            stop = _CancelCriterion(cancel, torch)
            if cancel is not None:
                kwargs["stopping_criteria"] = [stop]
            devices = [torch.device(self.device)] if self.device.startswith("cuda") else []
            with torch.inference_mode(), _seeded(torch, seed, devices, kwargs["do_sample"]):
                output = self.model.generate(**inputs, **kwargs)
            if stop.fired:  # the half-written answer is dropped: the caller asked to stop
                raise Cancelled("cancelled during generation")
            new_tokens = output[0, inputs["input_ids"].shape[1] :]
            return self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
        finally:
            if self.memory == "offload":
                self._move("cpu")

    def _room_to_answer(self, prompt_tokens: int, wanted: int) -> int:
        """New tokens that still fit the model's context; a prompt that fills it is refused at once, not after
        minutes of decoding past what the model was trained to read."""
        context = self.context_length
        if not context:
            return wanted
        if prompt_tokens >= context:
            raise PromptTooLong(
                f"the prompt is {prompt_tokens} tokens but {self.name} reads at most {context}; shorten the "
                "instruction or use fewer or smaller images"
            )
        return min(wanted, context - prompt_tokens)

    def _end_of_turn_ids(self) -> list[int]:
        ids: list[int] = []
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        for value in configured if isinstance(configured, list) else [configured]:
            if isinstance(value, int):
                ids.append(value)
        vocab = self.tokenizer.get_vocab()
        ids += [vocab[token] for token in END_OF_TURN if token in vocab]
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        ids = list(dict.fromkeys(ids))
        if not ids:
            raise AgentError(f"{self.path}: no end-of-turn token found in the tokenizer or generation config")
        return ids

    def __repr__(self) -> str:
        return f"TransformersAgent({str(self.path)!r}, device={self.device!r}, dtype={self.dtype})"


class _CancelCriterion:
    """A stopping criterion that asks the cancel hook after every token, so Cancel stops a long answer now."""

    def __init__(self, cancel: Callable[[], bool] | None, torch):
        self.cancel, self.torch, self.fired = cancel, torch, False

    def __call__(self, input_ids, scores, **kwargs):
        self.fired = self.fired or bool(self.cancel is not None and self.cancel())
        return self.torch.full(
            (input_ids.shape[0],), self.fired, dtype=self.torch.bool, device=input_ids.device
        )


@contextlib.contextmanager
def _seeded(torch, seed: int, devices: list, sampling: bool):
    """Seed sampling without disturbing the caller's random state."""
    if not sampling:
        yield
        return
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed % (2**63))
        yield
