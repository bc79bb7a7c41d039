"""A local VLM folder (Qwen3-VL, Qwen2.5-VL and other image-text-to-text models) run with transformers."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from .. import settings
from ..errors import Cancelled, check_cancel
from ..messages import Message
from . import compat
from .base import AgentError, AgentSpecError, Decoding, PromptTooLong

DTYPES = settings.DTYPES
MEMORY_POLICIES = settings.MEMORY_POLICIES
QUANTIZATIONS = settings.QUANTIZATIONS
# The first bitsandbytes that runs both formats on the CPU and moves an 8-bit model between devices.
BITSANDBYTES_MIN = (0, 48)
# Upper estimates of the bytes per stored parameter once loaded, the unquantized rest in 16 bits: what a host
# is asked to free before a quantized model is built on the accelerator.
QUANTIZED_BYTES_PER_PARAMETER = {"int8": 1.25, "nf4": 0.75}
END_OF_TURN = ("<|im_end|>", "<|endoftext|>")
# The fast decoding path (``fast_decoding=True``): a static KV cache, allocated once at its full length, which
# is what lets transformers compile the decoding step with torch.compile on an accelerator (it never compiles
# on the CPU), with SDPA attention. Greedy answers are the plain path's, token for token. Off by default:
# settings.DEFAULT_FAST_DECODING says why.
FAST_DECODING_KWARGS: dict[str, Any] = {"cache_implementation": "static"}
FAST_ATTENTION = "sdpa"


def check_model_folder(path: str | Path) -> Path:
    """The folder as a Path, or an AgentSpecError that says where it looked and what it expected."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise AgentSpecError(f"model folder not found: {folder} (expected a Hugging Face model folder there)")
    if not (folder / "config.json").is_file():
        raise AgentSpecError(f"{folder} is not a model folder: it has no config.json")
    if not any(folder.glob("*.safetensors")):  # pickled weights (.bin, .pt) can run code: never loaded
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        held = f"holds only pickled weights ({', '.join(pickled)})" if pickled else "has no weights"
        raise AgentSpecError(
            f"{folder} {held}; safetensors are required: save the model with "
            "save_pretrained(folder, safe_serialization=True)"
        )
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


def quantization_config(quantize: str, dtype):
    """transformers' ``BitsAndBytesConfig`` for ``quantize`` (None for "none"); the unquantized layers and the
    4-bit arithmetic use ``dtype``."""
    settings.check_choice("quantize", quantize, QUANTIZATIONS)
    if quantize == "none":
        return None
    from importlib import metadata

    wanted = ".".join(map(str, BITSANDBYTES_MIN))
    found = {}
    for package in ("bitsandbytes", "accelerate"):  # transformers loads quantized models through accelerate
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    bnb = found["bitsandbytes"]
    if bnb is None or tuple(int(p) for p in bnb.split(".")[:2] if p.isdigit()) < BITSANDBYTES_MIN:
        have = f"bitsandbytes {bnb} is installed" if bnb else "bitsandbytes is not installed"
        raise AgentError(
            f"quantize={quantize} needs bitsandbytes>={wanted} and {have}: "
            f"pip install 'bitsandbytes>={wanted}' accelerate (or quantize=none)"
        )
    if found["accelerate"] is None:
        raise AgentError(f"quantize={quantize} needs accelerate: pip install accelerate (or quantize=none)")
    from transformers import BitsAndBytesConfig

    if quantize == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_use_double_quant=True,  # the block scales quantized too: about 0.4 bit per weight saved
    )


def stored_parameters(folder: Path) -> int:
    """How many parameters the folder's safetensors hold, read from their headers (no weights are read)."""
    total = 0
    for file in sorted(folder.glob("*.safetensors")):
        with open(file, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(length))
        total += sum(math.prod(entry["shape"]) for key, entry in header.items() if key != "__metadata__")
    return total


class AgentHost(Protocol):
    """Who decides where a local agent's weights live. Without one the agent moves them itself (see
    :class:`OwnPlacement`); a host with its own memory manager (ComfyUI: nodes/memory.py) takes over."""

    def make_room(self, nbytes: int, device: str) -> None:
        """Free ``nbytes`` on ``device`` before the agent puts weights there."""

    def load(self, agent: TransformersAgent) -> None:
        """Put the weights on ``agent.device`` for a call (freeing room first)."""

    def unload(self, agent: TransformersAgent) -> None:
        """Move the weights to the CPU."""


class OwnPlacement:
    """The default host: the agent moves its weights itself, calling ``make_room(bytes, device)`` first."""

    def __init__(self, make_room: Callable[[int, str], None] | None = None):
        self._make_room = make_room

    def make_room(self, nbytes: int, device: str) -> None:
        if self._make_room is not None and device != "cpu":
            self._make_room(nbytes, device)

    def load(self, agent: TransformersAgent) -> None:
        agent.move_weights(agent.device)

    def unload(self, agent: TransformersAgent) -> None:
        agent.move_weights("cpu")


