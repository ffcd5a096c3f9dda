"""lockbroker: distributed locks with fencing tokens, for asyncio and blocking code.

One Rust core (the lockbroker SDK, through the native module ``lockbroker._native``) with a
thin Python layer: a :class:`Client` connects to a broker (or a cluster of brokers), or runs
an in-process lock table (:meth:`Client.embedded`). Locks are taken with ``with`` /
``async with``, ``await``, or :meth:`LockRequest.acquire`; a :class:`Guard` holds the lease,
renewed in the background until it is unlocked, and carries its fencing token.

Durations are seconds (floats), as Python's locking libraries take them. Every error is a
:class:`LockError`.
"""

from __future__ import annotations

import os
import time
from typing import Iterable, List, Optional, Sequence, Union

from . import _native
from ._native import (
    Busy,
    Cancelled,
    Denied,
    InvalidRequest,
    LeaseLost,
    LimitExceeded,
    LockError,
    NotLocked,
    NotOwner,
    ProtocolError,
    Timeout,
    Unavailable,
)

__all__ = [
    "Client",
    "enable_metrics",
    "metrics",
    "LockRequest",
    "LockAllRequest",
    "Guard",
    "LockError",
    "Busy",
    "Timeout",
    "LeaseLost",
    "NotOwner",
    "NotLocked",
    "Unavailable",
    "Denied",
    "LimitExceeded",
    "InvalidRequest",
    "Cancelled",
    "ProtocolError",
]

Key = Union[str, bytes]


def enable_metrics() -> None:
    """Records the client metrics of every client in this process from now on (acquires and
    their waits by mode and outcome, hold times, lost leases, lock-cache hits, misses and
    recalls; the Rust SDK's names, ``lockbroker_client_*``). Read them with :func:`metrics`."""
    _native.enable_metrics()


def metrics() -> List[dict]:
    """The client metrics recorded since :func:`enable_metrics`, one dict per metric and label
    set: ``name``, ``labels`` (a dict), ``type`` — ``"counter"`` with ``value``, or
    ``"histogram"`` (seconds) with ``count``, ``sum`` and ``buckets``, a list of
    ``(upper bound, cumulative count)`` ending with ``inf``: what a Prometheus collector,
    statsd or a log line needs."""
    return _native.metrics_snapshot()
PathLike = Union[str, "os.PathLike[str]"]


class Guard:
    """A held lease. Renewed in the background until unlocked; :attr:`fence` is its fencing
    token. Leaving a ``with`` / ``async with`` block unlocks it; a guard dropped without unlock
    is released by the broker at once (fire-and-forget)."""

    __slots__ = ("_g", "_done")

    def __init__(self, native: _native.NativeGuard) -> None:
        self._g = native
        self._done = False

    @property
    def fence(self) -> int:
        """The fencing token: strictly larger than any earlier holder's of this key. Pass it
        to the resource the lock protects, and have it refuse smaller ones."""
        return self._g.fence

    @property
    def key(self) -> str:
        return self._g.key

    @property
    def mode(self) -> str:
        return self._g.mode

    @property
    def deadline(self) -> float:
        """When the lease would be reported lost if not renewed, on ``time.monotonic()``'s
        clock."""
        return time.monotonic() + self._g.remaining()

    @property
    def is_lost(self) -> bool:
        """True once the lease can no longer be guaranteed (another holder may have the key):
        stop the work it protects. Also true, in the child, for a guard inherited across
        ``fork()``."""
        return self._g.is_lost()

    async def lost(self) -> LeaseLost:
        """Waits until the lease is lost, and returns why (never returns while it is safe)."""
        return await self._g.lost()

    def extend(self, ttl: float) -> None:
        """Renews the lease now with a new TTL (seconds)."""
        self._g.extend(ttl, False)

    async def aextend(self, ttl: float) -> None:
        await self._g.extend(ttl, True)

    def unlock(self) -> None:
        """Releases the lock and waits for the broker to confirm. Raises :class:`LeaseLost`
        (or :class:`NotLocked`) if the lease ended before: the work it protected may have
        overlapped another holder's."""
        self._done = True
        self._g.unlock(False)

    async def aunlock(self) -> None:
        self._done = True
        await self._g.unlock(True)

    def __enter__(self) -> "Guard":
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:
            self.unlock()

    async def __aenter__(self) -> "Guard":
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self._done:
            await self.aunlock()

    def __repr__(self) -> str:
        return f"<lockbroker.Guard key={self.key!r} fence={self.fence} mode={self.mode}>"


