"""The parts every HTML page of the project shares: the page shell, its base style and status badges.

Pages are single files that open from disk in any browser: no scripts, no fonts or styles from elsewhere.
"""

from __future__ import annotations

import html

BASE_CSS = """
body{font:16px/1.55 system-ui,-apple-system,Segoe UI,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;
color:#1d1d1f;background:#fafafa}
h1{font-size:1.5em;line-height:1.3}
.meta{color:#666;font-size:.85em}
.badge{display:inline-block;font-size:.72em;padding:.1em .6em;border-radius:1em;margin-left:.5em;
vertical-align:middle;background:#eee;color:#333}
.accepted,.ok,.done{background:#dcf5e3;color:#14532d}.rejected,.bad,.failed{background:#fde2e1;color:#7f1d1d}
.unchecked,.pending{background:#fef3c7;color:#78350f}
code,pre{font-size:.85em;white-space:pre-wrap;word-break:break-word}
"""

escape = html.escape


def page(title: str, body: str, css: str = "") -> str:
    """A whole HTML document: ``title`` is plain text, ``body`` and ``css`` are markup the caller escaped."""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{BASE_CSS}{css}</style></head><body>\n{body}\n</body></html>"
    )


def badge(status: str, text: str | None = None) -> str:
    """A coloured label: ``status`` picks the colour (accepted, rejected, unchecked, done, failed, ...)."""
    return f'<span class="badge {escape(status)}">{escape(status if text is None else text)}</span>'


__all__ = ["BASE_CSS", "badge", "escape", "page"]
