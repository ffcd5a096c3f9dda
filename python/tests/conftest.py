"""Fixtures: a real `lockbroker serve` on an ephemeral loopback port (memory only, its dev
certificate), started per test module and stopped by its own handle; the binary is
`$LOCKBROKER_BIN`, else the workspace's `target/debug/lockbroker` (built by the test command)."""

import json
import os
import pathlib
import queue
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def lockbroker_bin() -> str:
    path = os.environ.get("LOCKBROKER_BIN") or str(ROOT / "target" / "debug" / "lockbroker")
    if not os.path.exists(path):
        pytest.fail(f"no lockbroker binary at {path} (cargo build --bins, or set LOCKBROKER_BIN)")
    return path


def free_port(kind: int) -> int:
    """A free loopback port (UDP: `socket.SOCK_DGRAM`, TCP: `socket.SOCK_STREAM`)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """One broker process: its URL, dev certificate, admin address and admin token."""

    def __init__(self, listen: str = "127.0.0.1:0", config: str = "") -> None:
        self.dir = tempfile.mkdtemp(prefix="lockbroker-py-")
        args = [
            lockbroker_bin(),
            "serve",
            "--listen",
            listen,
            "--data-dir",
            self.dir,
            "--admin-listen",
            "127.0.0.1:0",
        ]
        if config:
            path = os.path.join(self.dir, "broker.toml")
            with open(path, "w") as f:
                f.write(config)
            args += ["--config", path]
        # Its log, for a failing test to show (`describe`).
        log = open(os.path.join(self.dir, "broker.log"), "w")
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "LOCKBROKER_LOG": "info"},
        )
        log.close()
        lines: "queue.Queue[str]" = queue.Queue()
        threading.Thread(target=self._read, args=(lines,), daemon=True).start()
        self.url = self.admin = None
        while self.url is None or self.admin is None:
            try:
                line = lines.get(timeout=60)
            except queue.Empty:
                self.stop()
                pytest.fail("the broker printed no banner within 60 s")
            if line.startswith("lockbroker listening on "):
                self.url = "quic://" + line.split()[3].split("/")[0]
            if line.startswith("admin listening on http://"):
                self.admin = line.split("http://")[1].split("/")[0]
        self.ca = os.path.join(self.dir, "dev-cert.pem")

    def _read(self, lines: "queue.Queue[str]") -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            lines.put(line.strip())

    def describe(self, lines: int = 40) -> str:
        """What the broker says of itself, for a failure message: `/readyz` and its log's tail."""
        try:
            with urllib.request.urlopen(f"http://{self.admin}/readyz", timeout=5) as r:
                ready = f"{r.status} {r.read().decode(errors='replace')}"
        except urllib.error.HTTPError as e:
            ready = f"{e.code} {e.read().decode(errors='replace')}"
        except OSError as e:
            ready = f"unreachable: {e}"
        try:
            with open(os.path.join(self.dir, "broker.log"), errors="replace") as f:
                tail = "".join(f.readlines()[-lines:])
        except OSError as e:
            tail = f"no log: {e}"
        return f"--- {self.url} /readyz: {ready}\n{tail}"

    def force_release(self, key: str) -> None:
        """An operator ends the lease of `key` (the admin API, with the broker's token)."""
        with open(os.path.join(self.dir, "admin-token")) as f:
            token = f.read().strip()
        req = urllib.request.Request(
            f"http://{self.admin}/api/release",
            data=json.dumps({"key": key}).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200

    def terminate(self) -> None:
        """SIGTERM: a planned stop (in a cluster, its shards are handed over)."""
        self.proc.terminate()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


class Etcd:
    """A one-member etcd on loopback ports, with its data in a temporary directory."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="lockbroker-py-etcd-")
        client, peer = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
        self.endpoint = f"http://127.0.0.1:{client}"
        peer_url = f"http://127.0.0.1:{peer}"
        self.proc = subprocess.Popen(
            [
                "etcd",
                "--name", "py",
                "--data-dir", os.path.join(self.dir, "member"),
                "--listen-client-urls", self.endpoint,
                "--advertise-client-urls", self.endpoint,
                "--listen-peer-urls", peer_url,
                "--initial-advertise-peer-urls", peer_url,
                "--initial-cluster", f"py={peer_url}",
                "--initial-cluster-state", "new",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(self.endpoint + "/health", timeout=1) as r:
                    if b'"health":"true"' in r.read():
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail("etcd did not come up within 30 s")
            time.sleep(0.1)

    def broker_config(self, name: str, port: int) -> str:
        return f"""
[cluster]
etcd = ["{self.endpoint}"]
name = "py"
key_file = "{os.path.join(self.dir, 'cluster.key')}"
broker = "{name}"
advertise = "127.0.0.1:{port}"
shards = 8
"""

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    """etcd and two brokers of one cluster (the second started after the first created the
    cluster key)."""
    etcd = Etcd()
    brokers = []
    try:
        for name in ["p1", "p2"]:
            port = free_port(socket.SOCK_DGRAM)
            brokers.append(Broker(f"127.0.0.1:{port}", etcd.broker_config(name, port)))
        yield brokers
    finally:
        for b in brokers:
            b.stop()
        etcd.stop()


@pytest.fixture(scope="module")
def broker():
    b = Broker()
    yield b
    b.stop()


@pytest.fixture
def client(broker):
    import lockbroker

    c = lockbroker.Client(broker.url, ca=broker.ca)
    yield c
    c.close()
