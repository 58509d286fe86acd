"""Manifests: every example loads, every mistake is reported with file, line and field."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from inferclub.agent.manifest import ManifestError, load_manifest, parse_manifest
from inferclub.engines import Model, get_engines, get_plugin_manager
from inferclub.testing import FakeHub, StartAgent, run_cli

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "manifests").glob("*.yaml"))
BUILTIN = get_engines(get_plugin_manager(entrypoints=False))


def test_there_is_an_example_for_every_builtin_engine() -> None:
    used = {s.engine for path in EXAMPLES for s in load_manifest(path, BUILTIN).services}
    assert used == set(BUILTIN)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_manifest_loads(path: Path) -> None:
    manifest = load_manifest(path, BUILTIN)
    assert manifest.services
    for service in manifest.services:
        assert service.type in BUILTIN[service.engine].service_types
        assert service.url.startswith("http")


def test_fields_are_resolved() -> None:
    manifest = parse_manifest(
        textwrap.dedent(
            """\
            agent:
              name: home-rig
              hub: https://hub.example.org
              heartbeat_interval: 5
            hosts:
              - id: rig-01
                services:
                  - name: vllm-qwen
                    engine: vllm
                    url: http://localhost:8000/v1
                    models:
                      - hf: Qwen/Qwen3-30B-A3B
                        alias: qwen3
                      - id: other
                      - bare-name
                    api_key: sk-local
                    max_concurrency: 2
                    timeout: 30
                  - name: asr
                    type: stt
                    engine: whisper
                    url: http://localhost:8080
                    features: [timestamps]
                    options: {api: whispercpp}
                    models: [whisper-1]
            """
        ),
        "m.yaml",
        BUILTIN,
    )
    assert manifest.agent.name == "home-rig"
    assert manifest.agent.heartbeat_interval == 5.0
    qwen, asr = manifest.services
    assert qwen.type == "llm" and qwen.host == "rig-01"
    assert qwen.models == (Model("Qwen/Qwen3-30B-A3B", "qwen3"), Model("other"), Model("bare-name"))
    assert (qwen.api_key, qwen.max_concurrency, qwen.timeout) == ("sk-local", 2, 30.0)
    assert "sk-local" not in repr(qwen)
    assert asr.features == ("timestamps",) and asr.options == {"api": "whispercpp"}


def service_yaml(extra: str) -> str:
    """A manifest whose second service (starting on line 7) gets `extra` lines."""
    return (
        "hosts:\n"
        "  - id: rig\n"
        "    services:\n"
        "      - name: first\n"
        "        engine: vllm\n"
        "        url: http://localhost:8000/v1\n"
        "      - name: second\n" + textwrap.indent(textwrap.dedent(extra), " " * 8)
    )


ERRORS = [
    pytest.param(
        "hosts:\n  - id: rig\n    services: [\n      {name: a\n",
        5,
        "(yaml)",
        "invalid YAML",
        id="bad-yaml",
    ),
    pytest.param(
        service_yaml("type: foo\nengine: vllm\nurl: http://x/v1\n"),
        8,
        "hosts[0].services[1].type",
        "unknown type 'foo' (expected one of llm, stt, image, tts, embedding)",
        id="unknown-type",
    ),
    pytest.param(
        service_yaml("engine: vllm\n"),
        7,
        "hosts[0].services[1].url",
        "missing required field",
        id="missing-url",
    ),
    pytest.param(
        service_yaml("engine: tgi\nurl: http://x/v1\n"),
        8,
        "hosts[0].services[1].engine",
        "unknown engine 'tgi' (installed: llamacpp, lmstudio, ollama, openai, vllm, whisper)",
        id="unknown-engine",
    ),
    pytest.param(
        service_yaml("engine: vllm\nurl: http://x/v1\n").replace("name: second", "name: first"),
        7,
        "hosts[0].services[1].name",
        "duplicate service name 'first' (first defined at line 4)",
        id="duplicate-service-name",
    ),
    pytest.param(
        service_yaml("engine: vllm\nurl: http://x/v1\nengine: ollama\n"),
        10,
        "engine",
        "duplicate key (first at line 8)",
        id="duplicate-key",
    ),
    pytest.param(
        service_yaml("engine: vllm\nurl: http://x/v1\nmodel: x\n"),
        10,
        "hosts[0].services[1].model",
        "unknown field 'model'",
        id="unknown-field",
    ),
    pytest.param(
        service_yaml("engine: vllm\nurl: localhost:8000\n"),
        9,
        "hosts[0].services[1].url",
        "not an http(s) URL: 'localhost:8000'",
        id="bad-url",
    ),
    pytest.param(
        service_yaml("type: tts\nengine: ollama\nurl: http://x/v1\n"),
        8,
        "hosts[0].services[1].type",
        "engine 'ollama' does not serve 'tts'",
        id="type-not-served-by-engine",
    ),
    pytest.param(
        service_yaml("engine: vllm\nurl: http://x/v1\nmodels:\n  - id: a\n    hf: b\n"),
        11,
        "hosts[0].services[1].models[0]",
        "give exactly one of `id:` or `hf:`",
        id="model-id-and-hf",
    ),
    pytest.param(
        service_yaml("engine: vllm\nurl: http://x/v1\nmax_concurrency: 0\n"),
        10,
        "hosts[0].services[1].max_concurrency",
        "expected a positive integer, got 0",
        id="bad-max-concurrency",
    ),
    pytest.param(
        service_yaml("engine: llamacpp\nurl: http://x/v1\nfeatures: [timestamps]\n"),
        10,
        "hosts[0].services[1].features[0]",
        "engine 'llamacpp' does not support feature 'timestamps'",
        id="unsupported-feature",
    ),
    pytest.param(
        service_yaml("type: stt\nengine: whisper\nurl: http://x\noptions:\n  api: whispercpp\n"),
        7,
        "hosts[0].services[1].models",
        "whisper.cpp has no model list",
        id="whispercpp-without-models",
    ),
    pytest.param(
        service_yaml("type: stt\nengine: whisper\nurl: http://x\noptions:\n  flavour: x\n"),
        12,
        "hosts[0].services[1].options.flavour",
        "unknown option 'flavour' for engine 'whisper'",
        id="unknown-engine-option",
    ),
    pytest.param("hosts: []\n", 1, "hosts", "expected a non-empty list of hosts", id="no-hosts"),
    pytest.param("- a\n- b\n", 1, "(top level)", "expected a mapping", id="not-a-mapping"),
]


@pytest.mark.parametrize(("text", "line", "field", "message"), ERRORS)
def test_manifest_errors_name_file_line_and_field(
    tmp_path: Path, text: str, line: int, field: str, message: str
) -> None:
    path = tmp_path / "manifest.yaml"
    path.write_text(text)
    with pytest.raises(ManifestError) as info:
        load_manifest(path, BUILTIN)
    first = str(info.value).splitlines()[0]
    assert first.startswith(f"{path}:{line}: {field}: "), first
    assert message in first


def test_all_problems_are_reported_at_once() -> None:
    text = service_yaml("type: foo\nengine: tgi\n")
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, "m.yaml", BUILTIN)
    lines = str(info.value).splitlines()
    assert [re.match(r"m\.yaml:(\d+): (\S+):", ln).groups() for ln in lines] == [  # type: ignore[union-attr]
        ("7", "hosts[0].services[1].url"),
        ("8", "hosts[0].services[1].type"),
        ("9", "hosts[0].services[1].engine"),
    ]


@pytest.mark.subprocess
def test_invalid_manifest_stops_the_agent_before_anything_starts(
    start_agent: StartAgent, fake_hub: FakeHub
) -> None:
    agent = start_agent(
        manifest=service_yaml("type: foo\nengine: vllm\nurl: http://x/v1\n"), wait=False
    )
    assert agent.wait(30) == 2
    assert "manifest-0.yaml:8: hosts[0].services[1].type: unknown type 'foo'" in agent.stderr
    assert "listening on" not in agent.stdout
    assert fake_hub.requests == []


@pytest.mark.subprocess
def test_check_rejects_invalid_manifest(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(service_yaml("engine: vllm\n"))
    result = run_cli("check", "--manifest", str(path))
    assert result.returncode == 2
    assert f"{path}:7: hosts[0].services[1].url: missing required field" in result.stderr
    assert result.stdout == ""


def test_the_agent_section_turns_the_tunnel_on_with_a_boolean() -> None:
    services = (
        "hosts:\n  - id: rig\n    services:\n      - {name: a, engine: vllm, url: http://h/v1}\n"
    )
    on = parse_manifest("agent:\n  tunnel: true\n" + services, "m.yaml", BUILTIN)
    assert on.agent.tunnel is True
    assert parse_manifest(services, "m.yaml", BUILTIN).agent.tunnel is False
    with pytest.raises(ManifestError) as caught:
        parse_manifest("agent:\n  name: rig\n  tunnel: yes please\n" + services, "m.yaml", BUILTIN)
    assert "m.yaml:3: agent.tunnel: expected true or false" in str(caught.value)
