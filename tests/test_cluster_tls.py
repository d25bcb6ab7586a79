"""rediss:// against a real TLS redis-server: the certificate and the host name are verified."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.cluster.redisio import RedisLink, Timeouts
from agent.cluster.urls import parse_redis_url
from agent.errors import ClusterUnavailable
from tests.redisproc import running

pytestmark = pytest.mark.integration


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _cert(subject: str, issuer: str, key: ec.EllipticCurvePrivateKey,
          signer: ec.EllipticCurvePrivateKey, ca: bool, names: list[x509.GeneralName]
          ) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _pem(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def make_pki(root: Path, host_names: list[str]) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for ``host_names``: (ca, chain, key) files."""
    root.mkdir(parents=True, exist_ok=True)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("credsync test CA", "credsync test CA", ca_key, ca_key, True, [])
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in host_names]
    names += [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))] if "localhost" in host_names \
        else []
    server = _cert(host_names[0], "credsync test CA", key, ca_key, False, names)
    enc = serialization.Encoding.PEM
    key_pem = key.private_bytes(enc, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return (_pem(root / "ca.pem", ca.public_bytes(enc)),
            _pem(root / "chain.pem", server.public_bytes(enc)), _pem(root / "key.pem", key_pem))


def _link(port: int, ca: Path | None) -> RedisLink:
    return RedisLink(parse_redis_url(f"rediss://localhost:{port}/0", "--redis"), None,
                     Timeouts(2, 2), ca_file=ca)


def test_rediss_works_with_the_right_ca_and_refuses_otherwise(tmp_path: Path) -> None:
    ca, chain, key = make_pki(tmp_path / "pki", ["localhost"])
    with running(tmp_path / "redis", tls=(chain, key)) as server:
        good = _link(server.port, ca)
        assert good.time_ms() > 0
        good.close()
        unknown_ca = _link(server.port, None)  # the system's store does not know this CA
        with pytest.raises(ClusterUnavailable, match="certificate verify failed"):
            unknown_ca.ping()
        unknown_ca.close()


def test_rediss_refuses_a_certificate_for_another_host(tmp_path: Path) -> None:
    ca, chain, key = make_pki(tmp_path / "pki", ["redis.example.com"])
    with running(tmp_path / "redis", tls=(chain, key)) as server:
        link = _link(server.port, ca)
        with pytest.raises(ClusterUnavailable, match=r"(?i)hostname|certificate"):
            link.ping()
        link.close()
