"""Thin Tornado handlers, one module per surface, each ending in ``routes = [...]``."""
