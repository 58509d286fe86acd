"""Prometheus metrics of the hub and the agent, scraped after real requests through both
(subprocesses) and parsed with prometheus-client's own parser."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inferclub.testing import AgentProcess
from tests.support.fakes import FakeVllm
from tests.support.hubproc import TEST_ENV, start_hub
from tests.support.stack import manifest_text, wait_models

pytestmark = pytest.mark.subprocess

GRAFANA = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
HUB_TOKEN = "hub-scrape-token"
AGENT_TOKEN = "agent-scrape-token"


def scrape(url: str, token: str | None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` as ``{(sample name, sorted labels): value}``."""
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def status_of(url: str, token: str | None = None) -> int:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_hub_and_agent_metrics_after_real_requests(tmp_path: Path) -> None:
    env = {"INFERCLUB_METRICS_TOKEN": HUB_TOKEN}
    with FakeVllm() as vllm, start_hub(tmp_path, env=env) as hub:
        key = hub.user_with_key("alice")
        manifest = tmp_path / "m.yaml"
        manifest.write_text(
            manifest_text(
                {
                    "name": "chat",
                    "engine": "vllm",
                    "url": vllm.url,
                    "models": [{"hf": "Qwen/Qwen3-8B", "alias": "qwen"}],
                }
            )
        )
        agent = AgentProcess(
            ["run", "--manifest", str(manifest), "--hub", hub.url, "--key", key]
            + ["--listen", "127.0.0.1:0", "--name", "rig", "--heartbeat-interval", "0.5"]
            + ["--metrics-token", AGENT_TOKEN]
        )
        try:
            agent.wait_listening()
            agent.wait_registered()
            with openai.OpenAI(base_url=hub.api_base, api_key=key, max_retries=0) as sdk:
                wait_models(sdk, {"qwen"})
                sdk.chat.completions.create(
                    model="qwen", messages=[{"role": "user", "content": "a"}]
                )
                stream = sdk.chat.completions.create(
                    model="qwen", messages=[{"role": "user", "content": "b"}], stream=True
                )
                assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
                with pytest.raises(openai.NotFoundError):
                    sdk.chat.completions.create(model="nope", messages=[])
            hub.wait_for_request_rows(3)

            assert status_of(hub.url + "/metrics") == 401
            assert status_of(hub.url + "/metrics", "wrong") == 401
            m = scrape(hub.url + "/metrics", HUB_TOKEN)
            ok = (("provider", "rig"), ("status", "200"), ("type", "llm"))
            assert m[("inferclub_requests_total", ok)] == 2
            missing = (("provider", ""), ("status", "404"), ("type", "llm"))
            assert m[("inferclub_requests_total", missing)] == 1
            assert m[("inferclub_request_ttfb_seconds_count", (("type", "llm"),))] == 2
            assert m[("inferclub_request_duration_seconds_count", (("type", "llm"),))] == 3
            assert m[("inferclub_requests_in_flight", ())] == 0
            assert m[("inferclub_providers_online", ())] == 1
            assert m[("inferclub_heartbeats_total", ())] >= 1
            assert m[("inferclub_requests_paced_total", ())] == 0
            assert m[("inferclub_history_backlog_rows", ())] == 0
            assert m[("inferclub_history_dropped_rows_total", ())] == 0
            assert m[("inferclub_store_errors_total", (("what", "request history"),))] == 0
            assert m[("process_resident_memory_bytes", ())] > 0

            assert status_of(agent.url + "/metrics") == 401
            a = scrape(agent.url + "/metrics", AGENT_TOKEN)
            chat = (("service", "chat"),)
            assert a[("inferclub_agent_requests_total", (("outcome", "ok"), *chat))] == 2
            assert a[("inferclub_agent_engine_request_seconds_count", chat)] == 2
            assert a[("inferclub_agent_requests_in_flight", chat)] == 0
            up = (("engine", "vllm"), ("service", "chat"), ("type", "llm"))
            assert a[("inferclub_agent_service_up", up)] == 1
            assert a[("process_resident_memory_bytes", ())] > 0

            # The Grafana dashboard in docs/ queries only metrics the programs expose.
            exposed = {name for name, _ in [*m, *a]}
            queried = set(re.findall(r"inferclub_\w+", GRAFANA.read_text()))
            assert queried and queried <= exposed, queried - exposed
        finally:
            agent.kill()


def test_metrics_listen_serves_only_metrics_on_its_own_port(tmp_path: Path) -> None:
    env = {"INFERCLUB_METRICS_LISTEN": "127.0.0.1:0"}
    with start_hub(tmp_path, env=env) as hub:
        line = next(x for x in hub.stdout_lines if x.startswith("metrics on "))
        url = line.split()[-1]
        assert url.endswith("/metrics") and not url.startswith(hub.url)
        m = scrape(url, None)
        assert m[("inferclub_requests_in_flight", ())] == 0
        # Not on the main port: no token is configured there.
        assert status_of(hub.url + "/metrics") == 404
        assert status_of(url.removesuffix("/metrics") + "/v1/models") == 404


def test_a_malformed_metrics_listen_stops_serve_before_it_starts(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "inferclub", "serve", "--db", str(tmp_path / "h.db")],
        capture_output=True,
        text=True,
        env={**os.environ, **TEST_ENV, "INFERCLUB_METRICS_LISTEN": "nonsense"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "metrics_listen: expected HOST:PORT, not 'nonsense'" in result.stderr
    assert not (tmp_path / "h.db").exists()
