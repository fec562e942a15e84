"""An optional HTTPS listener beside a service's plain HTTP port (the gateway's ``CERTRAIL_GATEWAY_TLS__*``): the
same app served over TLS (1.2 or later, the ssl module's default ciphers) with a certificate and key read from
files, and read again when the files change, so that a certificate renewed and redeployed (by certrail's own
file target, or by anything else) is served to new connections without a restart.

How the reload works: every TLS handshake asks `ServingCertificate.current` for its context (the listening
context's SNI callback, which OpenSSL calls on every ClientHello, with or without a server name); that compares
the files' (inode, size, mtime) with those last loaded and, when they changed, loads them into a new
`ssl.SSLContext` and serves it from then on. A pair that does not load (half written, a key that does not match)
keeps the previous certificate and logs a warning, once per change of the files. Connections already open keep
the certificate they were opened with. Nothing here logs or raises a file's content.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import BaseModel, ConfigDict, Field, model_validator

log = logging.getLogger(__name__)


class TlsListenerSettings(BaseModel):
    """``CERTRAIL_GATEWAY_TLS__CERT_FILE`` / ``__KEY_FILE`` / ``__PORT`` (/ ``__HOST``): with both files set, the
    service also serves HTTPS on ``port``; without, HTTP only."""

    model_config = ConfigDict(extra="forbid")

    cert_file: Path | None = Field(default=None, description="The served certificate chain (PEM: the leaf first, "
                                   "then its intermediates); read again when it changes.")
    key_file: Path | None = Field(default=None, description="The certificate's private key (PEM, unencrypted); read "
                                  "again when it changes.")
    port: int = Field(default=8443, ge=0, le=65535, description="The HTTPS port, beside the plain HTTP port (which "
                      "stays: health, metrics, the internal API).")
    host: str | None = Field(default=None, max_length=255,
                             description="The HTTPS listener's address (default: the service's http_host).")

    @model_validator(mode="after")
    def _both_or_neither(self) -> TlsListenerSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("set both tls cert_file and key_file, or neither")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None and self.key_file is not None


class TlsFileError(RuntimeError):
    """A certificate or key file that cannot be read or used; the message names the file, never its content."""


@dataclass(frozen=True)
class _Seen:
    """What identifies one version of the two files (a replaced file has a new inode or mtime)."""

    cert: tuple[int, int, int]
    key: tuple[int, int, int]


def _stat(path: Path) -> tuple[int, int, int]:
    found = os.stat(path)  # follows a symlink (a file target's ``current`` link swapped to a new version)
    return found.st_ino, found.st_size, found.st_mtime_ns


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TlsFileError(f"cannot read the TLS {what} file {path}: {error.strerror or error}") from None


def load_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A server context serving ``cert_file`` with ``key_file``: TLS 1.2 or later, the ssl module's default ciphers.
    Raises `TlsFileError` naming the file that is missing, unreadable, not PEM, or not matching the other."""
    chain, key = _read(cert_file, "certificate"), _read(key_file, "key")
    try:
        if not x509.load_pem_x509_certificates(chain):
            raise ValueError("no certificate")
    except ValueError:
        raise TlsFileError(f"the TLS certificate file {cert_file} holds no PEM certificate") from None
    try:
        serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        raise TlsFileError(f"the TLS key file {key_file} holds no unencrypted PEM private key") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as error:
        reason = getattr(error, "reason", None) or type(error).__name__
        raise TlsFileError(f"the TLS certificate file {cert_file} and key file {key_file} do not load together "
                           f"({reason}): is the key the certificate's?") from None
    return context


class ServingCertificate:
    """The certificate a listener serves, read again from its files when they change (see the module's doc).
    `listening` is the context to listen with; `current` the one a new handshake gets."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.cert_file, self.key_file = cert_file, key_file
        seen = self._seen()
        self._current = load_context(cert_file, key_file)  # at start a bad file is an error, not a warning
        self._loaded = seen
        self._failed: _Seen | None = None
        self._missing = False  # a file gone (being replaced): warned once until it is back
        self.listening = load_context(cert_file, key_file)
        self.listening.sni_callback = self._on_hello

    def _seen(self) -> _Seen:
        try:
            return _Seen(_stat(self.cert_file), _stat(self.key_file))
        except OSError as error:
            name = error.filename or self.cert_file
            raise TlsFileError(f"cannot read the TLS file {name}: {error.strerror or error}") from None

    @property
    def current(self) -> ssl.SSLContext:
        """The context for a new connection: the files' current pair, or the last pair that loaded."""
        try:
            seen = self._seen()
        except TlsFileError as error:
            if not self._missing:
                log.warning("TLS certificate not reloaded, the previous one is still served: %s", error)
            self._missing = True
            return self._current
        self._missing = False
        if seen != self._loaded and seen != self._failed:
            try:
                self._current = load_context(self.cert_file, self.key_file)
            except TlsFileError as error:
                self._warn_once(seen, str(error))
            else:
                self._loaded, self._failed = seen, None
                log.info("TLS certificate %s reloaded (changed on disk); new connections get it", self.cert_file)
        return self._current

    def _warn_once(self, seen: _Seen, reason: str) -> None:
        if seen != self._failed:
            log.warning("TLS certificate not reloaded, the previous one is still served: %s", reason)
        self._failed = seen

    def _on_hello(self, connection: ssl.SSLObject | ssl.SSLSocket, _server_name: str | None,
                  _context: ssl.SSLContext) -> None:
        connection.context = self.current
