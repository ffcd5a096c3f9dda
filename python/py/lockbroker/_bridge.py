"""Resolves the asyncio futures of the native module (called on the future's own loop)."""


def resolve(fut, ok, value):
    """Sets `fut`'s result (`ok`) or exception, unless it was cancelled meanwhile."""
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)
