"""subjectAltName syntax: certrail's ``kind:value`` strings and the CSR's
GeneralNames, parsed and normalised (no policy here; see `domains`).

Rules (SAN_INVALID when broken):

* ``dns:`` an RFC 1123 host name: labels of 1-63 letters, digits and hyphens,
  not starting or ending with a hyphen, at most 253 characters, compared and
  returned in lower case; no trailing dot; the last label is not all digits
  (that would be an IP address). Internationalised names as IDNA 2008 A-labels
  (``xn--...``, checked by decoding and re-encoding); a raw Unicode name is
  refused with its A-label suggested. A label with ``--`` in positions 3-4 must
  be a valid A-label. A wildcard is ``*`` as the whole left-most label, once,
  followed by at least two labels (``*.example.com``; not ``*.com``,
  ``w*.example.com`` or ``a.*.example.com``).
* ``ip:`` an IPv4 or IPv6 address (no zone id), returned in its compressed form.
* ``email:`` ``local@domain`` with an ASCII dot-atom local part (at most 64
  characters) and a DNS domain as above (no wildcard), domain in lower case.
* ``uri:`` an absolute ASCII URI (``scheme:...``) without whitespace; kept as given
  except the scheme, which is lower-cased.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum

import idna
from cryptography import x509

from services.common.contracts.errors import ErrorCode
from services.gateway.policy.violation import PolicyViolation, shown

MAX_DNS_NAME = 253
MAX_LABEL = 63
MAX_EMAIL = 254
MAX_LOCAL_PART = 64
MAX_URI = 2048

_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")


class SanKind(StrEnum):
    DNS = "dns"
    IP = "ip"
    EMAIL = "email"
    URI = "uri"


class NameSyntaxError(ValueError):
    """A name that is not well-formed; the message says why."""


@dataclass(frozen=True, order=True)
class San:
    """One normalised subjectAltName."""

    kind: SanKind
    value: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"

    @property
    def is_wildcard(self) -> bool:
        return self.kind is SanKind.DNS and self.value.startswith("*.")


def normalise_dns_name(name: str, *, allow_wildcard: bool = True) -> str:
    """``name`` in lower case if it is a well-formed DNS name (see the module
    docstring); raises `NameSyntaxError` otherwise."""
    if not name:
        raise NameSyntaxError("empty DNS name")
    if not name.isascii():
        try:
            suggestion = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError:
            raise NameSyntaxError(f"{shown(name)} is not ASCII and not a valid internationalised name") from None
        raise NameSyntaxError(f"{shown(name)} is not ASCII: write internationalised names as A-labels ({suggestion!r})")
    if name.endswith("."):
        raise NameSyntaxError(f"{shown(name)} ends with a dot: write the name without the trailing dot")
    lowered = name.lower()
    if len(lowered) > MAX_DNS_NAME:
        raise NameSyntaxError(f"DNS name is {len(lowered)} characters long, over {MAX_DNS_NAME}")
    labels = lowered.split(".")
    if labels[0] == "*":
        if not allow_wildcard:
            raise NameSyntaxError(f"{shown(name)}: a wildcard is not allowed here")
        if len(labels) < 3:
            raise NameSyntaxError(f"{shown(name)}: a wildcard must be followed by at least two labels (e.g. '*.example.com')")
        labels = labels[1:]
    for label in labels:
        _check_label(label, name)
    if labels[-1].isdigit():
        raise NameSyntaxError(f"{shown(name)}: the last label is all digits (an IP address belongs in an ip: name)")
    return lowered


def _check_label(label: str, name: str) -> None:
    if not label:
        raise NameSyntaxError(f"{shown(name)} has an empty label")
    if "*" in label:
        raise NameSyntaxError(f"{shown(name)}: '*' is allowed only as the whole left-most label")
    if len(label) > MAX_LABEL:
        raise NameSyntaxError(f"{shown(name)} has a label of {len(label)} characters, over {MAX_LABEL}")
    if not _LABEL.match(label):
        raise NameSyntaxError(
            f"{shown(name)}: label {shown(label)} must be letters, digits and hyphens, not starting or ending with a hyphen"
        )
    if label[2:4] == "--":
        if not label.startswith("xn--"):
            raise NameSyntaxError(
                f"{shown(name)}: label {shown(label)} has '--' in positions 3-4, which only A-labels (xn--) may"
            )
        try:
            ulabel = idna.decode(label)
            valid = idna.encode(ulabel).decode("ascii") == label
        except (idna.IDNAError, UnicodeError):
            valid = False
        if not valid:
            raise NameSyntaxError(f"{shown(name)}: {shown(label)} is not a valid IDNA A-label")


def normalise_ip(text: str) -> str:
    if "%" in text:
        raise NameSyntaxError(f"{shown(text)}: an IP address with a zone id is not allowed")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise NameSyntaxError(f"{shown(text)} is not an IPv4 or IPv6 address") from None


def normalise_email(text: str) -> str:
    if not text.isascii():
        raise NameSyntaxError(f"{shown(text)} is not ASCII (internationalised mailboxes are not supported)")
    if len(text) > MAX_EMAIL:
        raise NameSyntaxError(f"email address is {len(text)} characters long, over {MAX_EMAIL}")
    local, at, domain = text.rpartition("@")
    if not at or not local:
        raise NameSyntaxError(f"{shown(text)} is not an email address (local@domain)")
    if len(local) > MAX_LOCAL_PART or not _LOCAL_PART.match(local):
        raise NameSyntaxError(f"{shown(text)}: the local part must be an ASCII dot-atom of at most {MAX_LOCAL_PART} characters")
    return f"{local}@{normalise_dns_name(domain, allow_wildcard=False)}"


def normalise_uri(text: str) -> str:
    if not text.isascii() or any(c.isspace() or ord(c) < 0x21 or ord(c) == 0x7F for c in text):
        raise NameSyntaxError(f"{shown(text)}: a URI must be printable ASCII without spaces")
    if len(text) > MAX_URI:
        raise NameSyntaxError(f"URI is {len(text)} characters long, over {MAX_URI}")
    scheme, colon, rest = text.partition(":")
    if not colon or not _URI_SCHEME.match(scheme) or not rest:
        raise NameSyntaxError(f"{shown(text)} is not an absolute URI (scheme:...)")
    return f"{scheme.lower()}:{rest}"


def _normalise(kind: SanKind, value: str) -> str:
    if kind is SanKind.DNS:
        return normalise_dns_name(value)
    if kind is SanKind.IP:
        return normalise_ip(value)
    if kind is SanKind.EMAIL:
        return normalise_email(value)
    return normalise_uri(value)


def parse_san(text: str) -> San:
    """A certrail SAN string (``dns:``, ``ip:``, ``email:``, ``uri:``) normalised;
    raises PolicyViolation(SAN_INVALID)."""
    prefix, colon, value = text.partition(":")
    try:
        kind = SanKind(prefix)
    except ValueError:
        kind = None
    if not colon or kind is None:
        raise PolicyViolation(ErrorCode.SAN_INVALID, f"subjectAltName {shown(text)} must start with dns:, ip:, email: or uri:")
    try:
        return San(kind, _normalise(kind, value))
    except NameSyntaxError as exc:
        raise PolicyViolation(ErrorCode.SAN_INVALID, f"subjectAltName {shown(text)}: {exc}") from None


def san_from_general_name(name: x509.GeneralName) -> San:
    """A CSR's GeneralName as a normalised `San`; raises PolicyViolation
    (SAN_INVALID for a malformed name, SAN_NOT_ALLOWED for a kind certrail does not issue)."""
    if isinstance(name, x509.DNSName):
        kind, value = SanKind.DNS, name.value
    elif isinstance(name, x509.IPAddress):
        if not isinstance(name.value, ipaddress.IPv4Address | ipaddress.IPv6Address):
            raise PolicyViolation(ErrorCode.SAN_INVALID, f"the CSR's IP subjectAltName {name.value} is a network, not an address")
        return San(SanKind.IP, str(name.value))
    elif isinstance(name, x509.RFC822Name):
        kind, value = SanKind.EMAIL, name.value
    elif isinstance(name, x509.UniformResourceIdentifier):
        kind, value = SanKind.URI, name.value
    else:
        raise PolicyViolation(
            ErrorCode.SAN_NOT_ALLOWED,
            f"the CSR has a {type(name).__name__} subjectAltName; certrail issues only DNS, IP, email and URI names",
        )
    try:
        return San(kind, _normalise(kind, value))
    except NameSyntaxError as exc:
        raise PolicyViolation(ErrorCode.SAN_INVALID, f"the CSR's {kind} subjectAltName: {exc}") from None
