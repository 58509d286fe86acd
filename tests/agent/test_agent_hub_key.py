"""The agent trusts one hub key: pinned on first sight in its known-hubs file, or set with
`--hub-key` / `agent.hub_key`; another key is refused loudly and nothing is served."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from inferclub.signing import HubSigner
from inferclub.testing import FakeHub, StartAgent, manifest_text
from tests.support.fakes import FakeVllm

pytestmark = pytest.mark.subprocess

CHAT = {"model": "Qwen/Qwen3-8B", "messages": [{"role": "user", "content": "hi"}]}
#: Exit status of `run` when the hub presents a key it does not trust (docs/agent.md).
EXIT_HUB_KEY_REFUSED = 4


def service(vllm: FakeVllm) -> dict[str, str]:
    return {"name": "vllm-qwen", "engine": "vllm", "url": vllm.url}


def other_key() -> str:
    return HubSigner(Ed25519PrivateKey.generate()).public_key


def test_the_first_key_is_pinned_and_a_changed_key_stops_the_agent(
    start_agent: StartAgent, fake_hub: FakeHub, vllm: FakeVllm, tmp_path: Path
) -> None:
    agent = start_agent(service(vllm))
    agent.wait_registered()
    known = tmp_path / "known_hubs"
    pinned = fake_hub.signer.public_key
    assert f"{fake_hub.root} {pinned}" in known.read_text().splitlines()
    assert stat.S_IMODE(known.stat().st_mode) == 0o600
    assert fake_hub.proxy("POST", "/chat/completions", CHAT, service="vllm-qwen").status == 200

    # The hub now presents another key (a new hub at the same address, or an impostor).
    fake_hub.signing_key = Ed25519PrivateKey.generate()
    fake_hub.signer = HubSigner(fake_hub.signing_key)
    assert agent.wait(timeout=15) == EXIT_HUB_KEY_REFUSED
    line = next(line for line in agent.err if "HAS CHANGED" in line)
    assert "ERROR" in line
    assert str(known) in line and pinned in line and fake_hub.signer.public_key in line
    # The pin is left as it was: the operator decides.
    assert f"{fake_hub.root} {pinned}" in known.read_text().splitlines()
    assert len(vllm.posts("/v1/chat/completions")) == 1


def test_a_key_pinned_earlier_is_enforced_from_the_first_heartbeat(
    start_agent: StartAgent, fake_hub: FakeHub, vllm: FakeVllm, tmp_path: Path
) -> None:
    pinned = other_key()
    (tmp_path / "known_hubs").write_text(f"{fake_hub.root}/ {pinned}\n")
    agent = start_agent(service(vllm))
    assert agent.wait(timeout=15) == EXIT_HUB_KEY_REFUSED
    assert pinned in agent.stderr and fake_hub.signer.public_key in agent.stderr
    assert "heartbeat accepted" not in agent.stderr


def test_an_explicit_hub_key_is_the_only_one_trusted(
    start_agent: StartAgent, fake_hub: FakeHub, vllm: FakeVllm, tmp_path: Path
) -> None:
    known = tmp_path / "explicit_known_hubs"
    agent = start_agent(
        service(vllm), args=("--hub-key", fake_hub.signer.public_key, "--known-hubs", str(known))
    )
    agent.wait_registered()
    assert fake_hub.proxy("POST", "/chat/completions", CHAT, service="vllm-qwen").status == 200
    assert not known.exists(), "with an explicit key the known-hubs file is not written"

    configured = other_key()
    manifest = manifest_text(service(vllm), agent={"hub_key": configured})
    refusing = start_agent(manifest=manifest)
    assert refusing.wait(timeout=15) == EXIT_HUB_KEY_REFUSED
    assert configured in refusing.stderr and "configuration" in refusing.stderr


@pytest.mark.parametrize("where", ["flag", "manifest"])
def test_a_malformed_hub_key_is_a_usage_error(
    start_agent: StartAgent, vllm: FakeVllm, where: str
) -> None:
    bad = "ed25519:not-a-key"
    if where == "flag":
        agent = start_agent(service(vllm), args=("--hub-key", bad), wait=False)
        assert agent.wait() == 2
        assert "--hub-key" in agent.stderr
    else:
        agent = start_agent(
            manifest=manifest_text(service(vllm), agent={"hub_key": bad}), wait=False
        )
        assert agent.wait() == 2
        assert ": agent.hub_key: expected ed25519:" in agent.stderr