def _guards(held: Union[Guard, List[Guard], None]) -> List[Guard]:
    if held is None:
        return []
    return [held] if isinstance(held, Guard) else held


class _Request:
    """What a lock request does in ``with``, ``async with`` and ``await``, whatever it holds
    (a :class:`Guard`, or a list of them)."""

    __slots__ = ("_client", "_args", "_held")

    def __init__(self, client: "Client", args: tuple) -> None:
        self._client = client
        self._args = args
        self._held = None

    def __await__(self):
        return self._aacquire().__await__()

    def __enter__(self):
        self._held = self.acquire()
        return self._held

    def __exit__(self, *exc: object) -> None:
        held, self._held = self._held, None
        for g in _guards(held):
            g.__exit__(*exc)

    async def __aenter__(self):
        self._held = await self._aacquire()
        return self._held

    async def __aexit__(self, *exc: object) -> None:
        held, self._held = self._held, None
        for g in _guards(held):
            await g.__aexit__(*exc)


class LockRequest(_Request):
    """A lock not taken yet. Take it with ``with`` (blocking), ``async with``, ``await`` (a
    :class:`Guard`), or :meth:`acquire` (blocking, a :class:`Guard`). Cancelling an awaiting
    task (``task.cancel()``, ``asyncio.timeout``) leaves the broker's queue."""

    __slots__ = ()

    def acquire(self) -> Guard:
        return Guard(self._client._native.lock(*self._args, False))

    async def _aacquire(self) -> Guard:
        return Guard(await self._client._native.lock(*self._args, True))


class LockAllRequest(_Request):
    """Several keys locked at once (exclusive), or none: ``with``, ``async with``, ``await``
    or :meth:`acquire` give one :class:`Guard` per key, in the order named."""

    __slots__ = ()

    def acquire(self) -> List[Guard]:
        return [Guard(g) for g in self._client._native.lock_all(*self._args, False)]

    async def _aacquire(self) -> List[Guard]:
        return [Guard(g) for g in await self._client._native.lock_all(*self._args, True)]


