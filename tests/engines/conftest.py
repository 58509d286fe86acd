from __future__ import annotations

# The plugin tests run the agent against the fake hub, like the agent tests.
from tests.agent.conftest import hub, start_agent

__all__ = ["hub", "start_agent"]
