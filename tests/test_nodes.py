"""The node pack without ComfyUI: declarations, packaging, and the nodes' own logic on small stand-ins.

ComfyUI's modules are replaced here by a few recording stand-ins (model management, progress bars,
folder_paths); the integration tests in tests/comfyui run the same nodes inside a real ComfyUI.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from helpers import ChatServer, ScriptedAgent, free_port, plan_text, verdict_text
from PIL import Image

from interleave_thinker import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from interleave_thinker.core import settings
from interleave_thinker.core.generators.base import GeneratorError
from interleave_thinker.core.storyboard import Storyboard
from interleave_thinker.nodes import agent_nodes, memory, sampling, story_nodes
from interleave_thinker.nodes.host import NodeError
from interleave_thinker.nodes.images import to_pil, to_tensor

ROOT = Path(__file__).resolve().parents[1]
SOCKET_TYPES = {"AGENT", "PLAN", "STORYBOARD", "MODEL", "CLIP", "VAE", "IMAGE"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


# ---------------------------------------------------------------------------------------------------------
# Declarations


@pytest.mark.parametrize("name", sorted(NODE_CLASS_MAPPINGS))
def test_node_declaration_is_valid(name):
    cls = NODE_CLASS_MAPPINGS[name]
    assert cls.CATEGORY == "InterleaveThinker"
    assert NODE_DISPLAY_NAME_MAPPINGS[name] and cls.DESCRIPTION
    declaration = cls.INPUT_TYPES()
    assert set(declaration) <= {"required", "optional"} and declaration["required"]
    inputs = {**declaration["required"], **declaration.get("optional", {})}
    for input_name, spec in inputs.items():
        kind, options = spec
        assert options.get("tooltip"), f"{input_name} has no tooltip"
        if isinstance(kind, list):
            assert all(isinstance(choice, str) for choice in kind)
            if "default" in options:
                assert options["default"] in kind, input_name
        else:
            assert kind in SOCKET_TYPES | WIDGET_TYPES, f"{input_name}: unknown type {kind}"
        if kind in ("INT", "FLOAT"):
            assert options["min"] <= options["default"] <= options["max"], input_name
    assert isinstance(cls.RETURN_TYPES, tuple) and all(isinstance(t, str) for t in cls.RETURN_TYPES)
    for attribute in ("RETURN_NAMES", "OUTPUT_TOOLTIPS", "OUTPUT_IS_LIST"):
        if hasattr(cls, attribute):
            assert len(getattr(cls, attribute)) == len(cls.RETURN_TYPES), attribute
    # ComfyUI calls FUNCTION with every input by name; optional ones may be left out.
    parameters = inspect.signature(getattr(cls(), cls.FUNCTION)).parameters
    assert set(parameters) == set(inputs)
    for optional in declaration.get("optional", {}):
        assert parameters[optional].default is None
    for hook in ("VALIDATE_INPUTS", "IS_CHANGED"):
        if hasattr(cls, hook):
            named = [
                p
                for p, v in inspect.signature(getattr(cls, hook)).parameters.items()
                if v.kind != v.VAR_KEYWORD
            ]
            assert set(named) <= set(inputs), hook


def test_the_pack_offers_the_documented_nodes():
    assert sorted(NODE_DISPLAY_NAME_MAPPINGS.values()) == sorted(
        [
            "Load Agent",
            "Planner",
            "Critic",
            "Refine Loop",
            "Plan to Prompts",
            "Save Storyboard",
            "Story List",
            "Planner Prompt",
            "Parse Plan",
            "Critic Prompt",
            "Parse Verdict",
            "Storyboard Page",
            "Resume Storyboard",
        ]
    )
    assert NODE_CLASS_MAPPINGS["InterleaveThinkerPlanToPrompts"].OUTPUT_IS_LIST == (True, True, False)
    assert NODE_CLASS_MAPPINGS["InterleaveThinkerStoryList"].OUTPUT_IS_LIST[0] is True
    assert NODE_CLASS_MAPPINGS["InterleaveThinkerSaveStoryboard"].OUTPUT_NODE is True
    loop = NODE_CLASS_MAPPINGS["InterleaveThinkerRefineLoop"].INPUT_TYPES()
    assert loop["required"]["edit_route"][0] == ["auto", "text-to-image", "img2img", "reference"]
    assert "critic" in loop["optional"]


def test_importing_the_pack_loads_no_comfyui_module():
    code = (
        "import sys, interleave_thinker\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('comfy', 'folder_paths', 'nodes', 'server', "
        "'node_helpers', 'comfy_extras', 'execution')]\n"
        "print(bad)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------------------
# Stand-ins for ComfyUI's modules


class InterruptProcessingException(Exception):
    pass


class FakePatcher:
    """comfy.model_patcher.ModelPatcher's constructor and detach, recorded."""

    def __init__(self, model, load_device, offload_device, size=0):
        self.model, self.load_device, self.offload_device, self.size = (
            model,
            load_device,
            offload_device,
            size,
        )
        self.detached = 0

    def model_size(self):
        return self.size

    def loaded_size(self):  # what the fake load_models_gpu loads: all of it
        return self.size

    def detach(self, unpatch_all=True):
        self.detached += 1
        self.model.to(self.offload_device)


class FakeLoaded:
    def __init__(self, model):
        self.model, self.unloaded = model, 0

    def model_unload(self):
        self.unloaded += 1
        self.model.detach()


