"""The shipped workflows load in ComfyUI: known node types, consistent links, widget values that fit.

Core ComfyUI nodes are checked against CORE_SPECS, a small hand-kept copy of their input declarations; the
integration tests compare CORE_SPECS with a live server's /object_info, so the copy cannot drift unnoticed.
"""

from __future__ import annotations

import copy
import inspect
import json
import types
from pathlib import Path

import pytest
from PIL import Image

from interleave_thinker import NODE_CLASS_MAPPINGS
from interleave_thinker.nodes import sampling
from interleave_thinker.nodes.types import FALLBACK_SAMPLERS, FALLBACK_SCHEDULERS

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
UI_FILES = sorted(WORKFLOWS.glob("*.json"))
API_FILES = sorted((WORKFLOWS / "api").glob("*.json"))

FILES = "<files>"  # a combo listing files on the user's machine: any file name is plausible
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
# Frontend-only nodes: they never reach the server.
VIRTUAL_NODES = {"MarkdownNote": 1, "Note": 1}

CORE_SPECS = {
    "CheckpointLoaderSimple": ({"required": {"ckpt_name": (FILES, {})}}, ("MODEL", "CLIP", "VAE")),
    "UNETLoader": (
        {
            "required": {
                "unet_name": (FILES, {}),
                "weight_dtype": (["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"], {}),
            }
        },
        ("MODEL",),
    ),
    "CLIPLoader": (
        {
            "required": {
                "clip_name": (FILES, {}),
                "type": (
                    [
                        "stable_diffusion",
                        "stable_cascade",
                        "sd3",
                        "stable_audio",
                        "mochi",
                        "ltxv",
                        "pixart",
                        "cosmos",
                        "lumina2",
                        "wan",
                        "hidream",
                        "chroma",
                        "ace",
                        "omnigen2",
                        "qwen_image",
                        "hunyuan_image",
                    ],
                    {},
                ),
            },
            "optional": {"device": (["default", "cpu"], {})},
        },
        ("CLIP",),
    ),
    "DualCLIPLoader": (
        {
            "required": {
                "clip_name1": (FILES, {}),
                "clip_name2": (FILES, {}),
                "type": (["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image"], {}),
            },
            "optional": {"device": (["default", "cpu"], {})},
        },
        ("CLIP",),
    ),
    "VAELoader": ({"required": {"vae_name": (FILES, {})}}, ("VAE",)),
    "ModelSamplingAuraFlow": (
        {
            "required": {
                "model": ("MODEL", {}),
                "shift": ("FLOAT", {"default": 1.73, "min": 0.0, "max": 100.0, "step": 0.01}),
            }
        },
        ("MODEL",),
    ),
    "LoadImage": ({"required": {"image": (FILES, {"image_upload": True})}}, ("IMAGE", "MASK")),
    "ImageBatch": ({"required": {"image1": ("IMAGE", {}), "image2": ("IMAGE", {})}}, ("IMAGE",)),
    "CLIPTextEncode": (
        {"required": {"text": ("STRING", {"multiline": True, "dynamicPrompts": True}), "clip": ("CLIP", {})}},
        ("CONDITIONING",),
    ),
    "EmptyLatentImage": (
        {
            "required": {
                "width": ("INT", {"default": 512, "min": 16, "max": 16384, "step": 8}),
                "height": ("INT", {"default": 512, "min": 16, "max": 16384, "step": 8}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
            }
        },
        ("LATENT",),
    ),
    "KSampler": (
        {
            "required": {
                "model": ("MODEL", {}),
                "seed": (
                    "INT",
                    {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True},
                ),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
                "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
                "sampler_name": (list(FALLBACK_SAMPLERS), {}),
                "scheduler": (list(FALLBACK_SCHEDULERS), {}),
                "positive": ("CONDITIONING", {}),
                "negative": ("CONDITIONING", {}),
                "latent_image": ("LATENT", {}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            }
        },
        ("LATENT",),
    ),
    "VAEDecode": ({"required": {"samples": ("LATENT", {}), "vae": ("VAE", {})}}, ("IMAGE",)),
    "VAEEncode": ({"required": {"pixels": ("IMAGE", {}), "vae": ("VAE", {})}}, ("LATENT",)),
    "EmptyImage": (
        {
            "required": {
                "width": ("INT", {"default": 512, "min": 1, "max": 16384, "step": 1}),
                "height": ("INT", {"default": 512, "min": 1, "max": 16384, "step": 1}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
                "color": ("INT", {"default": 0, "min": 0, "max": 16777215, "step": 1, "display": "color"}),
            }
        },
        ("IMAGE",),
    ),
    "PreviewImage": ({"required": {"images": ("IMAGE", {})}}, ()),
    "SaveImage": (
        {"required": {"images": ("IMAGE", {}), "filename_prefix": ("STRING", {"default": "ComfyUI"})}},
        (),
    ),
    "PreviewAny": ({"required": {"source": ("*", {})}}, ()),
    "PrimitiveStringMultiline": ({"required": {"value": ("STRING", {"multiline": True})}}, ("STRING",)),
    "RegexReplace": (
        {
            "required": {
                "string": ("STRING", {"multiline": True}),
                "regex_pattern": ("STRING", {"multiline": True}),
                "replace": ("STRING", {"multiline": True}),
            },
            "optional": {
                "case_insensitive": ("BOOLEAN", {"default": True}),
                "multiline": ("BOOLEAN", {"default": False}),
                "dotall": ("BOOLEAN", {"default": False}),
                "count": ("INT", {"default": 0, "min": 0, "max": 100}),
            },
        },
        ("STRING",),
    ),
}


# Combo choices newer than the ComfyUI that CORE_SPECS mirrors (v0.3.64), with the ComfyUI version that offers
# them (ComfyUI's own FLUX.2 [klein] templates are saved with 0.8.2). A workflow may use one only when its
# extra.info says it needs that ComfyUI ("requires_comfyui"); it says so in its note and description too.
LATER_CHOICES = {("CLIPLoader", "type"): {"flux2": sampling.FLUX2_COMFYUI}}


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


# ---------------------------------------------------------------------------------------------------------
# Node definitions in one shape, from our classes, CORE_SPECS or a live /object_info


class NodeSpec:
    def __init__(
        self,
        inputs: list[tuple[str, object, dict]],
        outputs: tuple,
        output_is_list=(),
        no_combo_check=(),
        required=(),
    ):
        self.inputs = inputs  # (name, type or combo list or FILES, options), required then optional
        self.required = set(required)
        self.outputs = tuple(outputs)
        self.output_is_list = tuple(output_is_list) or (False,) * len(self.outputs)
        self.no_combo_check = set(no_combo_check)  # inputs the node validates itself (VALIDATE_INPUTS)

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.inputs]

    def widgets(self) -> list[tuple[str, object, dict]]:
        return [entry for entry in self.inputs if is_widget(entry[1], entry[2])]

    def input(self, name):
        return next(entry for entry in self.inputs if entry[0] == name)


def is_widget(kind, options) -> bool:
    if options.get("forceInput"):
        return False
    return kind == FILES or isinstance(kind, list) or kind in WIDGET_TYPES or kind == "COMBO"


def spec_from_declaration(declaration: dict, outputs, output_is_list=(), no_combo_check=(), order=None):
    inputs = []
    for section in ("required", "optional"):
        entries = declaration.get(section, {})
        names = (order or {}).get(section, list(entries))
        for name in names:
            value = entries[name]
            kind = value[0]
            options = dict(value[1]) if len(value) > 1 else {}
            if kind == "COMBO":  # the newer object_info spelling of a combo
                kind = list(options.get("options", []))
            inputs.append((name, kind, options))
    return NodeSpec(inputs, outputs, output_is_list, no_combo_check, required=declaration.get("required", {}))


def our_specs() -> dict[str, NodeSpec]:
    specs = {}
    for name, cls in NODE_CLASS_MAPPINGS.items():
        validate = getattr(cls, "VALIDATE_INPUTS", None)
        skipped = inspect.signature(validate).parameters if validate else ()
        specs[name] = spec_from_declaration(
            cls.INPUT_TYPES(), cls.RETURN_TYPES, getattr(cls, "OUTPUT_IS_LIST", ()), no_combo_check=skipped
        )
    return specs


def core_specs() -> dict[str, NodeSpec]:
    return {
        name: spec_from_declaration(declaration, outputs)
        for name, (declaration, outputs) in CORE_SPECS.items()
    }


def known_specs() -> dict[str, NodeSpec]:
    return {**core_specs(), **our_specs()}


def required_comfyui(path: Path) -> str | None:
    """The newer ComfyUI a shipped workflow says it needs (UI and API copies share the UI file's word)."""
    return load(WORKFLOWS / path.name)["extra"]["info"].get("requires_comfyui")


def specs_for(version: str | None, specs: dict[str, NodeSpec] | None = None) -> dict[str, NodeSpec]:
    """``specs`` (default: ours and CORE_SPECS) with the later combo choices a ComfyUI ``version`` offers."""
    specs = copy.deepcopy(specs if specs is not None else known_specs())
    for (node, input_name), choices in LATER_CHOICES.items():
        added = [
            c for c, since in choices.items() if version and version_tuple(since) <= version_tuple(version)
        ]
        if node in specs and added:
            specs[node].inputs = [
                (name, kind + [c for c in added if c not in kind] if name == input_name else kind, options)
                for name, kind, options in specs[node].inputs
            ]
    return specs


# ---------------------------------------------------------------------------------------------------------
# Checks (they return a list of problems, so one test reports all of them)


def value_problems(where: str, name: str, kind, options: dict, value, spec: NodeSpec) -> list[str]:
    if kind == FILES:
        return (
            [] if isinstance(value, str) and value else [f"{where}: {name} needs a file name, got {value!r}"]
        )
    if isinstance(kind, list):
        if name in spec.no_combo_check:
            return [] if isinstance(value, str) else [f"{where}: {name} must be text, got {value!r}"]
        return [] if value in kind else [f"{where}: {name}={value!r} is not one of {kind[:8]}..."]
    if kind == "INT":
        if not isinstance(value, int) or isinstance(value, bool):
            return [f"{where}: {name} must be an integer, got {value!r}"]
    elif kind == "FLOAT":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return [f"{where}: {name} must be a number, got {value!r}"]
    elif kind == "STRING":
        return [] if isinstance(value, str) else [f"{where}: {name} must be text, got {value!r}"]
    elif kind == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"{where}: {name} must be true or false, got {value!r}"]
    if "min" in options and value < options["min"] or "max" in options and value > options["max"]:
        return [f"{where}: {name}={value} is outside [{options.get('min')}, {options.get('max')}]"]
    return []


def types_match(output_type: str, input_type) -> bool:
    if isinstance(input_type, list) or input_type == FILES:
        input_type = "COMBO"
    return output_type == input_type or "*" in (output_type, input_type)


def check_ui(workflow: dict, specs: dict[str, NodeSpec]) -> list[str]:
    problems = []
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}
    if workflow.get("version") != 0.4:
        problems.append(f"version {workflow.get('version')!r}, expected 0.4")
    if workflow["last_node_id"] < max(nodes) or workflow["last_link_id"] < max(links, default=0):
        problems.append("last_node_id / last_link_id lower than ids in use")
    for node in workflow["nodes"]:
        where = f"node {node['id']} ({node['type']})"
        if node["type"] in VIRTUAL_NODES:
            if len(node.get("widgets_values", [])) != VIRTUAL_NODES[node["type"]]:
                problems.append(f"{where}: a note holds one text")
            continue
        spec = specs.get(node["type"])
        if spec is None:
            problems.append(f"{where}: unknown node type")
            continue
        socket_names = [name for name, kind, options in spec.inputs if not is_widget(kind, options)]
        listed = [entry["name"] for entry in node.get("inputs", [])]
        for name in listed:
            if name not in spec.names:
                problems.append(f"{where}: no input named {name!r}")
        for name in socket_names:
            # The frontend adds an optional socket a node gained since the workflow was saved (at the end of
            # its inputs) and the prompt runs without it; a required one would be missing at run time.
            if name not in listed and name in spec.required:
                problems.append(f"{where}: input socket {name!r} missing")
        for slot, entry in enumerate(node.get("inputs", [])):
            if entry.get("link") is None or entry["name"] not in spec.names:
                continue
            link = links.get(entry["link"])
            if link is None:
                problems.append(f"{where}: input {entry['name']} points at missing link {entry['link']}")
                continue
            _, origin, origin_slot, target, target_slot, link_type = link
            _, kind, _ = spec.input(entry["name"])
            if (target, target_slot) != (node["id"], slot):
                problems.append(f"{where}: link {link[0]} does not end at input {entry['name']}")
            if not types_match(link_type, kind):
                problems.append(
                    f"{where}: {entry['name']} takes {kind if isinstance(kind, str) else 'COMBO'}, "
                    f"link {link[0]} carries {link_type}"
                )
        outputs = node.get("outputs", [])
        if [o["type"] for o in outputs] != list(spec.outputs):
            problems.append(f"{where}: outputs {[o['type'] for o in outputs]} != {list(spec.outputs)}")
        for slot, output in enumerate(outputs):
            for link_id in output.get("links") or []:
                link = links.get(link_id)
                if link is None or (link[1], link[2]) != (node["id"], slot) or link[5] != output["type"]:
                    problems.append(
                        f"{where}: output {output['name']} lists link {link_id} that does not start there"
                    )
        problems += check_widget_values(where, spec, node.get("widgets_values", []))
    for link_id, origin, origin_slot, target, target_slot, _link_type in workflow["links"]:
        if origin not in nodes or target not in nodes:
            problems.append(f"link {link_id} joins missing nodes")
            continue
        entry = (
            nodes[target]["inputs"][target_slot] if target_slot < len(nodes[target].get("inputs", [])) else {}
        )
        if entry.get("link") != link_id:
            problems.append(f"link {link_id} is not recorded on node {target}'s input {target_slot}")
        output = nodes[origin]["outputs"][origin_slot] if origin_slot < len(nodes[origin]["outputs"]) else {}
        if link_id not in (output.get("links") or []):
            problems.append(f"link {link_id} is not recorded on node {origin}'s output {origin_slot}")
    return problems


