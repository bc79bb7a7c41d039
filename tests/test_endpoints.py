"""The machine's allow-lists: which endpoints an agent may call and which variables may hold its key."""

import json
import socket
from collections.abc import Mapping

import pytest

from interleave_thinker.core.endpoints import (
    CONFIG_FILE_NAME,
    DEFAULT_KEY_ENV,
    ENDPOINTS_ENV,
    KEY_ENVS_ENV,
    EndpointPolicy,
    EndpointPolicyError,
    parse_endpoint,
)
from interleave_thinker.core.errors import BadInput


class GuardedEnviron(Mapping):
    """An environment that fails the test when a forbidden variable is read or the whole thing is listed."""

    def __init__(self, values: dict, forbidden: set):
        self.values, self.forbidden, self.reads = values, forbidden, []

    def __getitem__(self, key):
        self.reads.append(key)
        if key in self.forbidden:
            pytest.fail(f"{key} was read")
        return self.values[key]

    def __iter__(self):
        pytest.fail("the whole environment was listed")

    def __len__(self):
        return len(self.values)


@pytest.fixture
def machine(monkeypatch):
    """The policy of a machine whose owner allowed nothing beyond the defaults."""
    monkeypatch.delenv(ENDPOINTS_ENV, raising=False)
    monkeypatch.delenv(KEY_ENVS_ENV, raising=False)
    return EndpointPolicy.machine()


@pytest.fixture
def no_dns(monkeypatch):
    def refuse(*args, **kwargs):
        pytest.fail("a name was looked up")

    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "create_connection"):
        monkeypatch.setattr(socket, name, refuse)


# ---------------------------------------------------------------------------------------------------------
# loopback by default


@pytest.mark.parametrize(
    ("url", "host", "connect"),
    [
        ("http://127.0.0.1:8000/v1", "127.0.0.1", ("127.0.0.1",)),
        ("http://127.8.9.10/v1", "127.8.9.10", ("127.8.9.10",)),
        ("http://127.0.0.1.:8000/v1", "127.0.0.1", ("127.0.0.1",)),
        ("http://localhost:11434/v1", "localhost", ("127.0.0.1", "::1")),
        ("HTTP://LOCALHOST:1234/v1/", "localhost", ("127.0.0.1", "::1")),
        ("http://LocalHost.:8000/v1", "localhost", ("127.0.0.1", "::1")),
        ("http://[::1]:8000/v1", "::1", ("::1",)),
        ("http://[0:0:0:0:0:0:0:1]:8000/v1", "::1", ("::1",)),
        ("http://[::ffff:127.0.0.1]:8000/v1", "127.0.0.1", ("127.0.0.1",)),
        ("https://localhost/v1", "localhost", ("127.0.0.1", "::1")),
    ],
)
def test_loopback_is_allowed_by_default_however_spelled_and_nothing_is_looked_up(
    machine, no_dns, url, host, connect
):
    endpoint = machine.check(url)
    assert endpoint.loopback and endpoint.host == host
    # The agent connects to literal addresses: no hosts file or DNS decides where "localhost" goes.
    assert endpoint.connect_hosts() == connect


def test_the_checked_url_is_canonical(machine):
    assert machine.check("HTTP://LocalHost.:8000/v1/").url == "http://localhost:8000/v1"
    assert machine.check("http://[0::1]:80/v1").url == "http://[::1]/v1"
    assert machine.check("https://127.0.0.1:443").url == "https://127.0.0.1"


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/v1",
        "https://api.openai.com/v1",
        "http://0.0.0.0:8000/v1",  # every interface, not loopback
        "http://[::]:8000/v1",
        "http://10.0.0.5:8000/v1",
        "http://foo.localhost/v1",  # only a resolver decides where this goes
        "http://localhost.localdomain/v1",
        "http://127.0.0.1.nip.io/v1",
        "http://localhost.example.com/v1",
    ],
)
def test_other_hosts_are_refused_with_how_to_allow_them(machine, no_dns, url):
    with pytest.raises(EndpointPolicyError) as caught:
        machine.check(url)
    message = str(caught.value)
    assert "not allowed" in message and "no request was sent" in message
    assert ENDPOINTS_ENV in message and CONFIG_FILE_NAME in message
    assert isinstance(caught.value, BadInput)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.1/v1",
        "http://2130706433/v1",
        "http://0x7f000001/v1",
        "http://0177.0.0.1/v1",
        "http://127.0.0.01/v1",
    ],
)
def test_ambiguous_numeric_hosts_are_refused_not_guessed(machine, url):
    # Resolvers read these as 127.0.0.1, but 0177 is octal to one parser and decimal to another.
    with pytest.raises(EndpointPolicyError, match="write all four decimal numbers"):
        machine.check(url)


# ---------------------------------------------------------------------------------------------------------
# URLs that are refused whatever the policy


