"""File descriptors: both programs raise their soft limit to the hard one at start.

Every client connection, agent connection and engine connection is a descriptor; the soft
limit many systems start processes with (1024) is reached by a hub with a few hundred streams.
Raising the soft limit up to the hard one needs no privilege.
"""

from __future__ import annotations

import errno
import logging

try:
    import resource
except ImportError:  # Windows: no RLIMIT_NOFILE
    resource = None  # type: ignore[assignment]

#: What ``OSError.errno`` says when a process (EMFILE) or the system (ENFILE) is out of them.
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})


def raise_nofile_limit(log: logging.Logger) -> int | None:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit and log the value; the limit now,
    or None where the platform has none."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        # An "unlimited" hard limit cannot be a soft one on every kernel (macOS): cap it.
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d: %s", soft, exc)
    log.info("open-files limit: %d", soft)
    return soft


def out_of_descriptors(exc: BaseException) -> bool:
    """Whether ``exc`` is this machine running out of file descriptors (not a remote fault)."""
    return isinstance(exc, OSError) and exc.errno in OUT_OF_DESCRIPTORS