def widget_width(options: dict) -> int:
    """How many entries one widget takes in widgets_values (its value, a seed's control, an upload button)."""
    return 1 + bool(options.get("control_after_generate")) + bool(options.get("image_upload"))


def ui_widget_values(spec: NodeSpec, values: list) -> dict:
    """Widget values by input name, skipping the frontend's extra entries (seed control, upload button).
    Widgets past the end of ``values`` (optional ones added after the workflow was saved) are left out."""
    named, position = {}, 0
    for name, _kind, options in spec.widgets():
        if position < len(values):
            named[name] = values[position]
        position += widget_width(options)
    return named


def check_widget_values(where: str, spec: NodeSpec, values: list) -> list[str]:
    # A workflow saved before an optional widget was added stops before it; the frontend fills its default.
    ends, position = set(), 0
    for name, _kind, options in spec.widgets():
        if name not in spec.required:
            ends.add(position)
        position += widget_width(options)
    if len(values) not in ends | {position}:
        return [f"{where}: {len(values)} widget values, the node has {position}"]
    problems = []
    position = 0
    for name, kind, options in spec.widgets():
        if position >= len(values):
            break
        problems += value_problems(where, name, kind, options, values[position], spec)
        if options.get("control_after_generate") and values[position + 1] not in (
            "fixed",
            "increment",
            "decrement",
            "randomize",
        ):
            problems.append(f"{where}: {name}'s control value {values[position + 1]!r} is not a known mode")
        position += widget_width(options)
    return problems