class TransformersAgent:
    """An agent backed by ``AutoModelForImageTextToText`` loaded from a local folder, never from a hub.

    ``memory="offload"`` keeps the weights on the CPU between calls. ``quantize`` stores the linear layers in
    8 bits (int8) or 4 bits (nf4) with bitsandbytes. ``host`` decides where the weights live (default: the
    agent moves them itself, calling ``make_room(bytes, device)`` before they go to an accelerator).
    ``fast_decoding`` decodes with a static KV cache (compiled by transformers on an accelerator), giving the
    same greedy answers as the plain path.
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
        quantize: str = settings.DEFAULT_QUANTIZATION,
        host: AgentHost | None = None,
        fast_decoding: bool = settings.DEFAULT_FAST_DECODING,
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
        self.quantize = quantize
        self.host: AgentHost = host if host is not None else OwnPlacement(make_room)
        self.fast_decoding = bool(fast_decoding)
        kwargs: dict[str, Any] = {"local_files_only": True, "dtype": self.dtype, "use_safetensors": True}
        if self.fast_decoding and not attn_implementation:
            attn_implementation = FAST_ATTENTION
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        quantization = quantization_config(quantize, self.dtype)
        if quantization is not None:
            # bitsandbytes quantizes where the weights are loaded: in seconds on an accelerator, in many
            # minutes on the CPU for an 8B. So build it on its device, after the host has made room there.
            built_on = "cpu" if self.device == "cpu" else self.device
            if built_on != "cpu":
                nbytes = stored_parameters(self.path) * QUANTIZED_BYTES_PER_PARAMETER[quantize]
                self.host.make_room(int(nbytes), built_on)
            kwargs.update(quantization_config=quantization, device_map={"": built_on})
        try:
            legacy = compat.processor_kwargs(self.path)  # folders saved by transformers 5, read by 4.x
            self.processor = AutoProcessor.from_pretrained(self.path, local_files_only=True, **legacy)
            kwargs.update(compat.model_kwargs(self.path))
            self.model = AutoModelForImageTextToText.from_pretrained(self.path, **kwargs).eval()
        except (OSError, ValueError, KeyError, ImportError) as error:
            raise AgentError(f"cannot load the model in {self.path}: {error}") from error
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.eos_token_id = self._end_of_turn_ids()
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.eos_token_id[0]
        self._torch = torch
        self.size_bytes = resident_bytes(self.model)
        if memory == "offload":
            self.host.unload(self)
        else:
            self.host.load(self)

    # -- memory -------------------------------------------------------------------------------------------
    @property
    def weights_device(self) -> str:
        """Where the weights are now (``cpu``, ``cuda``...)."""
        return next(self.model.parameters()).device.type

    @property
    def weight_format(self) -> str:
        """How the weights are stored: nf4, int8, or the dtype (bf16, fp16, fp32)."""
        if self.quantize != "none":
            return self.quantize
        return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(
            str(self.dtype).removeprefix("torch."), str(self.dtype)
        )

    @property
    def info(self) -> dict[str, Any]:
        """What a storyboard records about this agent: its weights and what they take in memory."""
        info = {
            "name": self.name,
            "backend": "transformers",
            "weights": self.weight_format,
            "dtype": str(self.dtype).removeprefix("torch."),
            "resident_bytes": self.size_bytes,
            "device": self.device,
            "memory": self.memory,
        }
        if self.fast_decoding:  # said only when on: the plain path's storyboards read as before
            info["fast_decoding"] = True
        return info

    def describe(self) -> str:
        """One line for a log or a node: name, weight format and resident size."""
        rest = f", rest in {self.info['dtype']}" if self.quantize != "none" else ""
        return (
            f"{self.name}: {self.weight_format} weights{rest}, {self.size_bytes / 2**20:.1f} MiB resident, "
            f"runs on {self.device}, {'offloaded between calls' if self.memory == 'offload' else 'kept'}"
        )

    def move_weights(self, device: str) -> None:
        """Move the weights to ``device``; the host's ``make_room`` is asked first for an accelerator."""
        if self.weights_device == device.split(":")[0]:
            return
        if device != "cpu":
            self.host.make_room(self.size_bytes, device)
        self.model.to(device)

    def offload(self) -> None:
        """Move the weights to the CPU (the host needs the accelerator for something else)."""
        self.host.unload(self)

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
        if self.fast_decoding:
            kwargs.update(FAST_DECODING_KWARGS)
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
        self.host.load(self)
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
                self.host.unload(self)

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
        return (
            f"TransformersAgent({str(self.path)!r}, device={self.device!r}, dtype={self.dtype}, "
            f"quantize={self.quantize!r})"
        )


def resident_bytes(model) -> int:
    """Bytes a model's weights take: every tensor of its state (parameters, buffers, and the scales of
    quantized layers) counted once, tied weights too."""
    import torch

    seen: set[tuple[str, int]] = set()
    total = 0
    for tensor in model.state_dict().values():
        if not isinstance(tensor, torch.Tensor):
            continue
        key = (str(tensor.device), tensor.data_ptr())
        if tensor.data_ptr() and key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


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