class FakeComfy:
    """Recording stand-ins for comfy.model_management, comfy.utils and folder_paths."""

    def __init__(self, root: Path):
        self.root = root
        self.interrupt = False
        self.freed: list[tuple[int, object]] = []
        self.free_bytes = 10**12
        self.progress: list[tuple[int, int, object]] = []
        self.emptied = 0
        (root / "models").mkdir(parents=True, exist_ok=True)
        for sub in ("input", "output"):
            (root / sub).mkdir(exist_ok=True)

        mm = types.ModuleType("comfy.model_management")
        mm.InterruptProcessingException = InterruptProcessingException
        mm.processing_interrupted = lambda: self.interrupt
        mm.throw_exception_if_processing_interrupted = self._throw
        mm.get_torch_device = lambda: torch.device("cuda", 0)
        mm.free_memory = lambda nbytes, device, keep_loaded=(): self.freed.append((nbytes, device))
        mm.minimum_inference_memory = lambda: 1000
        mm.get_free_memory = lambda device=None: self.free_bytes
        mm.soft_empty_cache = self._empty
        mm.OOM_EXCEPTION = torch.OutOfMemoryError
        self.loads: list[dict] = []
        mm.current_loaded_models = []
        mm.load_models_gpu = self._load_models_gpu
        patcher = types.ModuleType("comfy.model_patcher")
        patcher.ModelPatcher = FakePatcher
        utils = types.ModuleType("comfy.utils")
        fake = self

        class ProgressBar:
            def __init__(self, total, node_id=None):
                self.total = total

            def update_absolute(self, value, total=None, preview=None):
                fake.progress.append((value, self.total, preview))

        utils.ProgressBar = ProgressBar
        paths = types.ModuleType("folder_paths")
        paths.models_dir = str(root / "models")
        paths.folder_names_and_paths = {}
        paths.add_model_folder_path = self._add_folder
        paths.get_folder_paths = lambda name: list(paths.folder_names_and_paths[name][0])
        paths.get_input_directory = lambda: str(root / "input")
        paths.get_output_directory = lambda: str(root / "output")
        paths.get_user_directory = lambda: str(root / "user")
        paths.get_save_image_path = self._save_path
        package = types.ModuleType("comfy")
        package.model_management, package.utils, package.model_patcher = mm, utils, patcher
        self.modules = {
            "comfy": package,
            "comfy.model_management": mm,
            "comfy.model_patcher": patcher,
            "comfy.utils": utils,
            "folder_paths": paths,
        }
        self.folder_paths = paths

    def _load_models_gpu(self, models, memory_required=0, force_full_load=False, **kwargs):
        """Records the call and, as ComfyUI does, lists each model once as loaded, its weights moved."""
        self.loads.append({"models": list(models), "extra": memory_required, "whole": force_full_load})
        loaded = self.modules["comfy.model_management"].current_loaded_models
        for model in models:
            if not any(entry.model is model for entry in loaded):
                loaded.insert(0, FakeLoaded(model))

    def _throw(self):
        if self.interrupt:
            self.interrupt = False
            raise InterruptProcessingException()

    def _empty(self):
        self.emptied += 1

    def _add_folder(self, name, path, is_default=False):
        paths = self.folder_paths.folder_names_and_paths.setdefault(name, ([], set()))[0]
        if path not in paths:
            paths.append(path)

    def _save_path(self, prefix, output, width=0, height=0):
        subfolder, name = os.path.split(prefix)
        folder = os.path.join(output, subfolder)
        os.makedirs(folder, exist_ok=True)
        return folder, name, 1, subfolder, prefix


@pytest.fixture
def comfy(tmp_path, monkeypatch):
    fake = FakeComfy(tmp_path / "comfyui")
    for name, module in fake.modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return fake


def agent_folder(comfy, name="planner-agent", nested=""):
    folder = Path(comfy.folder_paths.models_dir, "LLM", nested, name)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


def pictures(*colours, size=(64, 64)):
    return to_tensor([Image.new("RGB", size, colour) for colour in colours])


# ---------------------------------------------------------------------------------------------------------
# Load Agent


def test_load_agent_lists_models_llm_and_registers_it(comfy):
    agent_folder(comfy, "planner-agent")
    agent_folder(comfy, "critic", nested="org")
    (Path(comfy.folder_paths.models_dir, "LLM", "not-a-model")).mkdir()
    choices = agent_nodes.LoadAgent.INPUT_TYPES()["required"]["model"][0]
    assert choices == ["org/critic", "planner-agent"]
    assert comfy.folder_paths.get_folder_paths("LLM") == [os.path.join(comfy.folder_paths.models_dir, "LLM")]


def load(backend=agent_nodes.LOCAL, model="", url="", served="", key_env="", max_new_tokens=16):
    """Load Agent as ComfyUI calls it, with the widgets that matter here."""
    node = agent_nodes.LoadAgent()
    return node.load(
        backend, model, url, served, key_env, "auto", "cpu", agent_nodes.KEEP, max_new_tokens, 0.0
    )


def test_a_model_name_reaching_outside_models_llm_is_refused_when_queued(comfy):
    validate = agent_nodes.LoadAgent.VALIDATE_INPUTS
    # Only the model is taken: ComfyUI repeats a failed check on every input the hook names.
    assert list(inspect.signature(validate).parameters) == ["model"]
    for escape in ("../etc", "/etc/passwd", "org/../../x", "..\\x", "C:\\models\\x", ""):
        message = validate(escape)
        assert "models/LLM" in message, escape
        with pytest.raises(NodeError, match="models/LLM"):
            load(model=escape)
    # A missing folder is no reason to refuse a graph that may use an endpoint: load() says it, once.
    assert validate("gone") is True and validate("org/gone") is True


def test_a_missing_model_folder_is_reported_with_where_it_looked(comfy):
    with pytest.raises(NodeError, match="not found; looked in") as missing:
        load(model="gone")
    assert os.path.join(comfy.folder_paths.models_dir, "LLM") in str(missing.value)
    assert "outside" not in str(missing.value)
    with pytest.raises(NodeError, match="backend must be"):
        load("carrier pigeon")


def test_the_error_type_shown_carries_no_machine_path():
    # ComfyUI shows module + class name, and a pack loaded from custom_nodes has its path in its modules.
    assert f"{NodeError.__module__}.{NodeError.__qualname__}" == "InterleaveThinker.NodeError"


def test_endpoint_settings_are_checked_before_anything_is_sent(comfy):
    with pytest.raises(NodeError, match="must start with http"):
        load(agent_nodes.ENDPOINT, url="127.0.0.1:8000", served="qwen")
    with pytest.raises(NodeError, match="endpoint_model is empty"):
        load(agent_nodes.ENDPOINT, url="http://127.0.0.1:8000/v1", served=" ")
    with pytest.raises(NodeError) as credentials:
        load(agent_nodes.ENDPOINT, url="http://me:hunter2@127.0.0.1:8000/v1", served="m")
    assert "hunter2" not in str(credentials.value)


def test_a_graph_cannot_choose_a_foreign_host_or_a_secret(comfy, monkeypatch):
    """A shared workflow naming another host and a secret variable is refused before anything is sent or
    read, with a message saying how the machine's owner allows them on purpose."""
    monkeypatch.delenv("INTERLEAVE_THINKER_ALLOWED_ENDPOINTS", raising=False)
    monkeypatch.delenv("INTERLEAVE_THINKER_ALLOWED_KEY_ENV", raising=False)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "top-secret-value")
    with ChatServer(lambda body, n: plan_text("x")) as server:
        with pytest.raises(NodeError) as host:
            load(agent_nodes.ENDPOINT, url="http://attacker.example:8000/v1", served="m")
        assert "not allowed on this machine" in str(host.value)
        assert "INTERLEAVE_THINKER_ALLOWED_ENDPOINTS" in str(host.value)
        assert "interleave_thinker_endpoints.json" in str(host.value)
        with pytest.raises(NodeError) as secret:
            load(agent_nodes.ENDPOINT, url=server.url, served="m", key_env="AWS_SECRET_ACCESS_KEY")
        assert "not allowed to hold an API key" in str(secret.value)
        assert "INTERLEAVE_THINKER_ALLOWED_KEY_ENV" in str(secret.value)
        assert "top-secret-value" not in str(secret.value)
        assert server.requests == []  # not even the probe