def check_api(graph: dict, specs: dict[str, NodeSpec]) -> list[str]:
    problems = []
    for node_id, node in graph.items():
        where = f"node {node_id} ({node.get('class_type')})"
        spec = specs.get(node.get("class_type"))
        if spec is None:
            problems.append(f"{where}: unknown node type")
            continue
        inputs = node.get("inputs", {})
        for name in inputs:
            if name not in spec.names:
                problems.append(f"{where}: no input named {name!r}")
        for name, kind, options in spec.inputs:
            if name not in inputs:
                if name in spec.required:
                    problems.append(f"{where}: required input {name!r} missing")
                continue
            value = inputs[name]
            if isinstance(value, list):
                if len(value) != 2 or str(value[0]) not in graph:
                    problems.append(f"{where}: {name} links to a missing node {value!r}")
                    continue
                source = graph[str(value[0])]
                source_spec = specs.get(source["class_type"])
                if source_spec is None or not 0 <= value[1] < len(source_spec.outputs):
                    problems.append(f"{where}: {name} links to a missing output {value!r}")
                elif not types_match(source_spec.outputs[value[1]], kind):
                    problems.append(
                        f"{where}: {name} gets {source_spec.outputs[value[1]]} from node {value[0]}"
                    )
            elif not is_widget(kind, options):
                problems.append(f"{where}: {name} must be linked, got the value {value!r}")
            else:
                problems += value_problems(where, name, kind, options, value, spec)
    return problems


