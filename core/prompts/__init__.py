"""The Planner and Critic prompt templates.

Templates are plain text files with named placeholders in braces. Only the placeholders below are substituted,
in one pass, so a user's text that happens to contain braces or another placeholder name is left alone.
Users can point to their own template file; it must carry the placeholders of its role.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInput

HERE = Path(__file__).resolve().parent

ROLES = {
    "narrative": ("planner_narrative.txt", ("text_input",)),
    "guidance": ("planner_guidance.txt", ("text_input",)),
    "critic": ("critic.txt", ("original_instruction", "rewritten_prompt")),
}
_PLACEHOLDER_RE = re.compile(r"\{(text_input|original_instruction|rewritten_prompt)\}")


class TemplateError(BadInput):
    pass


@dataclass(frozen=True)
class Template:
    role: str
    text: str
    source: str

    def render(self, **values: str) -> str:
        missing = [name for name in ROLES[self.role][1] if name not in values]
        if missing:
            raise TemplateError(f"{self.role} template needs values for {', '.join(missing)}")
        return _PLACEHOLDER_RE.sub(lambda m: str(values.get(m.group(1), m.group(0))), self.text)

    def split(self, placeholder: str) -> tuple[str, str]:
        """The text before and after ``{placeholder}`` (the first occurrence), other placeholders
        untouched."""
        head, _, tail = self.text.partition("{" + placeholder + "}")
        return head, tail


def load_template(role: str, path: str | Path | None = None) -> Template:
    """The built-in template of ``role`` ("narrative", "guidance" or "critic"), or the user's file at
    ``path``."""
    if role not in ROLES:
        raise TemplateError(f"unknown template role {role!r}; choose one of {', '.join(ROLES)}")
    filename, required = ROLES[role]
    source = Path(path) if path else HERE / filename
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TemplateError(f"template file not found: {source}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise TemplateError(f"cannot read template file {source}: {error}") from None
    missing = [name for name in required if "{" + name + "}" not in text]
    if missing:
        raise TemplateError(
            f"{role} template {source} lacks the placeholder(s) "
            + ", ".join("{" + name + "}" for name in missing)
        )
    return Template(role=role, text=text, source=str(source))


__all__ = ["ROLES", "Template", "TemplateError", "load_template"]
