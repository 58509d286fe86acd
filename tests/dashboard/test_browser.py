"""The dashboard in a real headless Chromium: sign in through the fake GitHub, keys, providers
going offline, the playground (streaming chat, an interactive transcript), history and charts.
Each test saves screenshots to test-artifacts/."""

from __future__ import annotations

import base64
import io
import math
import struct
import time
import wave
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.browser import screenshot
from tests.support.fakes.agent import FakeAgent, ImagesHandler
from tests.support.fakes.github import FakeGitHub
from tests.support.hubproc import HubProcess, start_hub

pytestmark = pytest.mark.subprocess


def sign_in(page: Any, hub: HubProcess, path: str = "/dashboard/keys") -> None:
    """Through the fake GitHub, starting from a dashboard page (which sends us to /login)."""
    page.goto(hub.url + path)
    page.wait_for_url("**/login?next=*")
    page.click("#github-login")
    page.wait_for_url(hub.url + path)


def wav(seconds: float = 3.0, rate: int = 8000) -> bytes:
    """A real, decodable WAV (a quiet 440 Hz tone), so the audio element can seek in it."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(
            b"".join(
                struct.pack("<h", int(3000 * math.sin(2 * math.pi * 440 * i / rate)))
                for i in range(int(seconds * rate))
            )
        )
    return buf.getvalue()


def png(size: int = 96) -> bytes:
    """A real PNG (a colour gradient), so the page can show that it decoded the image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    raw = b"".join(
        b"\0" + bytes(c for x in range(size) for c in (x * 255 // size, y * 255 // size, 160))
        for y in range(size)
    )
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


class PaintingImagesHandler(ImagesHandler):
    def post(self, kind: str) -> None:
        self.send_json(
            {
                "created": 1,
                "data": [
                    {
                        "b64_json": base64.b64encode(png()).decode(),
                        "revised_prompt": "a lighthouse at dusk, oil",
                    }
                ],
            }
        )


class PaintingAgent(FakeAgent):
    """The fake agent, with images that really decode."""

    def routes(self) -> list[Any]:
        return [
            (r"/v1/images/(generations|edits)", PaintingImagesHandler, {"fake": self}),
            *super().routes(),
        ]


@pytest.fixture
def painting_agent() -> Iterator[FakeAgent]:
    with PaintingAgent(["m1"]) as a:
        yield a


SERVICES = [
    {"name": "chat", "type": "llm", "engine": "vllm", "models": ["m1"]},
    {
        "name": "asr",
        "type": "stt",
        "engine": "whisper",
        "features": ["timestamps"],
        "models": ["whisper-ts"],
    },
    {"name": "asr-plain", "type": "stt", "engine": "openai", "models": ["whisper-plain"]},
    {"name": "painter", "type": "image", "engine": "openai", "models": ["sd"]},
    {"name": "voice", "type": "tts", "engine": "openai", "models": ["piper"]},
]


def register(hub: HubProcess, key: str, agent: FakeAgent, name: str = "home-rig") -> None:
    status, body = hub.heartbeat(
        key,
        name,
        agent.url,
        SERVICES,
        version="0.1.0",
        health={
            "agent_version": "0.1.0",
            "uptime_s": 3723.0,
            "load_avg": [0.31, 0.2, 0.1],
            "memory": {"total_bytes": 34359738368, "available_bytes": 21474836480},
            "in_flight": {"chat": 0},
            "gpus": [
                {
                    "index": 0,
                    "name": "RTX 4090",
                    "utilization_pct": 12,
                    "memory_used_mib": 2048,
                    "memory_total_mib": 24564,
                    "temperature_c": 48,
                }
            ],
            "services": {
                "chat": {"up": True, "detail": "GET /health 200"},
                "asr": {"up": True, "detail": "ok"},
            },
        },
    )
    assert status == 200, body


def test_sign_in_create_copy_use_rotate_and_revoke_a_key(
    page: Any, browser_hub: HubProcess, github: FakeGitHub
) -> None:
    hub = browser_hub
    page.goto(hub.url + "/dashboard/keys")
    page.wait_for_url("**/login?next=*")
    screenshot(page, "login")
    page.click("#github-login")
    page.wait_for_url(hub.url + "/dashboard/keys")
    assert page.inner_text(".topbar .login") == "@octocat"
    assert "No keys yet" in page.inner_text("main")

    page.fill("#key-name", "laptop")
    page.click("#create-key-form button[type=submit]")
    key = page.inner_text("#new-key").strip()
    assert key.startswith("ic_") and len(key) == 39
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=hub.url)
    page.click("#copy-key")
    page.wait_for_selector("#copy-key.copied")
    assert page.evaluate("navigator.clipboard.readText()") == key
    row = page.locator("#keys-table tbody tr").first
    assert key[:11] in row.inner_text() and "laptop" in row.inner_text()
    screenshot(page, "keys-created")

    with openai.OpenAI(base_url=hub.api_base, api_key=key, max_retries=0) as client:
        assert client.models.list().data == []
        # The list shows when the key was last used, once the hub has written it. The page
        # came from a redirect after the POST: reloading it creates no second key and no
        # longer shows this one.
        page.reload()
        assert page.locator("#keys-table tbody tr").count() == 1
        assert page.locator("#new-key").count() == 0 and key not in page.content()
        assert len(hub.query("SELECT id FROM api_keys")) == 1

        # Reloading never shows the key again.
        page.goto(hub.url + "/dashboard/keys")
        assert page.locator("#new-key").count() == 0
        assert key not in page.content()

        page.click(f'#keys-table tr:has-text("{key[:11]}") button:has-text("Rotate")')
        new_key = page.inner_text("#new-key").strip()
        assert new_key != key and "revoked; here is its replacement" in page.inner_text(".notice")
        with pytest.raises(openai.AuthenticationError):
            client.models.list()

    with openai.OpenAI(base_url=hub.api_base, api_key=new_key, max_retries=0) as client:
        assert client.models.list().data == []
        page.click(f'#keys-table tr:has-text("{new_key[:11]}") button:has-text("Revoke")')
        page.wait_for_selector(".notice:has-text('revoked')")
        assert "revoked" in page.locator(f'#keys-table tr:has-text("{new_key[:11]}")').inner_text()
        screenshot(page, "keys-revoked")
        # At once: the dashboard drops the hub's key cache with the revocation.
        with pytest.raises(openai.AuthenticationError) as exc:
            client.models.list()
        assert exc.value.status_code == 401


def test_a_provider_goes_online_then_offline_without_a_reload(
    page: Any, tmp_path: Path, github: FakeGitHub, painting_agent: FakeAgent
) -> None:
    with start_hub(tmp_path, env=github.hub_env(), online_window=3) as hub:
        sign_in(page, hub, "/dashboard/providers")
        page.wait_for_selector("#providers-empty:not([hidden])")
        page.evaluate("window.__sameDocument = true")
        key = hub.create_key("@octocat")
        register(hub, key, painting_agent)

        card = page.locator('[data-provider-id][data-status="online"]')
        card.wait_for()
        text = card.inner_text()
        for expected in (
            "home-rig",
            "online",
            painting_agent.url,
            "0.1.0",
            "Language models",
            "Speech to text",
            "whisper-ts",
            "timestamps",
        ):
            assert expected in text, expected
        assert "last heartbeat" in text
        assert card.locator('tr[data-service="chat"] .badge').inner_text() == "up"
        page.click("details.health summary")
        health = card.locator("details.health").inner_text()
        assert "RTX 4090" in health and "1 h 2 min" in health and "20.0 of 32.0 GiB free" in health
        screenshot(page, "providers-online")

        # No more heartbeats: it turns offline on the page by itself.
        offline = page.locator('[data-provider-id][data-status="offline"]')
        offline.wait_for(timeout=10_000)
        assert "offline" in offline.locator(".badge.status").inner_text()
        assert "Offline: no heartbeat for" in offline.inner_text()
        # Its services' last reports say nothing about now: no green "up" left.
        assert offline.locator('tr[data-service="chat"] .badge').inner_text() == "unknown"
        assert offline.locator(".services-table .badge.ok").count() == 0
        assert page.evaluate("window.__sameDocument") is True, "the page was not reloaded"
        assert page.locator("details.health[open]").count() == 1, "open details survive updates"
        screenshot(page, "providers-offline")

        # Back online with the next heartbeat, again without a reload.
        register(hub, key, painting_agent)
        page.locator('[data-provider-id][data-status="online"]').wait_for()

        page.click('[data-provider-id] button:has-text("Delete")')
        page.wait_for_selector("#providers-empty:not([hidden])")
        assert page.locator("[data-provider-id]").count() == 0
        with openai.OpenAI(base_url=hub.api_base, api_key=key, max_retries=0) as client:
            assert client.models.list().data == []


def test_playground_streams_a_chat(
    page: Any, browser_hub: HubProcess, painting_agent: FakeAgent
) -> None:
    hub = browser_hub
    painting_agent.chunks, painting_agent.chunk_delay = 12, 0.15
    sign_in(page, hub, "/dashboard/providers")
    register(hub, hub.create_key("@octocat"), painting_agent)
    page.goto(hub.url + "/dashboard/playground")
    assert page.locator("#chat-model option").all_inner_texts() == ["m1  (home-rig)"]
    page.fill("#chat-input", "Hello there")
    page.press("#chat-input", "Enter")

    # Tokens arrive one by one: catch the answer half-written, then complete.
    partial = page.wait_for_function(
        """() => { const t = document.querySelector('.msg.assistant.streaming .text');
                   return t && t.textContent.length > 0 && t.textContent; }"""
    ).json_value()
    screenshot(page, "playground-chat-streaming")
    page.wait_for_selector(".msg.assistant[data-done]")
    final = page.inner_text(".msg.assistant .text")
    expected = "".join(f"tok{i} " for i in range(12)).strip()
    assert final.strip() == expected
    assert expected.startswith(partial.strip()) and len(partial.strip()) < len(expected)
    assert page.locator(".msg.user").inner_text().endswith("Hello there")
    meta = page.inner_text("#chat-meta")
    assert "req_" in meta and "served by home-rig" in meta
    screenshot(page, "playground-chat")

    sent = painting_agent.posts("/v1/chat/completions")[-1].json()
    assert (
        sent["messages"] == [{"role": "user", "content": "Hello there"}] and sent["stream"] is True
    )
    rows = hub.wait_for_request_rows(1)
    row = rows[-1]
    assert (row["endpoint"], row["type"], row["model"], row["status"]) == (
        "/v1/chat/completions",
        "llm",
        "m1",
        200,
    )
    assert row["key_id"] is None and row["completion_tokens"] == 12, "recorded like /v1"

    # The request id links to its history row.
    page.click("#chat-meta a.request-link")
    page.wait_for_url(f"**/dashboard/requests/{row['id']}")
    assert "dashboard playground" in page.inner_text("main")


def test_playground_chat_settings_speed_and_the_responses_api(
    page: Any, browser_hub: HubProcess, painting_agent: FakeAgent
) -> None:
    hub = browser_hub
    painting_agent.chunks, painting_agent.chunk_delay = 12, 0.05
    sign_in(page, hub, "/dashboard/providers")
    register(hub, hub.create_key("@octocat"), painting_agent)
    page.goto(hub.url + "/dashboard/playground")
    page.click("#chat-settings summary")
    page.fill("#chat-system", "Answer in haiku.")
    page.fill("#chat-temperature", "0.3")
    page.fill("#chat-max-tokens", "50")
    page.fill("#chat-input", "Hello there")
    page.press("#chat-input", "Enter")
    page.wait_for_selector(".msg.assistant[data-done]")

    sent = painting_agent.posts("/v1/chat/completions")[-1].json()
    assert sent["messages"] == [
        {"role": "system", "content": "Answer in haiku."},
        {"role": "user", "content": "Hello there"},
    ]
    assert (sent["temperature"], sent["max_tokens"]) == (0.3, 50)
    # Tokens per second from the engine's own count (12 tokens, streamed ~50 ms apart).
    meta = page.locator("#chat-meta")
    assert "12 tokens" in meta.inner_text() and "tokens/s" in meta.inner_text()
    rate = float(meta.get_attribute("data-tokens-per-second") or "0")
    assert 0 < rate < 1000
    screenshot(page, "playground-chat-settings")

    # The same conversation through OpenAI's Responses API.
    page.select_option("#chat-api", "responses")
    page.fill("#chat-input", "Again")
    page.press("#chat-input", "Enter")
    page.wait_for_selector(".msg.assistant[data-done] >> nth=1")
    reply = page.locator(".msg.assistant .text").nth(1).inner_text()
    assert reply.strip() == "".join(f"tok{i} " for i in range(12)).strip()
    body = painting_agent.posts("/v1/responses")[-1].json()
    assert body["instructions"] == "Answer in haiku." and body["max_output_tokens"] == 50
    assert [m["role"] for m in body["input"]] == ["user", "assistant", "user"]
    assert "5 tokens" in page.inner_text("#chat-meta")  # the fake's response.usage


def test_playground_transcript_seeks_where_a_word_is_clicked(
    page: Any, browser_hub: HubProcess, painting_agent: FakeAgent, tmp_path: Path
) -> None:
    hub = browser_hub
    sign_in(page, hub, "/dashboard/providers")
    register(hub, hub.create_key("@octocat"), painting_agent)
    audio = tmp_path / "fox.wav"
    audio.write_bytes(wav(3.0))
    page.goto(hub.url + "/dashboard/playground#transcription")
    page.select_option("#stt-model", "whisper-ts")
    assert "timestamps" in page.inner_text("#stt-features")
    page.set_input_files("#stt-file", str(audio))
    page.click("#stt-go")
    page.wait_for_selector("#transcript[data-done] .word")
    words = page.locator("#transcript .word")
    assert words.all_inner_texts() == ["the", "quick", "brown", "fox"]

    fields, files = painting_agent.form()
    assert fields["response_format"] == ["verbose_json"]
    assert fields["timestamp_granularities[]"] == ["word", "segment"]
    assert files["file"][0].body == audio.read_bytes()

    page.wait_for_function("() => document.getElementById('stt-audio').readyState >= 1")
    words.nth(2).click()  # "brown" starts at 1.0 s
    page.wait_for_function(
        "() => Math.abs(document.getElementById('stt-audio').currentTime - 1.0) < 0.05"
    )
    assert page.locator("#transcript .word.current").inner_text() == "brown"
    screenshot(page, "playground-transcript")

    words.nth(3).click()
    page.wait_for_function(
        "() => Math.abs(document.getElementById('stt-audio').currentTime - 1.5) < 0.05"
    )
    assert page.locator("#transcript .word.current").inner_text() == "fox"
    page.click("#transcript .seg-time")  # the segment starts at 0
    page.wait_for_function("() => document.getElementById('stt-audio').currentTime < 0.05")
    assert page.locator("#transcript .word.current").inner_text() == "the"

    # Playing moves the highlight along by itself, word by word.
    page.evaluate("document.getElementById('stt-audio').play()")
    for word in ("quick", "brown"):
        page.wait_for_function(
            f"() => document.querySelector('#transcript .word.current')?.textContent === '{word}'"
        )
    page.evaluate("document.getElementById('stt-audio').pause()")

    # A service without timestamps: plain text, no clickable words.
    page.select_option("#stt-model", "whisper-plain")
    page.click("#stt-go")
    page.wait_for_selector("#transcript.plain[data-done]")
    assert page.inner_text("#transcript") == "the quick brown fox"
    assert page.locator("#transcript .word").count() == 0
    assert painting_agent.form()[0]["response_format"] == ["text"]


def test_playground_image_and_speech(
    page: Any, browser_hub: HubProcess, painting_agent: FakeAgent
) -> None:
    hub = browser_hub
    sign_in(page, hub, "/dashboard/providers")
    register(hub, hub.create_key("@octocat"), painting_agent)
    page.goto(hub.url + "/dashboard/playground#image")
    page.fill("#image-prompt", "a lighthouse at dusk")
    page.click("#image-go")
    img = page.locator("#generated-image")
    img.wait_for()
    assert img.get_attribute("src").startswith("data:image/png;base64,")
    page.wait_for_function("() => document.getElementById('generated-image').naturalWidth === 96")
    assert "a lighthouse at dusk, oil" in page.inner_text("#image-result")
    assert (
        painting_agent.posts("/v1/images/generations")[-1].json()["prompt"]
        == "a lighthouse at dusk"
    )
    screenshot(page, "playground-image")

    page.click("#tab-tts")
    page.fill("#tts-input", "Hello from the hub")
    page.click("#tts-go")
    player = page.locator("#speech-audio")
    player.wait_for()
    assert player.get_attribute("src").startswith("blob:")
    assert f"{len(painting_agent.audio) / 1024:.1f} KiB" in page.inner_text("#tts-meta")
    assert painting_agent.posts("/v1/audio/speech")[-1].json()["input"] == "Hello from the hub"
    screenshot(page, "playground-speech")


def test_history_table_filters_and_charts(
    page: Any, browser_hub: HubProcess, painting_agent: FakeAgent
) -> None:
    hub = browser_hub
    sign_in(page, hub, "/dashboard/providers")
    key = hub.create_key("@octocat")
    register(hub, key, painting_agent)
    with openai.OpenAI(base_url=hub.api_base, api_key=key, max_retries=0) as client:
        for _ in range(3):
            client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(
                model="nope", messages=[{"role": "user", "content": "hi"}]
            )
        client.images.generate(model="sd", prompt="x")
    rows = hub.wait_for_request_rows(5)
    assert len(rows) == 5

    page.goto(hub.url + "/dashboard/requests")
    table = page.locator("#requests-table tbody tr")
    assert table.count() == 5
    first = table.first.inner_text()
    assert "sd" in first and "image" in first and "home-rig" in first and "200" in first
    assert "1–5 of 5" in page.inner_text("#history-count")
    assert page.get_attribute("#chart-requests", "data-total") == "5"
    assert page.locator("#chart-requests rect.bar.ok").count() >= 1
    assert page.locator("#chart-requests rect.bar.err").count() >= 1
    assert page.locator("#chart-tokens rect.bar.prompt").count() >= 1
    assert page.locator("#chart-latency path.line.dur").count() == 1
    screenshot(page, "requests")

    page.fill("#filters input[name=status]", "404")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**status=404**")
    assert table.count() == 1 and "nope" in table.first.inner_text()
    assert page.get_attribute("#chart-requests", "data-total") == "1"

    page.goto(hub.url + "/dashboard/requests?model=m1&type=llm")
    assert table.count() == 3
    page.goto(hub.url + "/dashboard/requests?type=tts")
    assert table.count() == 0 and "No requests match" in page.inner_text("main")

    page.goto(hub.url + "/dashboard/requests?model=m1")
    table.first.locator("a").click()
    page.wait_for_url("**/dashboard/requests/req_*")
    detail = page.inner_text("main")
    assert "POST /v1/chat/completions" in detail and "5 prompt + 3 completion" in detail
    assert key[:11] in detail
    screenshot(page, "request-detail")


def test_sign_out_is_a_post_and_ends_the_session(page: Any, browser_hub: HubProcess) -> None:
    hub = browser_hub
    sign_in(page, hub, "/dashboard/playground")
    screenshot(page, "playground-empty")
    page.click(".topbar .who button")
    page.wait_for_url("**/login")
    page.goto(hub.url + "/dashboard/keys")
    page.wait_for_url("**/login?next=*")
    # An instant sign-in again: GitHub remembers the authorization.
    start = time.monotonic()
    page.click("#github-login")
    page.wait_for_url(hub.url + "/dashboard/keys")
    assert time.monotonic() - start < 10
