"""Ed25519 signatures of model files: who may release a version, checked wherever one is loaded.

A signature covers one statement, ``lstmops-model-v1 sha256:<hex> size:<bytes>``: the hash and
size that the version records and every loader checks the file against, so a valid signature
binds the exact bytes. Keys are PEM files (PKCS#8 private, SubjectPublicKeyInfo public), read from
the environment and never logged or echoed:

- ``LSTMOPS_SIGNING_KEY`` (the PEM text) or ``LSTMOPS_SIGNING_KEY_FILE`` (its path): export signs
  with it, and the version records the signature.
- ``LSTMOPS_VERIFY_KEY`` or ``LSTMOPS_VERIFY_KEY_FILE``: one or more public keys (PEM blocks one
  after another, for a rotation). With any configured, every load refuses an unsigned file, a bad
  signature and a signature by a key not among them.

Why not OpenSSF ``model-signing``: 1.1.1 does sign and verify offline with a local key pair, but it
imports pyOpenSSL without declaring it, and installing it pulls in sigstore 4 and twenty packages,
upgrading cryptography to 50 and protobuf to 7 under MLflow and Prefect, to sign what here is one
file whose hash the registry already records. ``cryptography`` (already a dependency of MLflow and
boto3) gives the same Ed25519 primitive.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from lstmops.errors import ConfigError, LstmopsError, ModelRefused

SIGNING_ENV, SIGNING_FILE_ENV = "LSTMOPS_SIGNING_KEY", "LSTMOPS_SIGNING_KEY_FILE"
VERIFY_ENV, VERIFY_FILE_ENV = "LSTMOPS_VERIFY_KEY", "LSTMOPS_VERIFY_KEY_FILE"
PEM_BLOCK = re.compile(rb"-----BEGIN [A-Z ]+-----.+?-----END [A-Z ]+-----", re.S)


class SignatureRefused(ModelRefused):
    """A file that is unsigned, badly signed or signed by a key that is not trusted."""


def statement(sha256: str, size: int) -> bytes:
    """What a signature covers: the file's hash and size, in one fixed form."""
    return f"lstmops-model-v1 sha256:{sha256} size:{int(size)}".encode()


def key_id(public_key) -> str:
    """A short public name of a key (the first 16 hex digits of the sha256 of its raw bytes)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return hashlib.sha256(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]


def _pem(env: dict[str, str], text_var: str, file_var: str) -> tuple[bytes, str] | None:
    """(PEM bytes, where they came from) or None; the source is named, the content never."""
    if env.get(text_var, "").strip():
        return env[text_var].replace("\\n", "\n").encode(), f"${text_var}"
    path = env.get(file_var, "").strip()
    if not path:
        return None
    try:
        return Path(path).expanduser().read_bytes(), f"${file_var} ({path})"
    except OSError as exc:
        raise ConfigError(f"${file_var}: cannot read {path} ({exc.strerror or exc})") from None


def signing_key(env: dict[str, str] | None = None):
    """The Ed25519 private key to sign with, or None when none is configured."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    found = _pem(os.environ if env is None else env, SIGNING_ENV, SIGNING_FILE_ENV)
    if found is None:
        return None
    data, where = found
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{where}: not an unencrypted PEM private key (make one with lstmops keygen)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{where}: not an Ed25519 key (make one with lstmops keygen)")
    return key


def verify_keys(env: dict[str, str] | None = None) -> list:
    """The trusted Ed25519 public keys ([] when none is configured: signatures are not required)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    found = _pem(os.environ if env is None else env, VERIFY_ENV, VERIFY_FILE_ENV)
    if found is None:
        return []
    data, where = found
    keys = []
    for number, block in enumerate(PEM_BLOCK.findall(data), start=1):
        try:
            key = load_pem_public_key(block)
        except ValueError:
            raise ConfigError(f"{where}: PEM block {number} is not a public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"{where}: PEM block {number} is not an Ed25519 public key")
        keys.append(key)
    if not keys:
        raise ConfigError(f"{where}: no PEM public key in it (make one with lstmops keygen)")
    return keys


@dataclass(frozen=True)
class Signed:
    signature: str  # base64 of the 64-byte Ed25519 signature
    key_id: str


def sign(private_key, sha256: str, size: int) -> Signed:
    raw = private_key.sign(statement(sha256, size))
    return Signed(base64.b64encode(raw).decode(), key_id(private_key.public_key()))


def check(keys: list, sha256: str, size: int, signature: str | None, label: str) -> str | None:
    """Raise SignatureRefused unless one of ``keys`` signed (sha256, size); the id of the key that
    did, or None when no key is configured (nothing to check)."""
    from cryptography.exceptions import InvalidSignature

    if not keys:
        return None
    if not signature:
        raise SignatureRefused(f"{label}: refused: not signed, and a verify key is configured (${VERIFY_ENV}/${VERIFY_FILE_ENV})")
    try:
        raw = base64.b64decode(signature, validate=True)
    except ValueError:
        raw = b""
    for key in keys:
        try:
            key.verify(raw, statement(sha256, size))
            return key_id(key)
        except InvalidSignature:
            continue
    trusted = ", ".join(key_id(k) for k in keys)
    raise SignatureRefused(f"{label}: refused: its signature does not verify with the trusted key(s) {trusted}")


def keygen(prefix: Path) -> tuple[Path, Path]:
    """Write PREFIX.key (private, mode 600) and PREFIX.pub; never overwrite either."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

    private_path, public_path = prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")
    for path in (private_path, public_path):
        if path.exists():
            raise LstmopsError(f"{path}: already exists (keys are never overwritten; choose another prefix)")
    key = Ed25519PrivateKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    public_path.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path