def ui_to_api_inputs(node: dict, spec: NodeSpec, workflow: dict) -> dict:
    """What the frontend would send for a UI node: widget values by name, links as [node id, slot]."""
    links = {link[0]: link for link in workflow["links"]}
    inputs = {name: value for name, value in ui_widget_values(spec, node["widgets_values"]).items()}
    for entry in node.get("inputs", []):
        if entry.get("link") is not None:
            link = links[entry["link"]]
            inputs[entry["name"]] = [str(link[1]), link[2]]
    return inputs


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------------------


def test_the_template_browser_finds_the_workflows():
    # ComfyUI lists *.json directly inside <pack>/workflows; the API copies live one folder down.
    assert len(UI_FILES) >= 6
    assert {path.name for path in UI_FILES} == {path.name for path in API_FILES}


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_every_workflow_has_a_thumbnail_and_a_one_line_description(path):
    # The frontend (1.27, ComfyUI v0.3.64) shows /api/workflow_templates/<pack>/<name>.jpg as a custom-node
    # template's picture and the file name as its text: the picture carries the title and the description.
    info = load(path)["extra"]["info"]
    description = info.get("description", "")
    assert info["name"] and 20 <= len(description) <= 100 and "\n" not in description, description
    thumbnail = path.with_suffix(".jpg")
    assert thumbnail.is_file(), f"no thumbnail: python tests/make_artwork.py writes {thumbnail.name}"
    with Image.open(thumbnail) as image:
        assert image.format == "JPEG" and image.size == (512, 512)
        grey = image.convert("L")
        assert max(grey.getextrema()) - min(grey.getextrema()) > 128  # a picture, not a grey placeholder
    # The README's table of workflows says the same.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"| `{path.name}` | {description} |" in readme


