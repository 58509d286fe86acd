"""The builtin engines, registered like any third-party plugin (see `inferclub.engines.plugins`)."""
