"""A silo's SuperNode key pair, for Flower's SuperNode authentication.

    python -m client.keys keys/Toys        # writes keys/Toys (private) and keys/Toys.pub

The private key stays on the silo's machine (``flower-supernode --auth-supernode-private-key``);
the public key goes to the federation operator, who registers it (``flwr supernode register``).
Keys are ECDSA on NIST P-384 in OpenSSH format, which is what Flower 1.42 reads.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def write_key_pair(path: Path, *, comment: str = "", overwrite: bool = False) -> tuple[Path, Path]:
    """Write a new P-384 key pair: ``path`` (private, mode 0600) and ``path.pub`` (public).

    Both files are written to temporary names first and then renamed, so a failure never leaves a
    private key without its public key or a pair that does not match."""
    if not path.name or path.name in (".", "..") or str(path).endswith(os.sep):
        raise ValueError(f"{str(path)!r} is not a file name for the private key (e.g. keys/Toys)")
    if comment and not (comment.isascii() and comment.isprintable()):
        raise ValueError(f"the comment must be printable ASCII on one line, got {comment!r}")
    public_path = path.with_name(path.name + ".pub")
    existing = [p for p in (path, public_path) if os.path.lexists(p)]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; not replacing a key (use --overwrite to replace it)")
    links = [p for p in (path, public_path) if p.is_symlink()]
    if links:
        raise FileExistsError(f"{links[0]} is a symbolic link; not writing a key through it")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    tmp_private = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp_public = path.with_name(f".{path.name}.pub.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp_private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(private)
        os.chmod(tmp_private, 0o600)
        tmp_public.write_bytes(public + (f" {comment}".encode() if comment else b"") + b"\n")
        os.replace(tmp_public, public_path)
        os.replace(tmp_private, path)
    finally:
        tmp_private.unlink(missing_ok=True)
        tmp_public.unlink(missing_ok=True)
    return path, public_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.keys", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="private key file to write (the public key goes to PATH.pub)")
    parser.add_argument("--comment", default="", help="a label kept in the public key (e.g. the silo's name)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing key pair")
    args = parser.parse_args(argv)
    try:
        if args.path.endswith(os.sep):
            raise ValueError(f"{args.path!r} names a folder; give the private key's file name (e.g. keys/Toys)")
        private, public = write_key_pair(Path(args.path), comment=args.comment, overwrite=args.overwrite)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"private key: {private} (keep it on this machine)\npublic key:  {public} (send it to the federation operator)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