def test_the_machine_allows_a_host_and_a_key_variable_in_comfyuis_user_folder(comfy, monkeypatch):
    monkeypatch.setenv("TEAM_KEY", "sekret")
    changed = agent_nodes.LoadAgent.IS_CHANGED
    before = changed(agent_nodes.ENDPOINT, "")
    user = Path(comfy.folder_paths.get_user_directory())
    user.mkdir(parents=True)
    with ChatServer(lambda body, n: plan_text("x")) as server:
        port = server.url.split(":")[2].split("/")[0]
        foreign = server.url.replace("127.0.0.1", "0.0.0.0")  # this machine, but not a loopback address
        with pytest.raises(NodeError, match="not allowed"):
            load(agent_nodes.ENDPOINT, url=foreign, served="m", key_env="TEAM_KEY")
        (user / "interleave_thinker_endpoints.json").write_text(
            json.dumps({"endpoints": [f"0.0.0.0:{port}"], "api_key_env": ["TEAM_KEY"]})
        )
        (agent,) = load(agent_nodes.ENDPOINT, url=foreign, served="m", key_env="TEAM_KEY")
        assert agent.url.startswith(foreign)  # allowed on purpose: the probe reached the server
        with pytest.raises(NodeError, match="not allowed"):
            load(agent_nodes.ENDPOINT, url=foreign.replace(port, "9"), served="m")
    # A cached endpoint agent is loaded again once the allow-list changes.
    assert changed(agent_nodes.ENDPOINT, "") != before


def test_an_unreachable_endpoint_fails_on_the_loader(comfy):
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(NodeError, match=f"{url}: unreachable .*is the server running"):
        load(agent_nodes.ENDPOINT, url=url, served="m")


def test_an_endpoint_agent_takes_its_key_from_the_environment(comfy, monkeypatch):
    monkeypatch.setenv("IT_TEST_KEY", "sekret")
    monkeypatch.setenv("INTERLEAVE_THINKER_ALLOWED_KEY_ENV", "IT_TEST_KEY")  # the machine's owner allows it
    with ChatServer(lambda body, n: plan_text("a cat")) as server:
        (agent,) = agent_nodes.LoadAgent().load(
            agent_nodes.ENDPOINT,
            "",
            server.url,
            "served-model",
            "IT_TEST_KEY",
            "auto",
            "auto",
            agent_nodes.KEEP,
            64,
            0.0,
        )
        story, _ = agent_nodes.Planner().plan(agent, "a cat story", "auto", 4, 0)
    assert server.requests[-1]["_headers"]["Authorization"] == "Bearer sekret"
    assert server.requests[-1]["model"] == "served-model" and server.requests[-1]["max_tokens"] == 64
    assert [step.prompt for step in story.plan.steps] == ["a cat"]
    monkeypatch.delenv("IT_TEST_KEY")
    with pytest.raises(NodeError, match="IT_TEST_KEY is not set"):
        agent_nodes.LoadAgent().load(
            agent_nodes.ENDPOINT,
            "",
            "http://127.0.0.1:1/v1",
            "m",
            "IT_TEST_KEY",
            "auto",
            "auto",
            agent_nodes.KEEP,
            16,
            0.0,
        )


def test_agent_cache_key_follows_the_model_files(comfy):
    folder = agent_folder(comfy)
    changed = agent_nodes.LoadAgent.IS_CHANGED
    first = changed(agent_nodes.LOCAL, "planner-agent", dtype="auto")
    assert changed(agent_nodes.LOCAL, "planner-agent", dtype="auto") == first
    (folder / "model.safetensors").write_bytes(b"new weights")
    second = changed(agent_nodes.LOCAL, "planner-agent")
    assert second != first
    os.utime(folder / "model.safetensors", ns=(1, 1))
    assert changed(agent_nodes.LOCAL, "planner-agent") not in (first, second)
    assert changed(agent_nodes.LOCAL, "gone") == "missing"
    assert changed(agent_nodes.ENDPOINT, "", endpoint_url="http://x") == changed(agent_nodes.ENDPOINT, "")


def test_a_local_agent_loads_from_models_llm_and_plans(comfy, tiny_agent_dir):
    target = Path(comfy.folder_paths.models_dir, "LLM", "tiny")
    target.parent.mkdir(parents=True)
    target.symlink_to(tiny_agent_dir, target_is_directory=True)
    (agent,) = agent_nodes.LoadAgent().load(
        agent_nodes.LOCAL, "tiny", "", "", "", "fp32", "cpu", agent_nodes.OFFLOAD, 8, 0.0
    )
    assert type(agent).__name__ == "TransformersAgent" and agent.memory == "offload"
    assert agent.host is memory.HOST and agent in memory._agents and agent.quantize == "none"
    with pytest.raises(NodeError, match=r"the Planner \(tiny\) gave no valid plan: .*Try another seed"):
        agent_nodes.Planner().plan(agent, "a cat story", "narrative", 4, 0)


# ---------------------------------------------------------------------------------------------------------
# Planner, Critic, Plan to Prompts


def test_planner_returns_the_plan_and_its_json(comfy):
    agent = ScriptedAgent([plan_text("a red ball", "the ball rolls")])
    story, text = agent_nodes.Planner().plan(agent, "  a ball story ", "auto", 8, 5, images=None)
    assert story.instruction == "a ball story" and story.mode == "narrative" and story.images == []
    assert json.loads(text)["execution_plan"][1]["prompt"] == "the ball rolls"
    story, _ = agent_nodes.Planner().plan(agent, "continue", "auto", 8, 5, images=pictures("red", "blue"))
    assert story.mode == "guidance" and [image.getpixel((0, 0)) for image in story.images] == [
        (255, 0, 0),
        (0, 0, 255),
    ]


def test_planner_that_never_plans_shows_an_excerpt(comfy):
    agent = ScriptedAgent(["I would rather write a poem about the sea"])
    with pytest.raises(NodeError) as error:
        agent_nodes.Planner().plan(agent, "a story", "narrative", 8, 0)
    assert "gave no valid plan" in str(error.value) and "a poem about the sea" in str(error.value)
    assert len(agent.calls) == 3
    with pytest.raises(NodeError, match="guidance mode needs at least one input image"):
        agent_nodes.Planner().plan(agent, "a story", "guidance", 8, 0)


def test_an_empty_instruction_is_refused_when_queued(comfy):
    validate = agent_nodes.Planner.VALIDATE_INPUTS
    assert list(inspect.signature(validate).parameters) == ["instruction"]
    assert "instruction is empty" in validate("") and "instruction is empty" in validate(" \n\t")
    assert validate("a cat story") is True
    assert validate(None) is True  # linked (Story List): known only when the node runs
    agent = ScriptedAgent([plan_text("x")])
    with pytest.raises(NodeError, match="instruction is empty"):
        agent_nodes.Planner().plan(agent, "  ", "auto", 8, 0)
    assert agent.calls == []


