"""The client metrics from Python: after enable_metrics(), a lock counts as an acquire with
its wait, an unlock as a hold, and a lease an operator revokes as lost."""

import time

import lockbroker


def sample(name, **labels):
    for m in lockbroker.metrics():
        if m["name"] == name and all(m["labels"].get(k) == v for k, v in labels.items()):
            return m
    return None


def counter(name, **labels):
    m = sample(name, **labels)
    return 0 if m is None else m["value"]


def histogram_count(name, **labels):
    m = sample(name, **labels)
    return 0 if m is None else m["count"]


def test_locks_holds_and_a_lost_lease_are_counted(broker, client):
    lockbroker.enable_metrics()
    lockbroker.enable_metrics()  # idempotent
    acquires = counter("lockbroker_client_acquires_total", mode="exclusive")
    waits = histogram_count(
        "lockbroker_client_acquire_wait_seconds", mode="exclusive", outcome="granted"
    )
    holds = histogram_count("lockbroker_client_hold_seconds", mode="exclusive")
    lost = counter("lockbroker_client_lost_leases_total", mode="exclusive")

    for i in range(3):
        with client.lock(f"metrics/{i}", ttl=5):
            pass
    assert counter("lockbroker_client_acquires_total", mode="exclusive") == acquires + 3
    assert (
        histogram_count(
            "lockbroker_client_acquire_wait_seconds", mode="exclusive", outcome="granted"
        )
        == waits + 3
    )
    hold = sample("lockbroker_client_hold_seconds", mode="exclusive")
    assert hold["type"] == "histogram" and hold["count"] == holds + 3
    assert hold["buckets"][-1] == (float("inf"), hold["count"])
    assert 0 <= hold["sum"] < 60

    # An operator revokes a held lease: the guard reads lost, and the loss is counted.
    g = client.lock("metrics/revoked", ttl=60).acquire()
    broker.force_release("metrics/revoked")
    deadline = time.monotonic() + 10
    while not g.is_lost and time.monotonic() < deadline:
        time.sleep(0.01)
    assert g.is_lost
    assert counter("lockbroker_client_lost_leases_total", mode="exclusive") == lost + 1