def test_the_icon_is_what_the_registry_accepts():
    with Image.open(ROOT / "web" / "icon.png") as icon:
        assert icon.format == "PNG" and icon.width <= 800 and icon.height <= 400


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_workflow_matches_the_node_definitions(path):
    assert check_ui(load(path), specs_for(required_comfyui(path))) == []


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.stem)
def test_api_workflow_matches_the_node_definitions(path):
    assert check_api(load(path), specs_for(required_comfyui(path))) == []


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_api_copy_is_the_same_graph(path):
    specs = specs_for(required_comfyui(path))
    ui, api = load(path), load(WORKFLOWS / "api" / path.name)
    real = [node for node in ui["nodes"] if node["type"] not in VIRTUAL_NODES]
    assert {str(node["id"]): node["type"] for node in real} == {k: v["class_type"] for k, v in api.items()}
    for node in real:
        assert ui_to_api_inputs(node, specs[node["type"]], ui) == api[str(node["id"])]["inputs"], node["id"]


def _nodes_of(name: str, class_type: str) -> list[dict]:
    graph = load(WORKFLOWS / "api" / name)
    return [node["inputs"] for node in graph.values() if node["class_type"] == class_type]


def test_the_promised_workflows_are_there():
    loop = "InterleaveThinkerRefineLoop"
    assert [n["edit_route"] for n in _nodes_of("story_sd15_img2img.json", loop)] == ["img2img"]
    assert _nodes_of("story_sd15_img2img.json", "CheckpointLoaderSimple")
    assert [n["edit_route"] for n in _nodes_of("story_flux_kontext_reference.json", loop)] == ["reference"]
    assert [n["type"] for n in _nodes_of("story_flux_kontext_reference.json", "DualCLIPLoader")] == ["flux"]
    assert [n["edit_route"] for n in _nodes_of("story_qwen_image_edit.json", loop)] == ["reference"]
    assert [n["type"] for n in _nodes_of("story_qwen_image_edit.json", "CLIPLoader")] == ["qwen_image"]
    hand = "plan_to_prompts_hand_built.json"
    for class_type in ("InterleaveThinkerPlanToPrompts", "KSampler", "InterleaveThinkerCritic"):
        assert _nodes_of(hand, class_type), class_type
    assert not _nodes_of(hand, loop)
    assert _nodes_of("batch_story_list.json", "InterleaveThinkerStoryList")
    planner = _nodes_of("batch_story_list.json", "InterleaveThinkerPlanner")[0]
    assert isinstance(planner["instruction"], list)  # fed by the Story List
    cast = "story_flux2_klein_cast.json"
    assert [(n["edit_route"], n["anchor"]) for n in _nodes_of(cast, loop)] == [("reference", "first")]
    assert [n["type"] for n in _nodes_of(cast, "CLIPLoader")] == ["flux2"]


