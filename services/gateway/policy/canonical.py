"""The dedupe content hash of a request, over the canonical JSON that requesters sign.

The canonical form and the signing schemes are the signed-request contract,
specified for upstream teams in services/common/contracts/signing.py.

The dedupe content hash (`request_content_hash`) is the SHA-256 of the same
canonical form taken over the *validated* request (defaults filled in, absent
optional members left out), so an HTTP and a Kafka request with the same
content hash the same.
"""

from __future__ import annotations

import hashlib

from pydantic import BaseModel

from services.common.contracts.signing import request_signing_bytes


def request_content_hash(request: BaseModel) -> str:
    """The dedupe content hash of a validated request (hex SHA-256 of its canonical
    JSON without ``auth``): the same content through HTTP or Kafka, signed with
    any key, hashes the same."""
    return hashlib.sha256(request_signing_bytes(request)).hexdigest()