class Client:
    """A lockbroker client.

    ``Client("quic://broker:7420", ca="dev-ca.pem")`` — or a list of the URLs of a cluster's
    brokers — connects on first use, in each process (a client survives ``fork()``: the child
    connects anew, and guards it inherited read as lost). ``Client.embedded()`` is a lock
    table in this process. Methods block (releasing the GIL); the ones prefixed ``a`` are their
    asyncio versions.

    ``wait``: seconds to wait for a held key (``None``: forever; ``0``: not at all). ``ttl``:
    the lease's time to live in seconds (renewed in the background until unlocked).
    ``cert`` and ``key``: a client certificate and its private key (PEM files) for a broker
    that asks for one (mutual TLS; the broker names the client by the certificate's common
    name). ``cache_locks``: keep exclusive leases up to that many seconds after unlock and take them
    again without a round trip until another client asks (lock caching).
    """

    def __init__(
        self,
        url: Union[str, Sequence[str], None] = None,
        *,
        ca: Union[PathLike, Sequence[PathLike], None] = None,
        token: Optional[str] = None,
        owner: Optional[str] = None,
        cache_locks: Optional[float] = None,
        connect_timeout: Optional[float] = None,
        request_timeout: Optional[float] = None,
        cert: Optional[PathLike] = None,
        key: Optional[PathLike] = None,
        _embedded: bool = False,
    ) -> None:
        urls = [] if url is None else [url] if isinstance(url, str) else list(url)
        if not urls and not _embedded:
            raise InvalidRequest("a broker URL, a list of them, or Client.embedded()")
        cas = [] if ca is None else [ca] if isinstance(ca, (str, os.PathLike)) else list(ca)
        self._native = _native.NativeClient(
            urls,
            [os.fspath(c) for c in cas],
            token,
            owner,
            _embedded,
            cache_locks,
            connect_timeout,
            request_timeout,
            None if cert is None else os.fspath(cert),
            None if key is None else os.fspath(key),
        )

    @classmethod
    def embedded(cls, *, owner: Optional[str] = None) -> "Client":
        """A lock table in this process: the same API, no broker, no network."""
        return cls(None, owner=owner, _embedded=True)

    def lock(
        self,
        key: Key,
        *,
        ttl: Optional[float] = None,
        wait: Optional[float] = None,
        owner: Optional[str] = None,
        cache: Optional[bool] = None,
    ) -> LockRequest:
        """An exclusive lock of `key`."""
        return LockRequest(self, (key, "exclusive", 0, ttl, wait, owner, cache))

    def try_lock(
        self,
        key: Key,
        *,
        ttl: Optional[float] = None,
        owner: Optional[str] = None,
        cache: Optional[bool] = None,
    ) -> LockRequest:
        """An exclusive lock of `key` that does not wait (:class:`Busy` if held)."""
        return LockRequest(self, (key, "exclusive", 0, ttl, 0.0, owner, cache))

    def read_lock(
        self,
        key: Key,
        *,
        ttl: Optional[float] = None,
        wait: Optional[float] = None,
        owner: Optional[str] = None,
    ) -> LockRequest:
        """A shared lock of `key`: any number of readers, no writer."""
        return LockRequest(self, (key, "shared", 0, ttl, wait, owner, None))

    def semaphore(
        self,
        key: Key,
        permits: int,
        *,
        ttl: Optional[float] = None,
        wait: Optional[float] = None,
        owner: Optional[str] = None,
    ) -> LockRequest:
        """One of `permits` places on `key`."""
        return LockRequest(self, (key, "semaphore", permits, ttl, wait, owner, None))

    def lock_all(
        self,
        keys: Iterable[Key],
        *,
        ttl: Optional[float] = None,
        wait: Optional[float] = None,
        owner: Optional[str] = None,
    ) -> LockAllRequest:
        """Every key of `keys` locked at once (exclusive), or none."""
        return LockAllRequest(self, (list(keys), ttl, wait, owner))

    def inspect(self, key: Key) -> "_native.Info":
        """Holders (fence, mode, TTL left, owner label, cached), waiters of `key`."""
        return self._native.inspect(key, False)

    async def ainspect(self, key: Key) -> "_native.Info":
        return await self._native.inspect(key, True)

    def principal(self) -> str:
        """Who the broker says this client is: the certificate's or the token's principal, or
        ``"anonymous"``."""
        return self._native.principal(False)

    async def aprincipal(self) -> str:
        return await self._native.principal(True)

    def is_locked(self, key: Key) -> bool:
        return self._native.is_locked(key, False)

    async def ais_locked(self, key: Key) -> bool:
        return await self._native.is_locked(key, True)

    def wait_until_unlocked(self, key: Key, timeout: Optional[float] = None) -> str:
        """Waits until nobody holds `key`: ``"released"`` or ``"expired"``."""
        return self._native.wait_until_unlocked(key, timeout, False)

    async def await_until_unlocked(self, key: Key, timeout: Optional[float] = None) -> str:
        return await self._native.wait_until_unlocked(key, timeout, True)

    def elect(self, key: Key, label: str) -> Guard:
        """Campaigns for leadership of `key` under `label`; returns once elected."""
        return Guard(self._native.elect(key, label, False))

    async def aelect(self, key: Key, label: str) -> Guard:
        return Guard(await self._native.elect(key, label, True))

    def leader(self, key: Key) -> Optional[str]:
        """The label of `key`'s leader, if it has one."""
        return self._native.leader(key, False)

    async def aleader(self, key: Key) -> Optional[str]:
        return await self._native.leader(key, True)

    def close(self) -> None:
        """Closes the connections: the broker releases this client's leases at once."""
        self._native.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