@pytest.mark.parametrize(
    "url",
    [
        "http://user:hunter2@127.0.0.1:8000/v1",
        "http://hunter2@127.0.0.1/v1",
        "http://127.0.0.1:8000@evil.example/v1",  # the host is evil.example, not loopback
        "http://127.0.0.1%40hunter2@evil.example/v1",
    ],
)
def test_urls_with_credentials_are_refused_without_echoing_them(machine, url):
    with pytest.raises(EndpointPolicyError, match="user name or password") as caught:
        machine.check(url)
    assert "hunter2" not in str(caught.value) and "evil" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://127.0.0.1/v1", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("javascript:alert(1)", "http:// or https://"),
        ("127.0.0.1:8000/v1", "http:// or https://"),
        ("", "empty"),
        ("http:///v1", "no host"),
        ("http://127.0.0.1:99999/v1", "out of range"),
        ("http://127.0.0.1:8000/v1?key=1", "without \\?query"),
        ("http://127.0.0.1:8000/v1#x", "without \\?query"),
        ("http://127.0.0.1/v1/../admin", "path segments"),
        ("http://127.0.0.1/v1/%2e%2e/admin", "path segments"),
        ("http://127.0.0.1\\@evil.example/v1", "backslashes"),
        ("http://127.0.0.1/v1\r\nX-Injected: 1", "control characters"),
        ("http://127.0.0.1/v 1", "spaces"),
        ("http://ｌocalhost/v1", "non-ASCII"),
        ("http://::1/v1", "not a plain host"),
        ("http://[::1/v1", "not a plain host"),
        ("http://[127.0.0.1]/v1", "not an IPv6 address"),
        ("http://localhost..:8000/v1", "not a valid host name"),
    ],
)
def test_malformed_or_unsafe_urls_are_refused_saying_why(machine, url, why):
    with pytest.raises(EndpointPolicyError, match=why):
        machine.check(url)


# ---------------------------------------------------------------------------------------------------------
# what the owner allows


def test_the_environment_variable_allows_hosts_ports_and_base_urls(monkeypatch, no_dns):
    monkeypatch.setenv(
        ENDPOINTS_ENV, "api.example.com, 10.0.0.5:8000  https://llm.example.org/v1,[fd00::1]:9000"
    )
    policy = EndpointPolicy.machine()
    for url in [
        "https://api.example.com/v1",
        "http://API.Example.COM.:8080/anything",  # a host entry: any port, either scheme
        "http://10.0.0.5:8000/v1",
        "https://llm.example.org/v1",
        "https://llm.example.org/v1/chat/completions",
        "https://llm.example.org:443/v1/",
        "http://[fd00:0:0::1]:9000/v1",
        "http://[::1]:8000/v1",  # loopback stays allowed
    ]:
        assert policy.check(url), url
    for url in [
        "http://10.0.0.5:8001/v1",  # another port
        "http://llm.example.org/v1",  # another scheme
        "https://llm.example.org:8443/v1",  # another port
        "https://llm.example.org/v2",  # outside the path
        "https://llm.example.org/v1evil",  # a path prefix is whole segments
        "https://evil.api.example.com/v1",  # not a subdomain wildcard
        "http://[fd00::1]:9001/v1",
    ]:
        with pytest.raises(EndpointPolicyError, match="not allowed"):
            policy.check(url)


def test_a_config_file_allows_endpoints_and_key_variables(tmp_path, monkeypatch):
    monkeypatch.delenv(ENDPOINTS_ENV, raising=False)
    monkeypatch.delenv(KEY_ENVS_ENV, raising=False)
    config = tmp_path / CONFIG_FILE_NAME
    config.write_text(
        json.dumps({"endpoints": ["https://api.example.com/v1"], "api_key_env": ["EXAMPLE_KEY"]})
    )
    policy = EndpointPolicy.machine(config)
    assert policy.check("https://api.example.com/v1").host == "api.example.com"
    assert policy.check_key_env("EXAMPLE_KEY") == "EXAMPLE_KEY"
    with pytest.raises(EndpointPolicyError) as caught:
        policy.check("https://other.example.com/v1")
    assert str(config) in str(caught.value)  # the message names the very file to edit