def test_the_flux2_klein_workflow_uses_comfyuis_own_file_names_and_edits_by_reference():
    klein = "story_flux2_klein_reference.json"
    # The files ComfyUI's FLUX.2 [klein] 4B templates load (klein 4B is Apache-2.0).
    assert _nodes_of(klein, "UNETLoader") == [
        {"unet_name": "flux-2-klein-4b-fp8.safetensors", "weight_dtype": "default"}
    ]
    assert _nodes_of(klein, "CLIPLoader") == [
        {"clip_name": "qwen_3_4b.safetensors", "type": "flux2", "device": "default"}
    ]
    assert _nodes_of(klein, "VAELoader") == [{"vae_name": "flux2-vae.safetensors"}]
    loop = _nodes_of(klein, "InterleaveThinkerRefineLoop")[0]
    assert (loop["edit_route"], loop["steps"], loop["cfg"]) == ("reference", 4, 1.0)  # distilled: 4 steps
    # Left on "auto", the loop routes FLUX.2 by reference latent too: stand-ins named like ComfyUI's classes
    # (model_base.Flux2 derives from Flux; supported_models.Flux2 configures dev and klein alike).
    flux = type("Flux", (type("BaseModel", (), {}),), {})
    for config in ("Flux2", "Flux2Klein"):
        model = type("Flux2", (flux,), {})()
        model.model_config = type(config, (), {})()
        assert sampling.resolve_route(types.SimpleNamespace(model=model), "auto") == "reference", config


