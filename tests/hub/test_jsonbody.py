"""The hub's JSON loader at its limits (hub/jsonbody.py); the API's answers to hostile bodies
are in test_hostile_tenant_limits.py."""

from __future__ import annotations

import pytest

from inferclub.hub import jsonbody


def body_of_arrays(count: int) -> bytes:
    """A chat body holding ``count`` arrays and objects in all (``[`` and ``{`` inside strings
    do not count)."""
    arrays = b",".join([b"[]"] * (count - 2))
    return b'{"model": "[{[{", "messages": [' + arrays + b"]}"


def test_a_body_at_the_container_limit_is_read() -> None:
    data = jsonbody.loads(body_of_arrays(jsonbody.MAX_CONTAINERS))
    assert len(data["messages"]) == jsonbody.MAX_CONTAINERS - 2
    assert data["model"] == "[{[{"


def test_one_container_more_is_refused_before_it_is_decoded() -> None:
    with pytest.raises(jsonbody.JSONBodyError, match="more than 100,000 arrays and objects"):
        jsonbody.loads(body_of_arrays(jsonbody.MAX_CONTAINERS + 1))
