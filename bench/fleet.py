"""A small fleet under load: the real hub and three real agents (subprocesses), one fake
engine each, all serving one model; one agent is killed (SIGKILL) mid-run.

Prints, per phase, the requests each provider served and the errors clients saw: before the
first byte (a status) and after it (a stream cut because its agent died). Never asserts on
time. Run from the repository root: ``.venv/bin/python -m bench.fleet --seconds 6``.
"""

from __future__ import annotations

import argparse
import collections
import signal
import tempfile
import threading
import time
from pathlib import Path

import openai

from tests.support.fakes import FakeVllm
from tests.support.hubproc import start_hub
from tests.support.stack import start_agent_process, wait_models

NAMES = ("rig-1", "rig-2", "rig-3")


def run(
    base: str,
    key: str,
    stats: dict[str, collections.Counter[str]],
    phase: list[str],
    stop: threading.Event,
) -> None:
    """One client: streamed chats until ``stop``, counted under the phase they began in."""
    with openai.OpenAI(base_url=base, api_key=key, max_retries=0) as sdk:
        while not stop.is_set():
            counter = stats.setdefault(phase[0], collections.Counter())
            try:
                with sdk.chat.completions.with_streaming_response.create(
                    model="m1", messages=[], stream=True
                ) as resp:
                    provider = resp.headers["X-InferClub-Provider"]
                    for _ in resp.parse():
                        pass
                counter[provider] += 1
            except openai.APIStatusError:
                counter["error before the first byte"] += 1
            except openai.APIError:
                counter["stream cut after the first byte"] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each phase")
    parser.add_argument("--clients", type=int, default=6, help="concurrent streaming clients")
    args = parser.parse_args()
    engines = {name: FakeVllm(["m1"]).start() for name in NAMES}
    for engine in engines.values():
        engine.chunks, engine.chunk_delay = 8, 0.02
    with tempfile.TemporaryDirectory() as tmp, start_hub(Path(tmp)) as hub:
        key = hub.user_with_key("bench")
        agents = {
            name: start_agent_process(
                hub,
                key,
                Path(tmp) / f"{name}.yaml",
                {"name": "chat", "engine": "vllm", "url": engines[name].url},
                name=name,
            )
            for name in NAMES
        }
        client = openai.OpenAI(base_url=hub.api_base, api_key=key, max_retries=0)
        wait_models(client, {"m1"})
        stats: dict[str, collections.Counter[str]] = {}
        phase = ["all three"]
        stop = threading.Event()

        threads = [
            threading.Thread(target=run, args=(hub.api_base, key, stats, phase, stop))
            for _ in range(args.clients)
        ]
        for t in threads:
            t.start()
        time.sleep(args.seconds)
        phase[0] = "rig-2 killed"
        agents["rig-2"].proc.send_signal(signal.SIGKILL)
        time.sleep(args.seconds)
        stop.set()
        for t in threads:
            t.join(30)
        for agent in agents.values():
            agent.kill()
    for engine in engines.values():
        engine.close()
    rows = [*NAMES, "error before the first byte", "stream cut after the first byte"]
    print(f"{'phase':<14}" + "".join(f"{r:>32}" for r in rows))
    for name, counter in stats.items():
        print(f"{name:<14}" + "".join(f"{counter[r]:>32}" for r in rows))


if __name__ == "__main__":
    main()
