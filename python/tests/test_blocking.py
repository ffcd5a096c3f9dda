"""The blocking API against a real broker: what a service written as python/README.md shows
does."""

import gc
import time

import pytest

import lockbroker


def test_a_lock_held_in_a_with_block_is_released_at_its_end(client):
    with client.lock("py/with", ttl=10) as g:
        assert g.key == "py/with" and g.mode == "exclusive"
        assert not g.is_lost and g.deadline > time.monotonic()
        assert client.is_locked("py/with")
        with pytest.raises(lockbroker.Busy):
            client.try_lock("py/with").acquire()
    assert not client.is_locked("py/with")


def test_fences_grow_from_holder_to_holder(client, broker):
    other = lockbroker.Client(broker.url, ca=broker.ca)
    fences = []
    for c in [client, other, client, other]:
        with c.lock("py/fences", wait=5) as g:
            fences.append(g.fence)
    assert fences == sorted(fences) and len(set(fences)) == 4
    other.close()


def test_readers_share_and_a_semaphore_counts(client):
    a = client.read_lock("py/shared").acquire()
    b = client.read_lock("py/shared").acquire()
    with pytest.raises(lockbroker.Busy):
        client.try_lock("py/shared").acquire()
    a.unlock()
    b.unlock()
    permits = [client.semaphore("py/sem", 2, wait=0).acquire() for _ in range(2)]
    with pytest.raises(lockbroker.Busy):
        client.semaphore("py/sem", 2, wait=0).acquire()
    for p in permits:
        p.unlock()


def test_lock_all_takes_every_key_or_none(client):
    held = client.try_lock("py/all/b").acquire()
    with pytest.raises(lockbroker.Busy):
        client.lock_all(["py/all/a", "py/all/b"], wait=0).acquire()
    assert not client.is_locked("py/all/a")
    held.unlock()
    with client.lock_all(["py/all/a", "py/all/b"]) as guards:
        assert [g.key for g in guards] == ["py/all/a", "py/all/b"]
    assert not client.is_locked("py/all/b")


def test_inspect_shows_the_holder_and_its_owner_label(client):
    with client.lock("py/inspect", ttl=20, owner="worker-7") as g:
        info = client.inspect("py/inspect")
        assert info.key == "py/inspect"
        [h] = info.holders
        assert (h.fence, h.mode, h.owner, h.cached) == (g.fence, "exclusive", "worker-7", False)
        assert 0 < h.remaining <= 20


def test_a_leader_is_elected_and_named(client):
    with client.elect("py/leader", "node-a"):
        assert client.leader("py/leader") == "node-a"
    assert client.leader("py/leader") is None


def test_a_bounded_wait_times_out_with_the_brokers_message(client, broker):
    other = lockbroker.Client(broker.url, ca=broker.ca)
    with client.lock("py/timeout"):
        start = time.monotonic()
        with pytest.raises(lockbroker.Timeout) as err:
            other.lock("py/timeout", wait=0.3).acquire()
        assert time.monotonic() - start >= 0.25
        assert "timed out" in str(err.value)
        assert isinstance(err.value, lockbroker.LockError)
    other.close()


def test_a_guard_dropped_without_unlock_is_released(client):
    g = client.lock("py/dropped").acquire()
    del g
    gc.collect()
    assert client.wait_until_unlocked("py/dropped", timeout=5) == "released"


def test_a_lost_lease_is_reported_and_its_unlock_raises(client, broker):
    g = client.lock("py/lost", ttl=60).acquire()
    broker.force_release("py/lost")
    deadline = time.monotonic() + 5
    while not g.is_lost:
        assert time.monotonic() < deadline, "the holder was not told within 5 s (TTL 60 s)"
        time.sleep(0.05)
    with pytest.raises((lockbroker.LeaseLost, lockbroker.NotLocked)):
        g.unlock()


def test_bad_input_gets_a_clear_error(client, broker):
    with pytest.raises(ValueError):
        client.lock("py/bad", ttl=-1).acquire()
    with pytest.raises(ValueError):
        client.lock(42).acquire()
    with pytest.raises(lockbroker.InvalidRequest):
        lockbroker.Client()
    with pytest.raises(lockbroker.Unavailable):
        lockbroker.Client("quic://127.0.0.1:9", ca=broker.ca, connect_timeout=0.5).is_locked("k")
    with pytest.raises(lockbroker.InvalidRequest) as err:
        lockbroker.Client("quic://127.0.0.1:9").is_locked("k")
    assert "no CA configured" in str(err.value)


def test_the_embedded_client_locks_in_process():
    c = lockbroker.Client.embedded()
    with c.lock("k") as g:
        with pytest.raises(lockbroker.Busy):
            c.try_lock("k").acquire()
        assert c.inspect("k").holders[0].fence == g.fence
    assert not c.is_locked("k")


def test_a_blocking_wait_releases_the_gil(client, broker):
    import threading

    other = lockbroker.Client(broker.url, ca=broker.ca)
    ticks = 0
    with client.lock("py/gil"):
        done = threading.Event()

        def wait_for_it():
            try:
                other.lock("py/gil", wait=1.0).acquire()
            except lockbroker.Timeout:
                pass
            done.set()

        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        # This thread keeps running Python while the other waits in the SDK.
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)
        waiter.join()
    assert ticks > 100, f"the main thread ran only {ticks} times during a 1 s wait"
    other.close()
