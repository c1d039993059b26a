#!/usr/bin/env python3
"""TLS certificates and SuperNode key pairs for a loopback Flower deployment with
SuperNode authentication (`flower-superlink --enable-supernode-auth`, which needs TLS).

    FLWR_VENV/bin/python interop/flower/make_auth_material.py OUT alpha beta gamma rogue

Needs the `cryptography` package (a flwr dependency). Writes under OUT:
  ca.pem, ca.key                self-signed CA (EC P-256, 1 day)
  server.pem, server.key        SuperLink certificate signed by the CA, SAN 127.0.0.1, ::1,
                                localhost (for --ssl-certfile / --ssl-keyfile; the CA goes to
                                --ssl-ca-certfile, to SuperNodes' --root-certificates and to
                                root-certificates in $FLWR_HOME/config.toml)
  nodes/<name>.key.pem          P-384 private key, PEM PKCS8        (fedprompt flower-node --auth-key)
  nodes/<name>.pub.pem          public key, PEM SubjectPublicKeyInfo (what the SuperLink stores)
  nodes/<name>.key              same private key, OpenSSH format     (flower-supernode --auth-supernode-private-key)
  nodes/<name>.pub              same public key, OpenSSH format      (flwr supernode register <file> <superlink>)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_tls(out: Path) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedprompt interop test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(srv_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                    x509.DNSName("localhost"),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(out / "ca.pem", ca.public_bytes(serialization.Encoding.PEM))
    _write(out / "ca.key", _key_pem(ca_key), private=True)
    _write(out / "server.pem", srv.public_bytes(serialization.Encoding.PEM))
    _write(out / "server.key", _key_pem(srv_key), private=True)


def make_node_keys(out: Path, name: str) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    pub = key.public_key()
    _write(out / f"{name}.key.pem", _key_pem(key), private=True)
    _write(
        out / f"{name}.pub.pem",
        pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    )
    _write(
        out / f"{name}.key",
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ),
        private=True,
    )
    _write(
        out / f"{name}.pub",
        pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        + f" {name}\n".encode(),
    )


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    (out / "nodes").mkdir(parents=True, exist_ok=True)
    make_tls(out)
    for name in argv[1:]:
        make_node_keys(out / "nodes", name)
    print(f"wrote CA, server certificate and {len(argv) - 1} node key pairs under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
