"""Finding and removing private keys in bytes that are about to be stored or
published (dead letters, rejected requests). A PEM private-key block is
replaced by the SHA-256 of the block, so the original can be recognised by
whoever holds it, but never recovered from certrail's records."""

from __future__ import annotations

import hashlib
import re

# Any PEM private key: PKCS#8 ("PRIVATE KEY", "ENCRYPTED PRIVATE KEY"), the
# traditional forms ("RSA/EC/DSA PRIVATE KEY") and OpenSSH's. The body may hold
# real newlines or JSON-escaped ones ("\n"). A block with no END line (cut off,
# or pasted half) is removed to the end of the input.
_BEGIN = rb"-----BEGIN ([A-Z0-9 ]*PRIVATE KEY)-----"
_PRIVATE_KEY_BLOCK = re.compile(_BEGIN + rb"(?:.*?-----END \1-----|.*\Z)", re.DOTALL)
_PRIVATE_KEY_MARK = re.compile(rb"PRIVATE KEY-----")


def contains_private_key(raw: bytes) -> bool:
    """True when ``raw`` holds (the start of) a PEM private key."""
    return _PRIVATE_KEY_MARK.search(raw) is not None and re.search(_BEGIN, raw) is not None


def redact_private_keys(raw: bytes) -> tuple[bytes, int]:
    """``raw`` with each private-key block replaced by
    ``[PRIVATE KEY REMOVED sha256:<hex>]``; returns the bytes and how many
    blocks were removed."""
    count = 0

    def _replace(match: re.Match[bytes]) -> bytes:
        nonlocal count
        count += 1
        digest = hashlib.sha256(match.group(0)).hexdigest()
        return f"[PRIVATE KEY REMOVED sha256:{digest}]".encode("ascii")

    return _PRIVATE_KEY_BLOCK.sub(_replace, raw), count
