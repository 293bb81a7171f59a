"""Local TLS credentials and SuperNode keys: what they are, checked with the cryptography library."""

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from client.keys import write_key_pair
from server.credentials import CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, write_certificates


def test_the_server_certificate_is_issued_by_the_ca_for_every_host(tmp_path):
    paths = write_certificates(tmp_path, ["127.0.0.1", "link.example.org"])
    ca = x509.load_pem_x509_certificate(paths[CA_CERT].read_bytes())
    server = x509.load_pem_x509_certificate(paths[SERVER_CERT].read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["link.example.org"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in (CA_KEY, SERVER_KEY):
        assert stat.S_IMODE(paths[key].stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(paths[SERVER_KEY].read_bytes(), None)
    assert key.public_key().public_numbers() == server.public_key().public_numbers()


def test_existing_credentials_are_never_replaced_silently(tmp_path):
    write_certificates(tmp_path, ["127.0.0.1"])
    before = (tmp_path / CA_KEY).read_bytes()
    with pytest.raises(FileExistsError):
        write_certificates(tmp_path, ["127.0.0.1"])
    assert (tmp_path / CA_KEY).read_bytes() == before
    with pytest.raises(ValueError):
        write_certificates(tmp_path / "other", [])


def test_a_node_key_pair_is_p384_in_openssh_format(tmp_path):
    private, public = write_key_pair(tmp_path / "keys" / "Toys", comment="Toys")
    key = serialization.load_ssh_private_key(private.read_bytes(), None)
    pub = serialization.load_ssh_public_key(public.read_bytes())
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert key.public_key().public_numbers() == pub.public_numbers()
    assert public.read_text().rstrip().endswith(" Toys") and stat.S_IMODE(private.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        write_key_pair(tmp_path / "keys" / "Toys")


def test_replaced_credentials_get_private_modes_and_bad_hosts_or_days_write_nothing(tmp_path):
    import os

    write_certificates(tmp_path, ["127.0.0.1"])
    for key in (CA_KEY, SERVER_KEY):
        os.chmod(tmp_path / key, 0o644)
    write_certificates(tmp_path, ["127.0.0.1"], overwrite=True)
    for key in (CA_KEY, SERVER_KEY):
        assert stat.S_IMODE((tmp_path / key).stat().st_mode) == 0o600
    for hosts, days in ((["127.0.0.1:9092"], 365), (["https://link"], 365), (["my host"], 365),
                        (["127.0.0.1"], 0), (["127.0.0.1"], 10**9)):
        with pytest.raises(ValueError):
            write_certificates(tmp_path / "bad", hosts, days=days)
        assert not (tmp_path / "bad").exists()
    long_name = "a" * 63 + ".example.org"  # longer than a common name may be, a valid DNS name
    write_certificates(tmp_path / "long", [long_name])


def test_a_key_pair_is_replaced_whole_or_not_at_all(tmp_path):
    private, public = write_key_pair(tmp_path / "Toys")
    before = (private.read_bytes(), public.read_bytes())
    for comment in ("\xff\xfe", "Toys\nssh-rsa AAAA other"):
        with pytest.raises(ValueError):
            write_key_pair(tmp_path / "Toys", comment=comment, overwrite=True)
        assert (private.read_bytes(), public.read_bytes()) == before
    for bad in ("", ".", "/"):
        with pytest.raises(ValueError):
            write_key_pair(Path(bad))
    private, public = write_key_pair(tmp_path / "Toys", overwrite=True)
    key = serialization.load_ssh_private_key(private.read_bytes(), None)
    assert key.public_key().public_numbers() == serialization.load_ssh_public_key(public.read_bytes()).public_numbers()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Toys", "Toys.pub"]  # no temporary file left