def test_the_cast_workflow_gives_two_pictures_of_yours_to_every_step_anchored():
    name = "story_flux2_klein_cast.json"
    graph = load(WORKFLOWS / "api" / name)
    # The klein workflow's loaders and files, unchanged.
    klein = "story_flux2_klein_reference.json"
    for class_type in ("UNETLoader", "CLIPLoader", "VAELoader"):
        assert _nodes_of(name, class_type) == _nodes_of(klein, class_type), class_type
    # Two Load Image nodes -> Batch Images -> the Refine Loop's references; anchored on the first picture.
    (loop_id,) = [key for key, node in graph.items() if node["class_type"] == "InterleaveThinkerRefineLoop"]
    loop = graph[loop_id]["inputs"]
    assert (loop["edit_route"], loop["anchor"], loop["steps"], loop["cfg"]) == ("reference", "first", 4, 1.0)
    batch_id, slot = loop["references"]
    batch = graph[batch_id]
    assert batch["class_type"] == "ImageBatch" and slot == 0
    sources = [graph[batch["inputs"][socket][0]] for socket in ("image1", "image2")]
    assert [(s["class_type"], s["inputs"]["image"]) for s in sources] == [
        ("LoadImage", "character_1.png"),
        ("LoadImage", "character_2.png"),
    ]
    assert [batch["inputs"][socket][1] for socket in ("image1", "image2")] == [0, 0]  # IMAGE, not MASK
    assert len(_nodes_of(name, "LoadImage")) == 2
    # The placeholders say they are placeholders: in the description and in a note on the canvas.
    workflow = load(WORKFLOWS / name)
    assert "your own" in workflow["extra"]["info"]["description"].lower()
    notes = [node["widgets_values"][0] for node in workflow["nodes"] if node["type"] in VIRTUAL_NODES]
    assert any(
        "character_1.png" in note and "character_2.png" in note and "`input` folder" in note for note in notes
    )
    # Planner, loop and save keep the ids the story workflows share (the integration tests use them).
    assert {"10", "20", "30"} <= set(graph)


def test_a_workflow_that_needs_a_newer_comfyui_says_so_where_it_loads():
    for path in UI_FILES:
        workflow, graph = load(path), load(WORKFLOWS / "api" / path.name)
        used = {
            (node["class_type"], name, value)
            for node in graph.values()
            for name, value in node["inputs"].items()
            if (node["class_type"], name) in LATER_CHOICES
            and value in LATER_CHOICES[node["class_type"], name]
        }
        needed = max((LATER_CHOICES[c, n][v] for c, n, v in used), key=version_tuple, default=None)
        declared = workflow["extra"]["info"].get("requires_comfyui")
        assert declared == needed, path.name
        if needed is None:
            continue
        # On load the note says it; an older ComfyUI's only other word is the loader's "not in list" error.
        notes = [node["widgets_values"][0] for node in workflow["nodes"] if node["type"] == "MarkdownNote"]
        assert any(f"Needs ComfyUI {needed} or newer" in note for note in notes), path.name
        assert f"ComfyUI {needed}+" in workflow["extra"]["info"]["description"], path.name
        for node_type, _, _ in used:
            titled = [node for node in workflow["nodes"] if node["type"] == node_type]
            assert all(f"ComfyUI {needed}+" in node.get("title", "") for node in titled), node_type
        # Without the newer choices the workflow does not check out: the pin above is not decoration.
        assert any("is not one of" in problem for problem in check_api(graph, known_specs()))


def test_the_checker_catches_broken_workflows():
    specs = known_specs()
    workflow = load(WORKFLOWS / "story_sd15_img2img.json")
    loop = next(node for node in workflow["nodes"] if node["type"] == "InterleaveThinkerRefineLoop")
    loop["widgets_values"][loop["widgets_values"].index("img2img")] = "sideways"
    workflow["links"][0][5] = "LATENT"
    workflow["nodes"].append(
        {"id": 999, "type": "NoSuchNode", "inputs": [], "outputs": [], "widgets_values": []}
    )
    problems = "\n".join(check_ui(workflow, specs))
    assert "edit_route='sideways'" in problems
    assert "carries LATENT" in problems or "does not start there" in problems
    assert "node 999 (NoSuchNode): unknown node type" in problems

    graph = load(WORKFLOWS / "api" / "story_sd15_img2img.json")
    graph["20"]["inputs"]["steps"] = 0
    graph["20"]["inputs"]["model"] = ["1", 0]  # an AGENT where a MODEL belongs
    del graph["30"]["inputs"]["filename_prefix"]
    problems = "\n".join(check_api(graph, specs))
    assert "steps=0 is outside" in problems
    assert "model gets AGENT" in problems
    assert "required input 'filename_prefix' missing" in problems
