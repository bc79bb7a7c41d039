"""The pack installs beside other packs and is ready for the Comfy Registry.

- requirements.txt (what ComfyUI-Manager installs) holds only what ComfyUI does not already provide:
  installing it into a ComfyUI environment changes no torch package (CI also runs pip's dry run: .ci/run);
- pyproject.toml is what the registry reads (https://docs.comfy.org/registry/specifications), and setuptools
  packages every file the pack needs;
- ComfyUI-Manager's scanner reads the node ids from the source; .comfyignore keeps development files out;
- diffusers is an extra, imported only where used, with an error that names the extra;
- Qwen3-VL and Qwen2.5-VL folders, including those saved by transformers 5, run under every supported
  transformers (CI runs this file under the lowest too).
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
from pathlib import Path

import pytest
import tomllib

from interleave_thinker import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PACKAGE = "interleave_thinker"

# Never installed by the pack: the user's torch build is theirs, and diffusers is an extra.
TORCH_FAMILY = {"torch", "torchvision", "torchaudio", "torchsde", "xformers", "triton", "diffusers"}
# ComfyUI v0.3.64's requirements.txt (names only; with COMFYUI_PATH set the file itself is read).
COMFYUI_REQUIREMENTS = {
    "comfyui-frontend-package", "comfyui-workflow-templates", "comfyui-embedded-docs", "torch", "torchsde",
    "torchvision", "torchaudio", "numpy", "einops", "transformers", "tokenizers", "sentencepiece",
    "safetensors", "aiohttp", "yarl", "pyyaml", "pillow", "scipy", "tqdm", "psutil", "alembic", "sqlalchemy",
    "av", "kornia", "spandrel", "pydantic", "pydantic-settings",
}  # fmt: skip
# ComfyUI requires transformers>=4.37.2; Qwen3-VL needs 4.57, so the pack states its own floor.
RAISED_FLOORS = {"transformers"}


def requirement_name(line: str) -> str:
    return re.split(r"[<>=!~ \[;]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")


def requirements(lines) -> dict[str, str]:
    """Requirement lines by normalised name (comments and blanks dropped, spaces removed)."""
    entries = [line.split(" #")[0].strip() for line in lines]
    return {requirement_name(e): e.replace(" ", "") for e in entries if e and not e.startswith("#")}


def comfyui_requirements() -> set[str]:
    comfyui = os.environ.get("COMFYUI_PATH")
    if comfyui:
        lines = (Path(comfyui) / "requirements.txt").read_text(encoding="utf-8").splitlines()
        return set(requirements(lines))
    return COMFYUI_REQUIREMENTS


REQUIREMENTS = requirements((ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines())
DEPENDENCIES = requirements(PYPROJECT["project"]["dependencies"])


# -- installing beside other packs ------------------------------------------------------------------------


def test_requirements_txt_changes_no_torch_package_and_nothing_comfyui_provides():
    assert not set(REQUIREMENTS) & TORCH_FAMILY
    assert set(REQUIREMENTS) & comfyui_requirements() <= RAISED_FLOORS
    assert {"transformers", "json-repair"} <= set(REQUIREMENTS)


def test_requirements_txt_is_pyproject_minus_what_comfyui_provides():
    # pip installs outside ComfyUI get the rest from pyproject; the shared lines are identical.
    assert REQUIREMENTS == {
        name: line
        for name, line in DEPENDENCIES.items()
        if name not in comfyui_requirements() - RAISED_FLOORS
    }
    assert not set(DEPENDENCIES) & TORCH_FAMILY


def test_transformers_spans_the_first_release_with_qwen3_vl_to_the_newest_5x():
    assert REQUIREMENTS["transformers"] == "transformers>=4.57,<6"
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {requirement_name(line) for line in extras["diffusers"]} >= {"diffusers"}
    # Training is tested on transformers 5 only, and says so.
    assert "transformers>=5.1,<6" in extras["train"]


def test_the_quick_start_installs_every_extra_the_demo_and_the_tests_need():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    install = r'pip install (-q )?-e "\.\[train,dev,diffusers,quant\]"'
    assert re.search(install, readme) and re.search(install, ci)
    assert "python -m pytest -q\n" in readme and "\npython -m pytest -q\n" in ci


# What the shipped tiny agents (saved by transformers 5) answer, recorded under transformers 5: the same
# answers under the lowest supported transformers show that 4.x reads those folders as the same models.
SHIPPED_ANSWERS = ROOT / "tests" / "data" / "shipped_agents_answers.json"
SHIPPED_AGENTS = ROOT / "sandbox" / "agents"


def shipped_agents_answers() -> dict:
    import hashlib

    from PIL import Image

    from interleave_thinker.core.agents import Decoding, load_agent
    from interleave_thinker.core.messages import critic_messages, planner_messages

    before, after = Image.new("RGB", (96, 96), "white"), Image.new("RGB", (96, 96), "white")
    after.paste((220, 40, 40), (32, 32, 64, 64))
    prompts = {
        "planner": planner_messages("Draw a small red square at the centre, then add a large blue circle."),
        "critic-sft": critic_messages(
            before, after, "add a small red square at the centre", "a small red square"
        ),
    }
    answers = {}
    for name, messages in prompts.items():
        folder = SHIPPED_AGENTS / name
        agent = load_agent(str(folder), decoding=Decoding(max_new_tokens=40), device="cpu", dtype="fp32")
        weights = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
        answers[name] = {"weights": weights, "answer": agent.complete(messages, seed=0)}
    return answers


def test_the_shipped_agents_answer_alike_under_transformers_4_and_5():
    recorded = json.loads(SHIPPED_ANSWERS.read_text(encoding="utf-8"))
    answers = shipped_agents_answers()
    if any(answers[name]["weights"] != recorded[name]["weights"] for name in answers):
        pytest.fail(
            "the shipped agents changed: record their answers again (transformers 5): "
            "python tests/test_packaging.py"
        )
    assert answers == recorded


def build_tiny_qwen2_5_vl(out: Path) -> Path:
    """A tiny random-weight Qwen2.5-VL folder, saved the way the installed transformers saves it."""
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    from interleave_thinker.training.tiny import CHAT_TEMPLATE, build_tokenizer, rope_settings

    tokenizer = build_tokenizer(512)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in ("<|im_end|>", "<|endoftext|>")}
    rope = {  # Qwen2.5-VL's sections are not interleaved
        key: {k: v for k, v in value.items() if k != "mrope_interleaved"}
        if isinstance(value, dict)
        else value
        for key, value in rope_settings([4, 2, 2]).items()
    }
    text = {"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
    text.update(num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, **rope)
    vision = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 14}
    vision.update(out_hidden_size=64, fullatt_block_indexes=[0], window_size=112)
    special = {name: tokenizer.convert_tokens_to_ids(f"<|{name}|>") for name in ("image_pad", "video_pad")}
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=special["image_pad"],
        video_token_id=special["video_pad"],
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    )
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"]], pad_token_id=ids["<|endoftext|>"], do_sample=False
    )
    pixels = {
        "size": {"shortest_edge": 28 * 28, "longest_edge": 112 * 112},
        "patch_size": 14,
        "merge_size": 2,
    }
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def test_a_qwen2_5_vl_agent_runs_through_the_pack(tmp_path):
    from PIL import Image

    from interleave_thinker.core.agents import Decoding, load_agent
    from interleave_thinker.core.messages import critic_messages, planner_messages

    agent = load_agent(
        str(build_tiny_qwen2_5_vl(tmp_path / "qwen2.5-vl")), decoding=Decoding(max_new_tokens=8), device="cpu"
    )
    before, after = Image.new("RGB", (100, 80), "white"), Image.new("RGB", (60, 60), "red")
    inputs = agent.prepare(critic_messages(before, after, "a red square", "a red square"))
    grid = inputs["image_grid_thw"]
    assert grid.shape[0] == 2  # before and after, in that order
    image_tokens = int((inputs["input_ids"] == agent.model.config.image_token_id).sum())
    assert image_tokens == int(grid.prod(dim=1).sum()) // 4  # merged 2x2
    first = agent.complete(planner_messages("a red square"), seed=0)
    assert isinstance(first, str) and first == agent.complete(planner_messages("a red square"), seed=0)


def test_diffusers_is_imported_only_where_it_is_used():
    for path in sorted(ROOT.glob("**/*.py")):
        if {".venv", "tests", "bench"} & set(path.relative_to(ROOT).parts):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module level: what importing the module runs
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            assert not any(name.split(".")[0] == "diffusers" for name in names), path


def test_without_diffusers_the_error_names_the_extra(monkeypatch, tmp_path):
    from interleave_thinker.core.generators import GeneratorError
    from interleave_thinker.core.generators.diffusers_generator import DiffusersGenerator
    from interleave_thinker.training.tiny import build_tiny_pipeline

    monkeypatch.setitem(__import__("sys").modules, "diffusers", None)  # "import diffusers" fails
    (tmp_path / "model_index.json").write_text("{}")
    extra = re.escape('pip install "interleave-thinker[diffusers]"')
    with pytest.raises(GeneratorError, match=extra):
        DiffusersGenerator(tmp_path, device="cpu")
    with pytest.raises(GeneratorError, match=extra):
        build_tiny_pipeline(tmp_path / "tiny-sd")
    from interleave_thinker.core.cli import quiet_libraries

    quiet_libraries()  # --quiet works without the extra


# -- the Comfy Registry -----------------------------------------------------------------------------------


def test_pyproject_is_what_the_comfy_registry_reads():
    project, comfy = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
    # The node id: short, no "ComfyUI", letters, digits and single - _ . between them.
    assert (
        re.fullmatch(r"[A-Za-z][A-Za-z0-9]*([-_.][A-Za-z0-9]+)*", project["name"])
        and len(project["name"]) < 100
    )
    assert "comfyui" not in project["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert (ROOT / project["license"]["file"]).is_file()  # the table form the registry asks for
    assert project["description"] and project["urls"]["Repository"].startswith("https://github.com/")
    assert comfy["PublisherId"] and comfy["DisplayName"]
    # The icon is a URL to the file in this repository (PNG, at most 800x400).
    icon = re.fullmatch(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/main/(.+)", comfy["Icon"])
    assert icon and (ROOT / icon.group(1)).is_file()
    # Version specifiers in the registry's own pattern (comfy-cli's validate_version).
    part = r"(==|>=|<=|!=|~=|>|<)?\s*\d+\.\d+\.\d+"
    assert all(re.fullmatch(part, p.strip()) for p in comfy["requires-comfyui"].split(","))
    # OS and accelerator classifiers as the registry parses them.
    classifiers = project["classifiers"]
    systems = [
        c.removeprefix("Operating System :: ") for c in classifiers if c.startswith("Operating System")
    ]
    assert systems and all(s.startswith(("Microsoft", "POSIX", "MacOS", "OS Independent")) for s in systems)
    accelerators = {c.removeprefix("Environment :: ") for c in classifiers if c.startswith("Environment ::")}
    gpus = {"GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc", "GPU :: Apple Metal"}
    assert accelerators <= gpus | {"NPU :: Huawei Ascend"}
    # The command and the import name stay what they were.
    assert project["scripts"] == {"interleave-thinker": f"{PACKAGE}.cli:main"}
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {PACKAGE: "."}


def _shipped_files() -> list[str]:
    """Every file setuptools puts in the wheel: the listed packages' modules and package data."""
    setuptools = PYPROJECT["tool"]["setuptools"]
    data = setuptools["package-data"]
    files = []
    for package in setuptools["packages"]:
        folder = ROOT.joinpath(*package.split(".")[1:])
        files += [str(p.relative_to(ROOT)) for p in folder.glob("*.py")]
        for pattern in data.get(package, []):
            files += [str(p.relative_to(ROOT)) for p in folder.glob(pattern) if p.is_file()]
    return files


