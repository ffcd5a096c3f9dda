"""Mutual TLS from Python: a broker that requires a client certificate names the client by its
common name; without one, or with one from another CA, the client is refused. Certificates are
made with the openssl CLI (the test command installs it)."""

import os
import subprocess

import pytest

import lockbroker
from conftest import Broker


def make_ca(dir: str, name: str) -> "tuple[str, str]":
    cert, key = os.path.join(dir, f"{name}-ca.pem"), os.path.join(dir, f"{name}-ca-key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name} CA"],
        check=True, capture_output=True,
    )
    return cert, key


def make_client_cert(dir: str, ca: "tuple[str, str]", cn: str) -> "tuple[str, str]":
    cert, key, csr = (os.path.join(dir, f"{cn}{ext}") for ext in (".pem", "-key.pem", ".csr"))
    subprocess.run(
        ["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", key, "-out", csr, "-subj", f"/CN={cn}"],
        check=True, capture_output=True,
    )
    ext = os.path.join(dir, f"{cn}.ext")
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    subprocess.run(
        ["openssl", "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1],
         "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    dir = str(tmp_path_factory.mktemp("pki"))
    ca = make_ca(dir, "clients")
    other_ca = make_ca(dir, "other")
    return {
        "ca": ca[0],
        "carol": make_client_cert(dir, ca, "carol"),
        "mallory": make_client_cert(dir, other_ca, "mallory"),
    }


@pytest.fixture(scope="module")
def mtls_broker(pki):
    b = Broker(config=f'[tls]\nclient_ca = "{pki["ca"]}"\nrequire_client_cert = true\n')
    yield b
    b.stop()


def test_a_client_certificate_names_the_client(mtls_broker, pki):
    cert, key = pki["carol"]
    client = lockbroker.Client(mtls_broker.url, ca=mtls_broker.ca, cert=cert, key=key)
    assert client.principal() == "carol"
    with client.lock("mtls/job", ttl=5) as g:
        assert g.fence > 0
        holder = client.inspect("mtls/job").holders[0]
        assert holder.fence == g.fence
    client.close()


async def test_asyncio_with_a_client_certificate(mtls_broker, pki):
    cert, key = pki["carol"]
    client = lockbroker.Client(mtls_broker.url, ca=mtls_broker.ca, cert=cert, key=key)
    assert await client.aprincipal() == "carol"
    async with client.lock("mtls/async", ttl=5) as g:
        assert g.fence > 0
    client.close()


def test_no_certificate_or_another_cas_is_refused(mtls_broker, pki):
    anonymous = lockbroker.Client(mtls_broker.url, ca=mtls_broker.ca, connect_timeout=5)
    with pytest.raises(lockbroker.LockError) as refused:
        anonymous.try_lock("mtls/job").acquire()
    assert "certificate" in str(refused.value), refused.value
    anonymous.close()
    cert, key = pki["mallory"]
    stranger = lockbroker.Client(
        mtls_broker.url, ca=mtls_broker.ca, cert=cert, key=key, connect_timeout=5
    )
    with pytest.raises(lockbroker.LockError):
        stranger.try_lock("mtls/job").acquire()
    stranger.close()


def test_a_certificate_without_its_key_or_a_missing_file_is_refused_at_once(pki):
    cert, _ = pki["carol"]
    with pytest.raises(ValueError):
        lockbroker.Client("quic://127.0.0.1:1", cert=cert)
    with pytest.raises(OSError):
        lockbroker.Client("quic://127.0.0.1:1", cert=cert, key="/nonexistent/key.pem")
