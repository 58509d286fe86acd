"""The hub: an OpenAI-compatible gateway that routes each user's requests to their own agents."""
