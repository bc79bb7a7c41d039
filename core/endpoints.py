"""Which endpoints an agent may call and which environment variables may hold its key: the machine's choice.

A workflow graph, a stories file or a storyboard is input from a stranger, so none of them may pick where a
request goes or which secret travels with it. Allowed by default: loopback only (``127.0.0.0/8``, ``::1`` and
the name ``localhost``, which is never looked up) and the key variable :data:`DEFAULT_KEY_ENV`. The person who
owns the machine allows more in the environment variables :data:`ENDPOINTS_ENV` and :data:`KEY_ENVS_ENV`
(entries separated by commas or spaces) and/or in a JSON file whose path the caller passes::

    {"endpoints": ["https://api.example.com/v1", "192.168.1.20:8000"], "api_key_env": ["EXAMPLE_API_KEY"]}

An endpoint entry is a host (any port, http or https), ``host:port``, or a base URL (that scheme, host and
port, and paths under it). Code acting for the person typing a command (the CLI's own flags) adds what it
trusts with :meth:`EndpointPolicy.allow`.

Every check is on the text of the URL; nothing here touches the network. A host is matched as written after
one canonical spelling (lower case, no trailing dot, IP addresses in their standard form), and the agent
connects to exactly that spelling, so the host checked is the host called.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from .errors import BadInput

ENDPOINTS_ENV = "INTERLEAVE_THINKER_ALLOWED_ENDPOINTS"
KEY_ENVS_ENV = "INTERLEAVE_THINKER_ALLOWED_KEY_ENV"
DEFAULT_KEY_ENV = "INTERLEAVE_THINKER_API_KEY"
# The file's name; the ComfyUI nodes keep it in ComfyUI's user directory.
CONFIG_FILE_NAME = "interleave_thinker_endpoints.json"
CONFIG_KEYS = ("endpoints", "api_key_env")
LOCALHOST = "localhost"
# Where ``localhost`` is reached: literal addresses, so no resolver (hosts file, DNS) has a say.
LOCALHOST_ADDRESSES = ("127.0.0.1", "::1")
DEFAULT_PORTS = {"http": 80, "https": 443}

_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Names by convention (upper case) are shown in messages; anything else may be a pasted key, so it is not.
_SHOWN_VARIABLE = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")
_NETLOC = re.compile(r"(?P<host>\[[0-9A-Za-z:.]+\]|[A-Za-z0-9._-]+)(?::(?P<port>[0-9]{1,5}))?")
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
# RFC 3986 path characters; anything else (spaces, quotes, control characters) could split the request line.
_PATH = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*")


class EndpointPolicyError(BadInput):
    """An endpoint or key variable this machine does not allow, a malformed allow-list entry, or an allowed
    key variable that is not set. A refusal says how to allow on purpose; no message holds a secret (no key,
    no password from a URL).
    """


def _how_to_allow(kind: str, entry: str, config_file: Path | None) -> str:
    variable, key = (ENDPOINTS_ENV, "endpoints") if kind == "endpoint" else (KEY_ENVS_ENV, "api_key_env")
    where = f"the file {config_file}" if config_file else f"the file {CONFIG_FILE_NAME}"
    return (
        f"To allow it on purpose, add {entry} to the environment variable {variable} (comma-separated) "
        f'or to "{key}" in {where}.'
    )


# ---------------------------------------------------------------------------------------------------------
# URLs


@dataclass(frozen=True)
class Endpoint:
    """A checked base URL, canonically spelled. ``host`` is what the agent connects to and sends as Host."""

    scheme: str
    host: str  # lower case, no trailing dot; IPv6 without brackets
    port: int
    path: str  # "" or "/v1"-like, no trailing slash

    @property
    def loopback(self) -> bool:
        return is_loopback_host(self.host)

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.path}"

    def connect_hosts(self) -> tuple[str, ...]:
        """The addresses to try in order: ``localhost`` is the loopback literals, other hosts themselves."""
        return LOCALHOST_ADDRESSES if self.host == LOCALHOST else (self.host,)

    def __str__(self) -> str:
        return self.url


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_loopback_host(host: str) -> bool:
    """True for a canonical host (see :func:`parse_endpoint`) that can only be this machine."""
    if host == LOCALHOST:
        return True
    address = _ip(host)
    if address is None:
        return False
    return address.is_loopback


def _canonical_host(raw: str) -> str:
    """Lower case, one trailing dot dropped, IP literals in standard form; ambiguous spellings refused."""
    if raw.startswith("["):
        inner = raw[1:-1]
        address = _ip(inner)
        if not isinstance(address, ipaddress.IPv6Address):
            raise ValueError(f"[{inner}] is not an IPv6 address")
        # ::ffff:a.b.c.d is the IPv4 address a.b.c.d: one spelling, and a connection that works everywhere.
        return str(address.ipv4_mapped or address)
    host = raw.lower()
    if host.endswith("."):
        host = host[:-1]
    if not host or len(host) > 253:
        raise ValueError("the host name is empty or too long")
    labels = host.split(".")
    # A numeric last label makes the whole name an IPv4 address to resolvers, which also read shorthand
    # (127.1), octal (0177.0.0.1) and hex (0x7f000001); only the plain four-number form means one thing.
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        address = _ip(host)
        if not isinstance(address, ipaddress.IPv4Address):
            raise ValueError(
                f"{host} is not a plain IPv4 address; write all four decimal numbers without leading zeros, "
                "e.g. 127.0.0.1"
            )
        return str(address)
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{host} is not a valid host name")
    return host


def _safe(text: str, limit: int = 120) -> str:
    """Text for a message: printable ASCII only, bounded."""
    cleaned = "".join(c if " " < c < "\x7f" else "?" for c in str(text))
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + "..."


def _split_netloc(netloc: str, what: str) -> tuple[str, int | None]:
    if "@" in netloc:
        raise EndpointPolicyError(
            f"{what} holds a user name or password (not shown): credentials never go in a URL, and text "
            "before an @ can disguise the real host. Put the key in an allowed environment variable instead."
        )
    if not netloc:
        raise EndpointPolicyError(f"{what} has no host")
    match = _NETLOC.fullmatch(netloc)
    if not match:
        raise EndpointPolicyError(f"{what}: {_safe(netloc)!r} is not a plain host or host:port")
    try:
        host = _canonical_host(match["host"])
    except ValueError as error:
        raise EndpointPolicyError(f"{what}: {error}") from None
    port = match["port"]
    if port is not None and not 1 <= int(port) <= 65535:
        raise EndpointPolicyError(f"{what}: port {port} is out of range (1-65535)")
    return host, None if port is None else int(port)


def _path_segments(path: str) -> tuple[str, ...]:
    return tuple(segment for segment in path.split("/") if segment)


def parse_endpoint(url: str, what: str = "endpoint URL") -> Endpoint:
    """A base URL as an :class:`Endpoint`, or :class:`EndpointPolicyError` saying what is wrong with it.

    Only ``http`` and ``https``; no credentials, query or fragment; no ``.`` or ``..`` path segments;
    printable ASCII only (parsers disagree about the rest, and a host that one parser sees is not always the
    one another connects to).
    """
    text = str(url).strip()
    if not text:
        raise EndpointPolicyError(f"{what} is empty; give a base URL such as http://127.0.0.1:8000/v1")
    if any(not " " < c < "\x7f" for c in text) or "\\" in text:
        raise EndpointPolicyError(
            f"{what} contains spaces, control characters, backslashes or non-ASCII characters; write it as "
            "plain ASCII (non-ASCII host names in their xn-- form), e.g. http://127.0.0.1:8000/v1"
        )
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in DEFAULT_PORTS:
        raise EndpointPolicyError(
            f"{what} must start with http:// or https:// (other schemes are refused), e.g. http://127.0.0.1:8000/v1"
        )
    netloc, path, tail = re.fullmatch(r"([^/?#]*)([^?#]*)(.*)", rest).groups()
    host, port = _split_netloc(netloc, what)
    if tail:
        raise EndpointPolicyError(f"{what} must be a base URL without ?query or #fragment")
    if not _PATH.fullmatch(path):
        raise EndpointPolicyError(f"{what}: the path {_safe(path)!r} has characters a URL path cannot hold")
    segments = _path_segments(path)
    if any(unquote(segment) in (".", "..") for segment in segments):
        raise EndpointPolicyError(f"{what}: '.' and '..' path segments are refused; write the path out")
    return Endpoint(
        scheme=scheme,
        host=host,
        port=DEFAULT_PORTS[scheme] if port is None else port,
        path="".join("/" + segment for segment in segments),
    )


@dataclass(frozen=True)
class _Rule:
    """One entry: a host (any scheme or port), host:port, or a base URL (scheme, host, port, path)."""

    host: str
    port: int | None = None
    scheme: str | None = None
    path: tuple[str, ...] = ()

    @classmethod
    def parse(cls, entry: str, source: str) -> _Rule:
        entry = entry.strip()
        what = f"{source}: entry {_safe(entry)!r}" if "@" not in entry else f"{source}: an entry"
        if "://" in entry:
            endpoint = parse_endpoint(entry, what)
            return cls(endpoint.host, endpoint.port, endpoint.scheme, _path_segments(endpoint.path))
        host, port = _split_netloc(entry.rstrip("/"), what)
        return cls(host, port)

    def matches(self, endpoint: Endpoint) -> bool:
        return (
            endpoint.host == self.host
            and self.port in (None, endpoint.port)
            and self.scheme in (None, endpoint.scheme)
            and _path_segments(endpoint.path)[: len(self.path)] == self.path
        )


# ---------------------------------------------------------------------------------------------------------
# the policy


def _entries(text: str) -> list[str]:
    return [entry for entry in re.split(r"[\s,]+", text) if entry]


def _key_env(name: str, source: str) -> str:
    name = name.strip()
    if not _VARIABLE.fullmatch(name):
        shown = f" {name!r}" if _SHOWN_VARIABLE.fullmatch(name) else " (not shown)"
        raise EndpointPolicyError(
            f"{source}: entry{shown} is not an environment variable name (letters, digits and _)"
        )
    return name


@dataclass(frozen=True)
class EndpointPolicy:
    """The endpoints and API-key variables one caller may use. Loopback and :data:`DEFAULT_KEY_ENV` always."""

    rules: tuple[_Rule, ...] = ()
    key_envs: frozenset[str] = frozenset({DEFAULT_KEY_ENV})
    config_file: Path | None = field(default=None, compare=False)

    @classmethod
    def machine(
        cls, config_file: str | Path | None = None, environ: Mapping[str, str] | None = None
    ) -> EndpointPolicy:
        """What this machine allows: loopback, the default key variable, :data:`ENDPOINTS_ENV`,
        :data:`KEY_ENVS_ENV`, and the JSON file ``config_file`` if it exists (a missing file adds nothing).
        """
        environ = os.environ if environ is None else environ
        config = Path(config_file) if config_file else None
        rules = [_Rule.parse(entry, ENDPOINTS_ENV) for entry in _entries(environ.get(ENDPOINTS_ENV, ""))]
        keys = {DEFAULT_KEY_ENV}
        keys.update(_key_env(name, KEY_ENVS_ENV) for name in _entries(environ.get(KEY_ENVS_ENV, "")))
        if config is not None and config.is_file():
            endpoints, names = _read_config(config)
            rules += [_Rule.parse(entry, str(config)) for entry in endpoints]
            keys.update(_key_env(name, str(config)) for name in names)
        return cls(tuple(rules), frozenset(keys), config)

    def allow(
        self, endpoints: Iterable[str | None] = (), key_envs: Iterable[str | None] = ()
    ) -> EndpointPolicy:
        """This policy plus entries the caller trusts (the CLI's own ``--planner`` URL and ``--api-key-env``).

        Empty entries and None are skipped, so optional flags can be passed as they are.
        """
        rules = [
            _Rule.parse(entry, "allowed by the caller") for entry in endpoints if entry and entry.strip()
        ]
        keys = {_key_env(name, "allowed by the caller") for name in key_envs if name and name.strip()}
        return EndpointPolicy(self.rules + tuple(rules), self.key_envs | keys, self.config_file)

    def check(self, url: str, what: str = "endpoint URL") -> Endpoint:
        """The canonical :class:`Endpoint` for ``url``; a refusal says how to allow it."""
        endpoint = parse_endpoint(url, what)
        if endpoint.loopback or any(rule.matches(endpoint) for rule in self.rules):
            return endpoint
        raise EndpointPolicyError(
            f"{what} {endpoint.url} is not allowed on this machine: only loopback (127.0.0.1, ::1, "
            "localhost) and endpoints the machine's owner listed may be called, and no request was sent. "
            + _how_to_allow("endpoint", endpoint.netloc, self.config_file)
        )

    def check_key_env(self, name: str | None, what: str = "api_key_env") -> str | None:
        """The variable name if allowed (None for no key); its value is not read here."""
        if name is None or not name.strip():
            return None
        name = name.strip()
        if not _VARIABLE.fullmatch(name):
            raise EndpointPolicyError(
                f"{what} must be the NAME of an environment variable (letters, digits and _), not the key "
                "itself; the value given is not shown."
            )
        if name in self.key_envs:
            return name
        shown = name if _SHOWN_VARIABLE.fullmatch(name) else "that variable (name not shown)"
        raise EndpointPolicyError(
            f"{what}: {shown} is not allowed to hold an API key on this machine, so it was not read; "
            f"allowed: {', '.join(sorted(self.key_envs))}. " + _how_to_allow("key", shown, self.config_file)
        )

    def read_key(
        self, name: str | None, environ: Mapping[str, str] | None = None, what: str = "api_key_env"
    ) -> str | None:
        """The key from an allowed variable (None for no variable); the name is checked before any read."""
        name = self.check_key_env(name, what)
        if name is None:
            return None
        environ = os.environ if environ is None else environ
        value = environ.get(name)
        if not value:
            raise EndpointPolicyError(f"environment variable {name} is not set; export the API key there")
        return value


def _read_config(path: Path) -> tuple[list[str], list[str]]:
    example = '{"endpoints": ["https://api.example.com/v1"], "api_key_env": ["EXAMPLE_API_KEY"]}'
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise EndpointPolicyError(
            f"{path}: cannot read it as JSON ({_safe(error, 200)}); expected {example}"
        ) from None
    if not isinstance(data, dict) or set(data) - set(CONFIG_KEYS):
        unknown = sorted(set(data) - set(CONFIG_KEYS)) if isinstance(data, dict) else None
        extra = f" (unknown keys: {', '.join(map(_safe, unknown))})" if unknown else ""
        raise EndpointPolicyError(f"{path}: expected an object like {example}{extra}")
    lists = []
    for key in CONFIG_KEYS:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise EndpointPolicyError(f'{path}: "{key}" must be a list of strings, e.g. {example}')
        lists.append(value)
    return lists[0], lists[1]


__all__ = [
    "CONFIG_FILE_NAME",
    "DEFAULT_KEY_ENV",
    "ENDPOINTS_ENV",
    "KEY_ENVS_ENV",
    "LOCALHOST_ADDRESSES",
    "Endpoint",
    "EndpointPolicyError",
    "EndpointPolicy",
    "is_loopback_host",
    "parse_endpoint",
]
