"""A local certificate authority and the SuperLink's TLS certificate, for trying a TLS federation
on one machine (or a small test network).

    python -m server.credentials deploy/certificates --host 127.0.0.1 --host localhost

writes ``ca.crt`` / ``ca.key`` (the authority), ``server.pem`` / ``server.key`` (the SuperLink's
certificate, valid for every ``--host``). The SuperLink gets ``--ssl-ca-certfile ca.crt
--ssl-certfile server.pem --ssl-keyfile server.key``; every SuperNode and the ``flwr`` CLI get
``ca.crt`` to verify it. In a real deployment the organisation's own CA issues the server
certificate for the SuperLink's public name, and only ``ca.crt`` (or the CA bundle) is handed out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY = "ca.crt", "ca.key", "server.pem", "server.key"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "crossrec federation"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)  # a replaced file keeps its old mode otherwise
        fh.write(data)


_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
MAX_DAYS = 36500


def check_host(host: str) -> str:
    """``host`` if it is an IP address or a DNS name (what a certificate can name), else ValueError."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    if 0 < len(host) <= 253 and all(_DNS_LABEL.match(label) for label in host.rstrip(".").split(".")):
        return host
    raise ValueError(f"--host {host!r} is neither an IP address nor a DNS name (give no port, scheme or path)")


def write_certificates(folder: Path, hosts: list[str], *, days: int = 365, overwrite: bool = False) -> dict[str, Path]:
    """A new CA and a server certificate for ``hosts`` (IP addresses or DNS names) in ``folder``."""
    if not hosts:
        raise ValueError("give at least one --host the SuperLink is reached at")
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"--days must be between 1 and {MAX_DAYS}, got {days}")
    sans = [_san(check_host(h)) for h in hosts]
    paths = {n: folder / n for n in (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY)}
    existing = [p for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; not replacing credentials (use --overwrite)")
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (
        x509.CertificateBuilder().subject_name(_name("crossrec local CA")).issuer_name(_name("crossrec local CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server = (
        x509.CertificateBuilder().subject_name(_name("crossrec SuperLink")).issuer_name(ca.subject)
        .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write_key(paths[CA_KEY], ca_key)
    _write_key(paths[SERVER_KEY], server_key)
    paths[CA_CERT].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[SERVER_CERT].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.credentials", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where to write ca.crt, ca.key, server.pem, server.key")
    parser.add_argument("--host", action="append", default=[], help="an address or name the SuperLink is reached at (repeatable)")
    parser.add_argument("--days", type=int, default=365, help="validity of the certificates")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)
    try:
        paths = write_certificates(args.folder, args.host or ["127.0.0.1", "localhost"], days=args.days, overwrite=args.overwrite)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"{name:11s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