def test_the_planner_bar_moves_per_try(comfy):
    agent = ScriptedAgent(["no plan here"])
    with pytest.raises(NodeError, match="gave no valid plan"):
        agent_nodes.Planner().plan(agent, "a story", "narrative", 8, 0)
    tries = settings.DEFAULT_PLANNER_TRIES
    assert [(value, total) for value, total, _ in comfy.progress][-1] == (tries, tries)
    assert sorted({value for value, _, _ in comfy.progress}) == list(range(tries + 1))


def test_the_planner_bar_moves_per_token_with_a_local_agent(comfy, tiny_agent_dir, monkeypatch):
    from interleave_thinker.core.agents import Decoding, load_agent

    monkeypatch.setattr(agent_nodes, "PROGRESS_EVERY", 0.0)  # every token, to see them all
    agent = load_agent(tiny_agent_dir, device="cpu", dtype="fp32", decoding=Decoding(max_new_tokens=32))
    with pytest.raises(NodeError, match="gave no valid plan"):
        agent_nodes.Planner().plan(agent, "a cat story", "narrative", 4, 0)
    values = [value for value, total, _ in comfy.progress]
    assert {total for _, total, _ in comfy.progress} == {settings.DEFAULT_PLANNER_TRIES * 32}
    assert values == sorted(values) and values[-1] == settings.DEFAULT_PLANNER_TRIES * 32
    assert len([value for value in values if 0 < value < 32]) >= 16  # greedy: 32 tokens, each one shown

    # Cancel during a try: the answer stops at once and the bar is not moved past what was made.
    comfy.progress.clear()
    looks = []

    def cancel_after_five_tokens():
        looks.append(1)
        return len(looks) > 5

    monkeypatch.setattr(agent_nodes, "interrupted", cancel_after_five_tokens)
    monkeypatch.setattr(comfy, "interrupt", True)  # what ComfyUI's flag says once Cancel was pressed
    with pytest.raises(InterruptProcessingException):
        agent_nodes.Planner().plan(agent, "a cat story", "narrative", 4, 0)
    assert max(value for value, _, _ in comfy.progress) < 8


def test_interrupt_stops_the_planner_before_it_calls_the_model(comfy):
    comfy.interrupt = True
    agent = ScriptedAgent([plan_text("x")])
    with pytest.raises(InterruptProcessingException):
        agent_nodes.Planner().plan(agent, "a story", "auto", 8, 0)
    assert agent.calls == [] and comfy.interrupt is False


def test_critic_verdicts(comfy):
    before, after = pictures("white"), pictures("red")
    critic = agent_nodes.Critic()
    accepted = critic.judge(
        ScriptedAgent([verdict_text(True, think="fine")]), before, after, "a cat", "a cat", 0
    )
    assert accepted == (True, "a cat", "fine", "accepted")
    rejected = critic.judge(
        ScriptedAgent([verdict_text(False, "a big cat")]), before, after, "a cat", "a cat", 0
    )
    assert rejected == (False, "a big cat", "looked", "rejected")
    silent = ScriptedAgent(["no idea"])
    unchecked = critic.judge(silent, before, after, "a cat", "a tabby cat", 0)
    # No verdict is not an acceptance: a downstream graph can tell the two apart.
    accepted, prompt, reasoning, verdict = unchecked
    assert accepted is False and verdict == "unchecked" and prompt == "a tabby cat"
    assert "not judged" in reasoning
    assert len(silent.calls) == settings.DEFAULT_CRITIC_TRIES


def test_critic_refuses_pictures_it_cannot_compare(comfy):
    critic, agent = agent_nodes.Critic(), ScriptedAgent([verdict_text(True)])
    with pytest.raises(NodeError, match="before image is 64x64 but the after image is 32x48"):
        critic.judge(agent, pictures("white"), pictures("red", size=(32, 48)), "x", "x", 0)
    with pytest.raises(NodeError, match="batch of 2"):
        critic.judge(agent, pictures("white"), pictures("red", "blue"), "x", "x", 0)
    assert agent.calls == []


def _story_plan(comfy, *prompts, text_steps=()):
    import re

    answer = plan_text(*prompts)
    for name in text_steps:  # a step the reader sees but the image model skips
        answer = answer.replace(
            "]}",
            f", {{'step_number': 9, 'step_name': '{name}', 'instruction': 'read {name}', "
            f"'prompt': None, 'auxiliary_text': None}}]}}",
            1,
        )
    assert re.search("execution_plan", answer)
    story, _ = agent_nodes.Planner().plan(ScriptedAgent([answer]), "tale", "narrative", 8, 0)
    return story


def test_plan_to_prompts_lists_the_image_steps(comfy):
    story = _story_plan(comfy, "a cat", "a hat", text_steps=("moral",))
    prompts, texts, full = story_nodes.PlanToPrompts().split(story)
    assert prompts == ["a cat", "a hat"] and texts == ["do a cat", "do a hat"]
    assert full == "do a cat\n\ndo a hat\n\nread moral"
    text_only = _story_plan(comfy, "x")
    text_only.planning.plan = type(text_only.plan)(
        tuple(
            type(step)(step.step_number, step.step_name, step.instruction, None, None)
            for step in text_only.plan.steps
        )
    )
    with pytest.raises(NodeError, match="nothing to draw"):
        story_nodes.PlanToPrompts().split(text_only)


# ---------------------------------------------------------------------------------------------------------
# Story List


def test_story_list_reads_the_text_box_and_a_file(comfy):
    input_dir = Path(comfy.folder_paths.get_input_directory())
    (input_dir / "stories.txt").write_text("# comment\nA fox story\n\nA bee story\n")
    (input_dir / "more.jsonl").write_text('{"instruction": "A whale story"}\n')
    (input_dir / "notes.md").write_text("ignored")
    assert story_nodes.StoryList.INPUT_TYPES()["required"]["file"][0] == [
        "(none)",
        "more.jsonl",
        "stories.txt",
    ]
    node = story_nodes.StoryList()
    assert node.stories("One\n  # skip\nTwo  \n", "(none)") == (["One", "Two"], 2)
    assert node.stories("One", "stories.txt") == (["One", "A fox story", "A bee story"], 3)
    assert node.stories("", "more.jsonl") == (["A whale story"], 1)
    with pytest.raises(NodeError, match="no stories"):
        node.stories("# only a comment", "(none)")


def test_story_list_file_problems_are_plain(comfy):
    input_dir = Path(comfy.folder_paths.get_input_directory())
    assert "not found in the input folder" in story_nodes.StoryList.VALIDATE_INPUTS("gone.txt")
    for escape in ("../secret.txt", "/etc/secret.txt", "sub/../../secret.jsonl", ".."):
        assert "directly in the input folder" in story_nodes.StoryList.VALIDATE_INPUTS(escape), escape
    (input_dir / "pics.jsonl").write_text('{"instruction": "a", "images": ["x.png"]}\n')
    with pytest.raises(NodeError, match=r"pics.jsonl:1: Story List passes instructions only"):
        story_nodes.StoryList().stories("", "pics.jsonl")
    (input_dir / "s.txt").write_text("one\n")
    first = story_nodes.StoryList.IS_CHANGED("", "s.txt")
    (input_dir / "s.txt").write_text("one\ntwo\n")
    assert story_nodes.StoryList.IS_CHANGED("", "s.txt") != first


