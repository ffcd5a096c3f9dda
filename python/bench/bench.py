"""lockbroker's Python benchmark, one run, each figure against its reference on this machine:

1. lock + unlock against redis-py's ``Lock`` (``SET NX PX`` + its release script) on a local
   redis-server, asyncio (``async with client.lock(...)`` against ``redis.asyncio``'s Lock) and
   blocking (``with client.lock(...)`` against ``redis.Redis``'s): the ratio Redis ÷ lockbroker
   (above 1: lockbroker is faster);
2. what the binding adds per lock + unlock cycle over the Rust SDK: the same client's cycles
   from Python (blocking and asyncio) against ``rust_cycles`` (the cycles run in Rust, no
   Python per cycle), networked and embedded.

Usage (a release wheel and broker are what users run):

    cargo build --release -p lockbroker
    python3 -m maturin build --release -m python/Cargo.toml -o target/wheels
    python3 -m pip install --force-reinstall target/wheels/lockbroker-*.whl
    LOCKBROKER_BIN=target/release/lockbroker python3 python/bench/bench.py

Rounds alternate the systems so drift hits all alike; p50s of per-cycle times are reported.
"""

import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import redis  # noqa: E402
import redis.asyncio  # noqa: E402

import lockbroker  # noqa: E402
from conftest import Broker  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
CYCLES = int(os.environ.get("BENCH_CYCLES", "2000"))


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def p50_us(samples):
    return statistics.median(samples) * 1e6


async def broker_cycles(client, n, out):
    for _ in range(n):
        t = time.perf_counter()
        async with client.lock("bench/py/async", ttl=30):
            pass
        out.append(time.perf_counter() - t)


async def redis_cycles(r, n, out):
    for _ in range(n):
        t = time.perf_counter()
        lock = r.lock("bench/py/redis", timeout=30)
        await lock.acquire()
        await lock.release()
        out.append(time.perf_counter() - t)


def sync_pairs(client, r, n, b, rd):
    """Blocking cycles, lockbroker and redis-py alternating `n` times each, per-cycle times."""
    for _ in range(n):
        t = time.perf_counter()
        with client.lock("bench/py/sync", ttl=30):
            pass
        b.append(time.perf_counter() - t)
        t = time.perf_counter()
        lock = r.lock("bench/py/redis-sync", timeout=30)
        lock.acquire()
        lock.release()
        rd.append(time.perf_counter() - t)


def blocking_cycles(client, key, n):
    t = time.perf_counter()
    for _ in range(n):
        with client.lock(key, ttl=30):
            pass
    return (time.perf_counter() - t) / n


async def asyncio_cycles(client, key, n):
    t = time.perf_counter()
    for _ in range(n):
        async with client.lock(key, ttl=30):
            pass
    return (time.perf_counter() - t) / n


def main():
    broker = Broker()
    redis_dir = tempfile.mkdtemp(prefix="lockbroker-py-bench-redis-")
    port = free_tcp_port()
    redis_proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", redis_dir],
        stdout=subprocess.DEVNULL,
    )
    try:
        client = lockbroker.Client(broker.url, ca=broker.ca)
        embedded = lockbroker.Client.embedded()

        async def run():
            r = redis.asyncio.Redis(host="127.0.0.1", port=port)
            for _ in range(100):
                try:
                    await r.ping()
                    break
                except Exception:
                    await asyncio.sleep(0.05)
            b, rd = [], []
            await broker_cycles(client, CYCLES // 10, [])
            await redis_cycles(r, CYCLES // 10, [])
            for _ in range(ROUNDS):
                await broker_cycles(client, CYCLES, b)
                await redis_cycles(r, CYCLES, rd)
            await r.aclose()
            return b, rd

        b, rd = asyncio.run(run())
        print(f"asyncio lock + unlock p50: lockbroker {p50_us(b):.1f} µs, "
              f"redis-py Lock {p50_us(rd):.1f} µs: Redis ÷ lockbroker = {p50_us(rd) / p50_us(b):.2f}")
        r = redis.Redis(host="127.0.0.1", port=port)
        sb, srd = [], []
        sync_pairs(client, r, CYCLES // 10, [], [])
        for _ in range(ROUNDS):
            sync_pairs(client, r, CYCLES, sb, srd)
        r.close()
        print(f"blocking lock + unlock p50: lockbroker {p50_us(sb):.1f} µs, "
              f"redis-py Lock {p50_us(srd):.1f} µs: Redis ÷ lockbroker = {p50_us(srd) / p50_us(sb):.2f}")

        for name, c in [("networked", client), ("embedded", embedded)]:
            key = f"bench/py/overhead-{name}"
            rust, sync, aio = [], [], []
            c._native.rust_cycles(key, CYCLES // 10)
            for _ in range(ROUNDS):
                rust.append(c._native.rust_cycles(key, CYCLES) / CYCLES)
                sync.append(blocking_cycles(c, key, CYCLES))
                aio.append(asyncio.run(asyncio_cycles(c, key, CYCLES)))
            r_us = statistics.median(rust) * 1e6
            s_us = statistics.median(sync) * 1e6
            a_us = statistics.median(aio) * 1e6
            print(f"{name}: Rust SDK cycle {r_us:.2f} µs; Python blocking {s_us:.2f} µs "
                  f"(+{s_us - r_us:.2f} µs), asyncio {a_us:.2f} µs (+{a_us - r_us:.2f} µs)")
        client.close()
    finally:
        redis_proc.kill()
        redis_proc.wait()
        shutil.rmtree(redis_dir, ignore_errors=True)
        broker.stop()


if __name__ == "__main__":
    main()
