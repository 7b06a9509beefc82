"""Short garbage-collector pauses for the long-running processes (server, worker).

Why: CPython's oldest-generation collection walks every tracked object, and a started server
holds hundreds of thousands that live for ever (grpc, protobuf descriptors, SQLAlchemy's
compiled statements, the modules themselves). Under `zimsend bench` e2e such a collection
came every ~10 s and held the GIL 115–250 ms, every thread of the process stopped: every
message accepted meanwhile waited that long for its phone (issue 18's accept → phone p99).
`gc.freeze()` once the process has started moves what exists then into a permanent
generation that collections skip; measured there, the same collections took ~7–8 ms. The cost
is that garbage cycles created before the freeze are never freed (startup leaves few).
"""

from __future__ import annotations

import gc

__all__ = ["freeze_startup_objects"]


def freeze_startup_objects() -> None:
    """Collect what startup left, then exempt every surviving object from later collections.
    Call once, when the process has started (its imports done, its listeners open)."""
    gc.collect()
    gc.freeze()