# ---------------------------------------------------------------------------------------------------------
# Edit routes and memory


def fake_model(config_name: str, *base_names: str, device="cpu", size=0, loaded=0):
    """A stand-in ModelPatcher: .model is an instance of classes named like comfy.model_base's."""
    base = object
    for name in reversed(base_names or ("BaseModel",)):
        base = type(name, (base,), {})
    model = base()
    model.model_config = type(config_name, (), {})()
    return types.SimpleNamespace(
        model=model, load_device=torch.device(device), model_size=lambda: size, loaded_size=lambda: loaded
    )


def test_auto_route_follows_the_model_family():
    assert sampling.resolve_route(fake_model("SD15", "BaseModel"), "auto") == "img2img"
    assert sampling.resolve_route(fake_model("SDXL", "SDXL", "BaseModel"), "auto") == "img2img"
    assert sampling.resolve_route(fake_model("Flux", "Flux", "BaseModel"), "auto") == "reference"
    assert sampling.resolve_route(fake_model("QwenImage", "QwenImage", "BaseModel"), "auto") == "reference"
    assert sampling.resolve_route(fake_model("Flux2", "Flux2", "Flux", "BaseModel"), "auto") == "reference"
    # Schnell is text-to-image only; it still reads reference latents if the user insists.
    schnell = fake_model("FluxSchnell", "Flux", "BaseModel")
    assert sampling.resolve_route(schnell, "auto") == "img2img"
    assert sampling.resolve_route(schnell, "reference") == "reference"
    assert sampling.resolve_route(fake_model("SD15"), "text-to-image") == "text-to-image"


def test_a_route_the_model_cannot_do_is_refused(comfy):
    with pytest.raises(GeneratorError, match=r"loaded model \(SD15\) cannot edit by reference latent"):
        sampling.resolve_route(fake_model("SD15", "BaseModel"), "reference")
    with pytest.raises(GeneratorError, match="unknown edit route"):
        sampling.resolve_route(fake_model("SD15"), "sideways")
    story = _story_plan(comfy, "a cat")
    with pytest.raises(NodeError, match="cannot edit by reference latent"):
        story_nodes.RefineLoop().run(
            story,
            fake_model("SD15"),
            object(),
            object(),
            "",
            0,
            3,
            7.0,
            "euler",
            "normal",
            64,
            64,
            "reference",
            0.6,
            2,
        )


def test_make_room_asks_comfyui_to_free_the_agents_size(comfy):
    memory.make_room(10_000, "cuda")
    assert comfy.freed == [(int(10_000 * memory.AGENT_OVERHEAD) + 1000, torch.device("cuda", 0))]
    memory.make_room(10_000, "cpu")
    assert len(comfy.freed) == 1


class WeightsAgent:
    """What ComfyHost reads of a TransformersAgent: a model with weights, its device, size and policy."""

    def __init__(self, device="cuda", memory_policy="keep"):
        self.name, self.device, self.memory, self.size_bytes = "agent", device, memory_policy, 10_000
        self.model = torch.nn.Linear(2, 2)
        self.weight_format, self.weights_device = "fp32", "cpu"


def test_an_agent_is_one_comfyui_model_loaded_whole_before_each_call(comfy):
    agent = WeightsAgent("cuda")
    memory.track(agent)
    memory.HOST.load(agent)
    memory.HOST.load(agent)
    (patcher,) = {id(call["models"][0]): call["models"][0] for call in comfy.loads}.values()
    assert type(patcher).__name__ == "FakePatcher" and patcher.size == agent.size_bytes
    # ComfyUI's own device object (cuda:0 is not cuda to it); off the GPU means the CPU.
    assert patcher.load_device == torch.device("cuda", 0) and patcher.offload_device == torch.device("cpu")
    assert (
        patcher.model.agent_model is agent.model and type(patcher.model).__name__ == "InterleaveThinkerAgent"
    )
    # Whole (a transformers model cannot run split across devices), with room for one generation.
    assert comfy.loads[0] == {"models": [patcher], "extra": 2_000, "whole": True}
    assert memory.is_loaded(agent) and memory.agent_status()[0]["loaded"] is True

    memory.HOST.unload(agent)  # what "offload to CPU between calls" does after each call
    assert not memory.is_loaded(agent) and comfy.modules["comfy.model_management"].current_loaded_models == []
    assert patcher.detached == 1 and comfy.emptied == 1
    memory.HOST.unload(agent)  # not loaded through ComfyUI: the weights are sent to the CPU all the same
    assert patcher.detached == 2


def test_load_agent_hands_a_local_agent_to_comfyui_with_its_weight_format(comfy, monkeypatch, caplog):
    agent_folder(comfy, "planner-agent")
    made = []

    def fake_load_agent(folder, **kwargs):
        made.append(kwargs)
        agent = WeightsAgent(kwargs["device"])
        agent.describe = lambda: f"{folder.name}: {kwargs['quantize']} weights"
        return agent

    monkeypatch.setattr(agent_nodes, "load_agent", fake_load_agent)
    node = agent_nodes.LoadAgent()
    local = (agent_nodes.LOCAL, "planner-agent", "", "", "", "auto", "auto", agent_nodes.KEEP, 16, 0.0)
    node.load(*local)  # a workflow saved before the widget existed
    with caplog.at_level("INFO"):
        node.load(*local, quantize="nf4")
    assert "Load Agent: planner-agent: nf4 weights" in caplog.text  # ComfyUI's log, and the node's text
    node.load(*local, quantize="none", fast_decoding=True)
    assert [(k["quantize"], k["host"], k["memory"], k["device"], k["fast_decoding"]) for k in made] == [
        ("none", memory.HOST, "keep", "cuda:0", False),  # off unless asked for, as in the engine
        ("nf4", memory.HOST, "keep", "cuda:0", False),
        ("none", memory.HOST, "keep", "cuda:0", True),
    ]
    with pytest.raises(NodeError, match="quantize must be one of none, int8, nf4, got 'int3'"):
        node.load(*local, quantize="int3")
    optional = agent_nodes.LoadAgent.INPUT_TYPES()["optional"]
    # The last widgets, so saved workflows keep their order.
    assert list(optional) == ["quantize", "fast_decoding"]
    assert (
        optional["quantize"][0] == list(settings.QUANTIZATIONS)
        and optional["quantize"][1]["default"] == "none"
    )
    assert optional["fast_decoding"][0] == "BOOLEAN" and optional["fast_decoding"][1]["default"] is False


# ---------------------------------------------------------------------------------------------------------
# Images and saving


