"""The open-files limit: raised to the hard one at start (hub and agent), and running out of
descriptors is the hub's own overload, never blamed on an agent."""

from __future__ import annotations

import errno
import resource
import subprocess
import sys

import pytest

from inferclub.hub.relay import Timeouts, Upstream
from inferclub.hub.relay.connect import open_upstream
from inferclub.openai_errors import OpenAIError

SHOW = (
    "import logging, resource; from inferclub.fdlimit import raise_nofile_limit;"
    "print(raise_nofile_limit(logging.getLogger()), *resource.getrlimit(resource.RLIMIT_NOFILE))"
)


def _low_soft_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))


@pytest.mark.subprocess
def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SHOW],
        preexec_fn=_low_soft_limit,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    now, soft, hard = (int(x) for x in out)
    assert now == soft > 256
    assert soft == hard or hard == resource.RLIM_INFINITY


class OutOfDescriptors:
    """A client session whose every connect finds the process out of descriptors."""

    async def post(self, *args: object, **kwargs: object) -> None:
        raise OSError(errno.EMFILE, "Too many open files")


async def test_out_of_descriptors_is_503_hub_overloaded_not_an_agent_error() -> None:
    upstream = Upstream("http://127.0.0.1:9/v1/chat/completions", {})
    with pytest.raises(OpenAIError) as exc:
        await open_upstream(OutOfDescriptors(), Timeouts(1, 1, 1), upstream, b"{}")  # type: ignore[arg-type]
    err = exc.value
    assert (err.status, err.code, err.type) == (503, "hub_overloaded", "service_unavailable")
    assert err.headers["Retry-After"] == "1" and "agent" not in err.message