def test_a_missing_config_file_allows_only_the_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv(ENDPOINTS_ENV, raising=False)
    policy = EndpointPolicy.machine(tmp_path / "nope.json")
    assert policy.check("http://127.0.0.1:8000/v1").loopback
    with pytest.raises(EndpointPolicyError, match="nope.json"):
        policy.check("https://api.example.com/v1")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{not json", "cannot read it as JSON"),
        ('["https://api.example.com"]', "expected an object"),
        ('{"endpoint": ["https://api.example.com"]}', "unknown keys: endpoint"),
        ('{"endpoints": "https://api.example.com"}', '"endpoints" must be a list of strings'),
        ('{"api_key_env": [1]}', '"api_key_env" must be a list of strings'),
        ('{"endpoints": ["ftp://api.example.com"]}', "http:// or https://"),
        ('{"endpoints": ["user:pw@api.example.com"]}', "user name or password"),
        ('{"api_key_env": ["NOT-A-NAME"]}', "not an environment variable name"),
    ],
)
def test_a_broken_config_file_is_one_clear_error_naming_it(tmp_path, text, why):
    config = tmp_path / CONFIG_FILE_NAME
    config.write_text(text)
    with pytest.raises(EndpointPolicyError, match=why) as caught:
        EndpointPolicy.machine(config)
    assert str(config) in str(caught.value)


def test_a_bad_entry_in_the_environment_names_the_variable(monkeypatch):
    monkeypatch.setenv(ENDPOINTS_ENV, "api.example.com, http://u:pw0rd@evil.example")
    with pytest.raises(EndpointPolicyError, match=ENDPOINTS_ENV) as caught:
        EndpointPolicy.machine()
    assert "pw0rd" not in str(caught.value)
    monkeypatch.setenv(ENDPOINTS_ENV, "")
    monkeypatch.setenv(KEY_ENVS_ENV, "GOOD_KEY bad-key")
    with pytest.raises(EndpointPolicyError, match=KEY_ENVS_ENV):
        EndpointPolicy.machine()


def test_the_caller_can_trust_what_the_person_typing_gave(machine):
    trusted = machine.allow(
        endpoints=["https://api.example.com/v1", None, ""], key_envs=["OPENAI_API_KEY", None]
    )
    assert trusted.check("https://api.example.com/v1/chat/completions").host == "api.example.com"
    assert trusted.check_key_env("OPENAI_API_KEY") == "OPENAI_API_KEY"
    with pytest.raises(EndpointPolicyError):  # the machine's own policy is unchanged
        machine.check("https://api.example.com/v1")
    with pytest.raises(EndpointPolicyError):
        trusted.check("http://api.example.com/v1")  # a URL entry keeps its scheme


# ---------------------------------------------------------------------------------------------------------
# key variables


def test_the_default_key_variable_is_allowed_and_read(machine):
    environ = {DEFAULT_KEY_ENV: "s3cret"}
    assert machine.read_key(DEFAULT_KEY_ENV, environ) == "s3cret"
    assert machine.read_key(None, environ) is None and machine.read_key("  ", environ) is None


def test_a_refused_key_variable_is_never_read(machine):
    environ = GuardedEnviron({"HF_TOKEN": "hf_secret", DEFAULT_KEY_ENV: "x"}, forbidden={"HF_TOKEN"})
    with pytest.raises(EndpointPolicyError) as caught:
        machine.read_key("HF_TOKEN", environ)
    message = str(caught.value)
    assert "HF_TOKEN is not allowed" in message and "not read" in message
    assert KEY_ENVS_ENV in message and CONFIG_FILE_NAME in message and "hf_secret" not in message
    assert environ.reads == []


def test_allowed_key_variables_from_the_environment(monkeypatch):
    monkeypatch.setenv(KEY_ENVS_ENV, "OPENAI_API_KEY, JUDGE_KEY")
    monkeypatch.setenv("JUDGE_KEY", "j")
    policy = EndpointPolicy.machine()
    assert policy.read_key("JUDGE_KEY") == "j"
    assert policy.check_key_env("OPENAI_API_KEY") == "OPENAI_API_KEY"
    with pytest.raises(EndpointPolicyError, match="AWS_SECRET_ACCESS_KEY is not allowed"):
        policy.read_key("AWS_SECRET_ACCESS_KEY")


@pytest.mark.parametrize("pasted", ["sk-abc123secretvalue", "hf_AbCdEfGh1234567890", "Bearer sk abc"])
def test_a_key_pasted_where_a_variable_name_belongs_is_not_echoed(machine, pasted):
    with pytest.raises(EndpointPolicyError) as caught:
        machine.read_key(pasted, GuardedEnviron({}, forbidden={pasted}))
    assert pasted not in str(caught.value)


def test_an_allowed_but_unset_key_variable_says_so(machine):
    with pytest.raises(EndpointPolicyError, match=f"environment variable {DEFAULT_KEY_ENV} is not set"):
        machine.read_key(DEFAULT_KEY_ENV, {})


def test_parse_endpoint_keeps_the_path_without_its_trailing_slash():
    endpoint = parse_endpoint("http://127.0.0.1:8000/v1/")
    assert (endpoint.scheme, endpoint.host, endpoint.port, endpoint.path) == (
        "http",
        "127.0.0.1",
        8000,
        "/v1",
    )
    assert parse_endpoint("http://127.0.0.1").path == ""