def test_image_tensors_round_trip():
    images = [Image.new("RGB", (8, 4), (10, 200, 30)), Image.new("RGB", (8, 4), (0, 0, 255))]
    batch = to_tensor(images)
    assert tuple(batch.shape) == (2, 4, 8, 3)
    assert [image.tobytes() for image in to_pil(batch)] == [image.tobytes() for image in images]
    assert to_tensor([]).shape[0] == 0
    with pytest.raises(ValueError, match="different sizes"):
        to_tensor([Image.new("RGB", (8, 4)), Image.new("RGB", (4, 4))])


def test_save_storyboard_writes_a_whole_folder_and_shows_it(comfy):
    from helpers import PaintGenerator

    from interleave_thinker.core.loop import LoopConfig, run_plan

    story_plan = _story_plan(comfy, "a cat", "a hat")
    board = run_plan(
        story_plan.plan, PaintGenerator(), None, instruction="tale", config=LoopConfig(width=64, height=64)
    )
    node = story_nodes.SaveStoryboard()
    first = node.save(board, "InterleaveThinker/story")
    second = node.save(board, "InterleaveThinker/story")
    folder = Path(first["result"][0])
    assert folder.name == "story_00001" and Path(second["result"][0]).name == "story_00002"
    assert {p.name for p in folder.iterdir()} == {
        "storyboard.json",
        "index.html",
        "story.md",
        "page-01.png",
        "storyboard.pdf",
        "steps",
        "attempts",
        "inputs",
    }
    assert json.loads((folder / "storyboard.json").read_text())["story_id"] == "story_00001"
    assert first["ui"]["text"] == ["do a cat\n\ndo a hat"]
    assert first["ui"]["images"] == [
        {
            "filename": f"step-0{n}.png",
            "subfolder": os.path.join("InterleaveThinker", "story_00001", "steps"),
            "type": "output",
        }
        for n in (1, 2)
    ]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_save_storyboard_refuses_a_prefix_outside_the_output_folder(comfy, tmp_path):
    validate = story_nodes.SaveStoryboard.VALIDATE_INPUTS
    assert list(inspect.signature(validate).parameters) == ["filename_prefix"]
    outside = tmp_path / "elsewhere" / "x"
    for escape in ("../../x", "a/../../x", str(outside), "..\\x", "C:\\x", " "):
        assert "filename_prefix" in validate(escape), escape
    for fine in ("InterleaveThinker/story", "%date:yyyy-MM-dd%/story", "story"):
        assert validate(fine) is True, fine
    assert validate(None) is True  # linked: checked when the node runs
    with pytest.raises(NodeError, match="must stay inside the output folder"):
        story_nodes.SaveStoryboard().save(None, str(outside))  # refused before the storyboard is read
    assert not outside.parent.exists()


# ---------------------------------------------------------------------------------------------------------
# ComfyGenerator's calls into ComfyUI, recorded by stand-ins of nodes, node_helpers and nodes_qwen


class FakeVae:
    latent_channels = 16

    def spacial_compression_encode(self):
        return 8


