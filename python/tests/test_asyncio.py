"""The asyncio API against a real broker: `async with`, `await`, cancellation, `lost()`."""

import asyncio

import pytest

import lockbroker


async def test_async_with_holds_and_releases(client):
    async with client.lock("pya/with", ttl=10) as g:
        assert await client.ais_locked("pya/with")
        assert g.fence > 0
    assert not await client.ais_locked("pya/with")


async def test_many_tasks_take_turns_with_growing_fences(client):
    inside, fences = 0, []

    async def work():
        nonlocal inside
        async with client.lock("pya/turns", wait=10) as g:
            inside += 1
            assert inside == 1, "two holders at once"
            fences.append(g.fence)
            await asyncio.sleep(0.005)
            inside -= 1

    await asyncio.gather(*(work() for _ in range(20)))
    assert fences == sorted(fences) and len(fences) == 20


async def test_a_cancelled_lock_leaves_the_queue(client, broker):
    other = lockbroker.Client(broker.url, ca=broker.ca)
    held = await client.lock("pya/cancel")
    waiting = asyncio.ensure_future(other.lock("pya/cancel", wait=30))
    for _ in range(100):
        if (await client.ainspect("pya/cancel")).waiters == 1:
            break
        await asyncio.sleep(0.02)
    assert (await client.ainspect("pya/cancel")).waiters == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    for _ in range(100):
        if (await client.ainspect("pya/cancel")).waiters == 0:
            break
        await asyncio.sleep(0.02)
    assert (await client.ainspect("pya/cancel")).waiters == 0
    await held.aunlock()
    # Nobody was granted the key behind the holder's back.
    assert not await client.ais_locked("pya/cancel")
    other.close()


async def test_a_timeout_around_a_lock_gives_up_its_place(client, broker):
    other = lockbroker.Client(broker.url, ca=broker.ca)
    async with client.lock("pya/wait-for"):
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(other.lock("pya/wait-for"), 0.2)
        await asyncio.sleep(0.1)
        assert (await client.ainspect("pya/wait-for")).waiters == 0
    other.close()


async def test_lost_resolves_when_the_lease_is_lost(client, broker):
    g = await client.lock("pya/lost", ttl=60)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, broker.force_release, "pya/lost")
    why = await asyncio.wait_for(g.lost(), 5)
    assert isinstance(why, lockbroker.LeaseLost)
    assert g.is_lost
    with pytest.raises((lockbroker.LeaseLost, lockbroker.NotLocked)):
        await g.aunlock()


async def test_extend_renews_with_a_new_ttl(client):
    async with client.lock("pya/extend", ttl=2) as g:
        await g.aextend(30)
        [h] = (await client.ainspect("pya/extend")).holders
        assert h.remaining > 20


async def test_the_embedded_client_works_under_asyncio():
    c = lockbroker.Client.embedded()
    async with c.lock("k") as g:
        with pytest.raises(lockbroker.Busy):
            await c.try_lock("k")
    async with c.lock("k") as g2:
        assert g2.fence > g.fence


def test_event_loops_in_two_threads_share_one_client(client):
    # A service running an event loop per thread (or a loop in a worker thread beside the main
    # one): each loop's awaits complete on its own thread, whichever loop awaited last.
    import threading

    fences, errors = {}, []

    def worker(name):
        async def cycles():
            for i in range(50):
                async with client.lock(f"pya/threads/{name}", ttl=10) as g:
                    assert g.key == f"pya/threads/{name}"
                    fences.setdefault(name, []).append(g.fence)

        try:
            asyncio.run(cycles())
        except Exception as e:  # noqa: BLE001 - reported by the assert below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert all(len(fences[n]) == 50 for n in ("a", "b"))
    assert all(f == sorted(f) for f in fences.values())