def test_setuptools_ships_every_file_the_pack_needs_and_ignores_no_package():
    setuptools = PYPROJECT["tool"]["setuptools"]
    packages = set(setuptools["packages"])
    shipped = set(_shipped_files())
    needed = ["__init__.py", "cli.py", "web/storyboard.js", "web/icon.png", "core/prompts/critic.txt"]
    needed += [str(p.relative_to(ROOT)) for p in (ROOT / "workflows").glob("**/*") if p.is_file()]
    needed += [str(p.relative_to(ROOT)) for p in (ROOT / "sandbox" / "agents").glob("**/*") if p.is_file()]
    needed += [str(p.relative_to(ROOT)) for p in (ROOT / "training").glob("**/*.yaml")]
    assert not set(needed) - shipped
    # setuptools warns about (and drops) a folder that Python could import but `packages` does not list.
    for folder in {ROOT / Path(path).parent for path in shipped}:
        parts = folder.relative_to(ROOT).parts
        if all(part.isidentifier() for part in parts):
            assert ".".join((PACKAGE, *parts)) in packages, folder
    assert not any(path.startswith(("tests/", "bench/")) for path in shipped)


def _comfyignore_patterns() -> list[str]:
    lines = (ROOT / ".comfyignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    # Anchored paths only (a leading /), so this reading of gitwildmatch is exact for every line here.
    assert all(p.startswith("/") and not any(c in p for c in "*?[!") for p in patterns), patterns
    return patterns


def comfyignored(path: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        target = pattern.lstrip("/")
        if pattern.endswith("/") and path.startswith(target) or fnmatch.fnmatchcase(path, target):
            return True
    return False


def test_comfyignore_keeps_development_files_out_of_the_registry_pack():
    patterns = _comfyignore_patterns()
    for path in ("tests/test_nodes.py", "bench/overhead.py", ".ci/run", "conftest.py"):
        assert comfyignored(path, patterns), path
    assert comfyignored("sandbox/agents/recipes/critic_sft.yaml", patterns)
    kept = [
        "__init__.py",
        "nodes/__init__.py",
        "core/loop.py",
        "web/storyboard.js",
        "web/icon.png",
        "LICENSE",
    ]
    kept += ["requirements.txt", "pyproject.toml", "README.md", "sandbox/agents/planner/model.safetensors"]
    kept += [str(p.relative_to(ROOT)) for p in (ROOT / "workflows").glob("**/*") if p.is_file()]
    for path in kept:
        assert not comfyignored(path, patterns), path


def manager_scan(source: str) -> tuple[set[str], set[str]]:
    """The node ids ComfyUI-Manager's scanner finds in a source file: a module-level assignment of a dict
    literal to NODE_CLASS_MAPPINGS, and its regex over "..._CLASS_MAPPINGS = {...}"."""
    found_by_ast = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "NODE_CLASS_MAPPINGS":
            if isinstance(node.value, ast.Dict):
                found_by_ast = {key.value.strip() for key in node.value.keys if isinstance(key, ast.Constant)}
            break
    found_by_regex = set()
    for body in re.findall(r"_CLASS_MAPPINGS\s*=\s*{([^}]*)}", source, re.MULTILINE | re.DOTALL):
        found_by_regex |= {key.strip() for key, _ in re.findall(r"\"([^\"]*)\"\s*:\s*([^,\n]*)", body)}
    return found_by_ast, found_by_regex


def test_comfyui_manager_reads_the_node_ids_without_importing_the_pack():
    source = (ROOT / "nodes" / "__init__.py").read_text(encoding="utf-8")
    by_ast, by_regex = manager_scan(source)
    assert by_ast == by_regex == set(NODE_CLASS_MAPPINGS)
    titles = next(
        node.value
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign)
        and getattr(node.targets[0], "id", None) == "NODE_DISPLAY_NAME_MAPPINGS"
    )
    assert ast.literal_eval(titles) == NODE_DISPLAY_NAME_MAPPINGS
    assert all(name.startswith("InterleaveThinker") for name in NODE_CLASS_MAPPINGS)  # ids never change


if __name__ == "__main__":  # record the shipped agents' answers (under transformers 5)
    import transformers

    assert int(transformers.__version__.split(".")[0]) >= 5, "record under transformers 5"
    SHIPPED_ANSWERS.write_text(json.dumps(shipped_agents_answers(), indent=1) + "\n", encoding="utf-8")
    print(SHIPPED_ANSWERS.relative_to(ROOT))