@pytest.fixture
def sampling_calls(comfy, monkeypatch):
    calls = {"sample": [], "qwen": [], "qwen_plus": []}
    nodes = types.ModuleType("nodes")

    class CLIPTextEncode:
        def encode(self, clip, text):
            return ([[text, {}]],)

    class VAEEncode:
        def encode(self, vae, pixels):
            return (
                {
                    "samples": torch.full(
                        (1, 16, pixels.shape[1] // 8, pixels.shape[2] // 8), float(pixels.mean())
                    )
                },
            )

    class VAEDecode:
        def decode(self, vae, samples):
            latent = samples["samples"]
            return (torch.full((1, latent.shape[2] * 8, latent.shape[3] * 8, 3), 0.5),)

    def common_ksampler(
        model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent, denoise=1.0
    ):
        calls["sample"].append(
            {
                "seed": seed,
                "steps": steps,
                "cfg": cfg,
                "sampler": sampler_name,
                "scheduler": scheduler,
                "positive": positive,
                "negative": negative,
                "latent": latent,
                "denoise": denoise,
            }
        )
        return ({"samples": latent["samples"]},)

    nodes.CLIPTextEncode, nodes.VAEEncode, nodes.VAEDecode = CLIPTextEncode, VAEEncode, VAEDecode
    nodes.common_ksampler = common_ksampler
    helpers = types.ModuleType("node_helpers")

    def conditioning_set_values(conditioning, values, append=False):
        out = []
        for text, extra in conditioning:
            extra = dict(extra)
            for key, value in values.items():
                extra[key] = extra.get(key, []) + value if append and key in extra else value
            out.append([text, extra])
        return out

    helpers.conditioning_set_values = conditioning_set_values
    qwen = types.ModuleType("comfy_extras.nodes_qwen")

    class TextEncodeQwenImageEdit:
        @classmethod
        def execute(cls, clip, prompt, vae=None, image=None):
            calls["qwen"].append((prompt, tuple(image.shape)))
            return ([[prompt, {"reference_latents": ["from qwen"]}]],)

    class TextEncodeQwenImageEditPlus:
        @classmethod
        def execute(cls, clip, prompt, vae=None, image1=None, image2=None, image3=None):
            images = {"image1": image1, "image2": image2, "image3": image3}
            calls["qwen_plus"].append(
                (prompt, {k: tuple(v.shape) for k, v in images.items() if v is not None})
            )
            return ([[prompt, {"reference_latents": ["from qwen plus"]}]],)

    qwen.TextEncodeQwenImageEdit = TextEncodeQwenImageEdit
    qwen.TextEncodeQwenImageEditPlus = TextEncodeQwenImageEditPlus
    for name, module in (("nodes", nodes), ("node_helpers", helpers), ("comfy_extras.nodes_qwen", qwen)):
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def test_comfy_sampler_text_to_image_and_img2img(sampling_calls):
    sampler = sampling.ComfyGenerator(
        fake_model("SD15"),
        object(),
        FakeVae(),
        negative="blurry",
        steps=3,
        cfg=6.0,
        sampler_name="euler",
        scheduler="karras",
        denoise=0.4,
    )
    assert sampler.edit_route == "img2img" and sampler.name == "ComfyUI SD15"
    picture = sampler.text_to_image("a cat", width=64, height=40, seed=9)
    first = sampling_calls["sample"][0]
    assert picture.size == (64, 40)  # the latent grid is 64x40 -> 8x5, decoded back exactly
    assert tuple(first["latent"]["samples"].shape) == (1, 16, 5, 8) and not first["latent"]["samples"].any()
    assert first["positive"] == [["a cat", {}]] and first["negative"] == [["blurry", {}]]
    assert (first["seed"], first["steps"], first["cfg"], first["denoise"]) == (9, 3, 6.0, 1.0)
    sampler.edit(Image.new("RGB", (60, 36), (255, 255, 255)), "a cat in a hat", seed=4)
    edit = sampling_calls["sample"][1]
    assert edit["denoise"] == 0.4 and float(edit["latent"]["samples"].mean()) == pytest.approx(1.0)
    assert edit["positive"] == [["a cat in a hat", {}]]


def test_comfy_sampler_reference_route(sampling_calls):
    flux = sampling.ComfyGenerator(fake_model("Flux", "Flux"), object(), FakeVae(), cfg=1.0, guidance=2.5)
    assert flux.edit_route == "reference"
    result = flux.edit(Image.new("RGB", (64, 64), (255, 255, 255)), "make it night", seed=1)
    call = sampling_calls["sample"][0]
    ((text, extra),) = call["positive"]
    assert text == "make it night" and extra["guidance"] == 2.5
    (reference,) = extra["reference_latents"]
    assert float(reference.mean()) == pytest.approx(1.0)  # the encoded before image
    assert call["denoise"] == 1.0 and not call["latent"]["samples"].any() and result.size == (64, 64)

    qwen = sampling.ComfyGenerator(fake_model("QwenImage", "QwenImage"), object(), FakeVae(), cfg=2.5)
    qwen.edit(Image.new("RGB", (64, 48), (0, 0, 0)), "add snow", seed=1)
    assert sampling_calls["qwen"] == [("add snow", (1, 48, 64, 3))]  # the before image reaches the encoder
    assert sampling_calls["sample"][1]["positive"] == [["add snow", {"reference_latents": ["from qwen"]}]]
    text_only = sampling.ComfyGenerator(fake_model("SD15"), object(), FakeVae(), edit_route="text-to-image")
    text_only.edit(Image.new("RGB", (32, 32)), "a dog", seed=1)
    assert sampling_calls["sample"][2]["denoise"] == 1.0 and len(sampling_calls["qwen"]) == 1


def _means(call) -> list[float]:
    """The encoded pictures in a sampling call's conditioning, by their mean (the fake VAE's latent)."""
    ((_, extra),) = call["positive"]
    return [round(float(latent.mean()), 3) for latent in extra.get("reference_latents", [])]


def test_comfy_sampler_appends_every_reference_after_the_before_image(sampling_calls):
    flux = sampling.ComfyGenerator(fake_model("Flux", "Flux"), object(), FakeVae(), cfg=1.0)
    assert flux.max_references == settings.MAX_REFERENCES
    cast = [Image.new("RGB", (128, 96), (255, 255, 255)), Image.new("RGB", (64, 64), (51, 51, 51))]
    flux.edit(Image.new("RGB", (64, 64), (0, 0, 0)), "make it night", seed=1, references=cast)
    assert _means(sampling_calls["sample"][0]) == [0.0, 1.0, 0.2]  # before image, reference 1, reference 2
    # A reference is drawn to about the story's picture area, its aspect kept (128x96 -> 80x48).
    ((_, extra),) = sampling_calls["sample"][0]["positive"]
    assert tuple(extra["reference_latents"][1].shape) == (1, 16, 6, 10)
    flux.text_to_image("a cat", width=64, height=64, seed=2, references=cast)  # step 1 holds the cast too
    assert _means(sampling_calls["sample"][1]) == [1.0, 0.2]
    assert not sampling_calls["sample"][1]["latent"]["samples"].any()
    flux.text_to_image("a cat", width=64, height=64, seed=2)
    assert _means(sampling_calls["sample"][2]) == []


def test_only_the_reference_route_takes_references(sampling_calls, monkeypatch):
    for route in ("img2img", "text-to-image"):
        plain = sampling.ComfyGenerator(fake_model("SD15"), object(), FakeVae(), edit_route=route)
        assert plain.max_references == 0
        with pytest.raises(GeneratorError, match="takes 0 reference picture.*only the reference route"):
            plain.edit(Image.new("RGB", (32, 32)), "a dog", seed=1, references=[Image.new("RGB", (8, 8))])
    assert not sampling_calls["sample"]
    qwen = sampling.ComfyGenerator(fake_model("QwenImage", "QwenImage"), object(), FakeVae(), cfg=2.5)
    assert qwen.max_references == 2
    cast = [Image.new("RGB", (32, 32)), Image.new("RGB", (16, 16))]
    qwen.edit(Image.new("RGB", (64, 48)), "add snow", seed=1, references=cast)
    qwen.text_to_image("a cat", width=64, height=64, seed=1, references=cast[:1])
    assert sampling_calls["qwen_plus"] == [
        ("add snow", {"image1": (1, 48, 64, 3), "image2": (1, 32, 32, 3), "image3": (1, 16, 16, 3)}),
        ("a cat", {"image1": (1, 32, 32, 3)}),
    ]
    assert not sampling_calls["qwen"]  # without references the single-image encoder, as before
    with pytest.raises(GeneratorError, match="takes 2 reference"):
        qwen.edit(Image.new("RGB", (64, 48)), "add snow", seed=1, references=cast * 2)
    monkeypatch.delattr(sys.modules["comfy_extras.nodes_qwen"], "TextEncodeQwenImageEditPlus")
    older = sampling.ComfyGenerator(fake_model("QwenImage", "QwenImage"), object(), FakeVae())
    assert older.max_references == 0  # a ComfyUI without the Plus encoder


def test_refine_loop_declares_references_and_anchor_after_the_old_inputs():
    declaration = story_nodes.RefineLoop.INPUT_TYPES()
    assert list(declaration["required"]) == [
        "plan", "model", "clip", "vae", "negative_prompt", "seed", "steps", "cfg", "sampler_name",
        "scheduler", "width", "height", "edit_route", "denoise", "max_attempts",
    ]  # fmt: skip
    optional = declaration["optional"]
    assert list(optional) == ["critic", "guidance", "keep_attempt", "references", "anchor"]
    assert optional["references"][0] == "IMAGE" and "img2img" in optional["references"][1]["tooltip"]
    assert optional["anchor"][0] == list(settings.ANCHOR_CHOICES)
    assert optional["anchor"][1]["default"] == settings.DEFAULT_ANCHOR == "none"


LOOP_WIDGETS = ("", 0, 2, 1.0, "euler", "normal", 64, 64, "auto", 0.6, 1)


def test_refine_loop_gives_the_references_and_the_anchor_to_every_step(sampling_calls, comfy):
    story = _story_plan(comfy, "a cat", "a hat", "a boat")
    flux = fake_model("Flux", "Flux")
    cast = pictures((255, 255, 255), (51, 51, 51))
    loop = story_nodes.RefineLoop()
    *_, board, _ = loop.run(story, flux, object(), FakeVae(), *LOOP_WIDGETS, references=cast, anchor="first")
    assert [[a.references for a in step.attempts] for step in board.steps] == [
        [("reference 1", "reference 2")],
        [("reference 1", "reference 2")],  # step 1 is the picture it edits: no anchor beside it
        [("reference 1", "reference 2", "step 1")],
    ]
    assert [len(_means(call)) for call in sampling_calls["sample"]] == [2, 3, 4]
    assert board.settings["references"] == {"given": 2, "anchor": "first", "generator_takes": 8}
    assert len(board.reference_images) == 2

    *_, plain, _ = loop.run(story, fake_model("SD15"), object(), FakeVae(), *LOOP_WIDGETS, references=cast)
    assert "not used" in plain.settings["references"]["note"]
    assert all(not a.references for a in plain.attempts)
    calls = len(sampling_calls["sample"])
    too_many = pictures(*[(i, i, i) for i in range(settings.MAX_REFERENCES + 1)])
    with pytest.raises(NodeError, match=f"at most {settings.MAX_REFERENCES} reference pictures"):
        loop.run(story, flux, object(), FakeVae(), *LOOP_WIDGETS, references=too_many)
    assert len(sampling_calls["sample"]) == calls  # refused before any picture was drawn


GENERATOR_INPUTS = (
    "model", "clip", "vae", "negative_prompt", "steps", "cfg", "sampler_name", "scheduler", "edit_route",
    "denoise",
)  # fmt: skip


def test_resume_storyboard_takes_the_refine_loops_generator_inputs():
    loop, resume = story_nodes.RefineLoop.INPUT_TYPES(), story_nodes.ResumeStoryboard.INPUT_TYPES()
    assert list(resume["required"]) == [
        "storyboard_folder", "from_step", "prompt", "keep_seed", "seed", *GENERATOR_INPUTS,
    ]  # fmt: skip
    assert all(resume["required"][name] == loop["required"][name] for name in GENERATOR_INPUTS)
    assert resume["optional"] == {name: loop["optional"][name] for name in ("critic", "guidance")}
    assert story_nodes.ResumeStoryboard.RETURN_TYPES == story_nodes.RefineLoop.RETURN_TYPES
    assert "STORYBOARD" in story_nodes.ResumeStoryboard.RETURN_TYPES


def test_resume_storyboard_keeps_the_steps_before_and_redraws_from_there(sampling_calls, comfy):
    story = _story_plan(comfy, "a cat", "a hat", "a boat")
    *_, board, _ = story_nodes.RefineLoop().run(
        story, fake_model("Flux", "Flux"), object(), FakeVae(), *LOOP_WIDGETS, references=pictures((9, 9, 9))
    )
    saved = Path(story_nodes.SaveStoryboard().save(board, "InterleaveThinker/story")["result"][0])
    resume_widgets = ("InterleaveThinker/story_00001", 3, "  a red boat ", True, 0)
    sampler = ("", 2, 1.0, "euler", "normal", "auto", 0.6)
    comfy.progress.clear()
    images, text, resumed, _ = story_nodes.ResumeStoryboard().resume(
        *resume_widgets, fake_model("Flux", "Flux"), object(), FakeVae(), *sampler
    )
    assert len(sampling_calls["sample"]) == 4  # three steps drawn first, then only step 3 again
    assert _means(sampling_calls["sample"][-1])[1:] == [round(9 / 255, 3)]  # the saved reference still rides
    kept = Storyboard.load(saved)
    assert [s.image.tobytes() for s in resumed.steps[:2]] == [s.image.tobytes() for s in kept.steps[:2]]
    assert resumed.steps[2].attempts[0].prompt == "a red boat" and resumed.seed == kept.seed
    assert resumed.settings["resumed"]["from_step"] == 3 and tuple(images.shape) == (3, 64, 64, 3)
    assert comfy.progress[0][:2] == (1, 3) and comfy.progress[-1][:2] == (3, 3)  # kept steps count as done
    # The seed widget when keep_seed is off; a bad step number is refused before anything is drawn.
    other = story_nodes.ResumeStoryboard().resume(
        "InterleaveThinker/story_00001", 2, "", False, 7, fake_model("Flux", "Flux"), object(), FakeVae(),
        *sampler,
    )[2]  # fmt: skip
    assert other.seed == 7 and other.steps[1].attempts[0].prompt == kept.steps[1].attempts[0].prompt
    with pytest.raises(NodeError, match="from_step"):
        story_nodes.ResumeStoryboard().resume(
            "InterleaveThinker/story_00001", 5, "", True, 0, fake_model("Flux", "Flux"), object(), FakeVae(),
            *sampler,
        )  # fmt: skip


def test_resume_storyboard_reads_only_storyboards_inside_the_output_folder(comfy, tmp_path):
    from helpers import PaintGenerator

    from interleave_thinker.core.loop import LoopConfig, run_plan

    board = run_plan(
        _story_plan(comfy, "a cat").plan, PaintGenerator(), None, config=LoopConfig(width=64, height=64)
    )
    outside = board.save(tmp_path / "elsewhere" / "story")
    output = Path(comfy.folder_paths.get_output_directory())
    inside = story_nodes.SaveStoryboard().save(board, "it/story")["result"][0]
    (output / "link").symlink_to(outside, target_is_directory=True)
    validate = story_nodes.ResumeStoryboard.VALIDATE_INPUTS
    assert list(inspect.signature(validate).parameters) == ["storyboard_folder"]
    for escape in ("../elsewhere/story", str(outside), "link", "..\\x", "C:\\x", " "):
        assert "storyboard_folder" in validate(escape), escape
    assert "no saved storyboard in 'it'" in validate("it")
    for fine in ("it/story_00001", inside):  # its path from the output folder, or Save Storyboard's output
        assert validate(fine) is True, fine
    assert validate(None) is True  # linked: checked when the node runs
    with pytest.raises(NodeError, match="must stay inside the output folder"):
        story_nodes.ResumeStoryboard().resume(str(outside), 1, "", True, 0, *([None] * 10))


def test_refine_loop_keeps_the_best_rejected_attempt_when_asked_and_the_last_by_default(
    sampling_calls, comfy
):
    def rejecting(messages, n):  # the second verdict of each step names one problem, the others three
        problems = "the hat is missing" if n % 3 == 1 else "missing hat, wrong colour, extra cat"
        return verdict_text(False, f"try {n}", think=problems)

    widgets = ("", 0, 3, 7.0, "euler", "normal", 64, 64, "img2img", 0.6, 3)
    loop = story_nodes.RefineLoop()
    story = _story_plan(comfy, "a cat")
    _, _, best, _ = loop.run(
        story, fake_model("SD15"), object(), FakeVae(), *widgets, critic=ScriptedAgent(rejecting),
        keep_attempt="best",
    )  # fmt: skip
    assert best.steps[0].kept.number == 2 and "fewest problems" in best.steps[0].kept_reason
    _, _, last, _ = loop.run(
        story, fake_model("SD15"), object(), FakeVae(), *widgets, critic=ScriptedAgent(rejecting)
    )
    assert last.steps[0].kept.number == 3 and last.steps[0].kept_number is None
    assert story_nodes.RefineLoop.INPUT_TYPES()["optional"]["keep_attempt"][1]["default"] == "last"
