"""The native module's asyncio side: one `LoopDriver` per event loop, registered as a reader of
the loop, polls the loop's pending lockbroker futures on the loop's own thread."""

import os
import weakref

from . import _native

_drivers: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def driver(loop):
    """The `LoopDriver` of `loop` (made and registered on first use, again after `fork()`)."""
    d = _drivers.get(loop)
    if d is None or d.pid != os.getpid():
        d = _native.LoopDriver()
        loop.add_reader(d.fileno(), d.run)
        _drivers[loop] = d
    return d
