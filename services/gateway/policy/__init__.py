"""The gateway's validation and authorisation core: pure functions, no Kafka,
HTTP or database. Both doors (the HTTP API and the ``certrail.requests``
topic) call it; every refusal is a `PolicyViolation` with a stable ErrorCode.

Modules:

* `profile`: ProvisioningProfile and its parts (key policy, domain rules,
  subject rules, renewal policy), validated on creation;
* `csr`: `validate_csr` (private key, parse, signature, key policy, SANs, domain and subject rules);
* `names` / `domains` / `subject`: subjectAltName syntax, domain rules, subject rules;
* `canonical`: the dedupe content hash over the canonical JSON that requesters sign;
* `request_auth`: RequestAuth verification (HMAC-SHA256, JWS) and requester keys;
* `tokens`: API tokens (generate, hash, verify) and `authorise(claims, action, profile)`;
* `dedupe`: `decide_dedupe` (NEW / SAME / CONFLICT).

Suggested order at the Kafka door: decode (dead letters, private keys) ->
`verify_request_auth` -> `decide_dedupe` -> profile lookup -> `authorise_requester`
-> `validate_csr` -> connector enabled. At the HTTP door: `authenticate_token`
-> `authorise` (which also checks the profile's allowed requesters) -> the same
from `decide_dedupe` on.

The signed-request contract itself (canonical bytes, schemes, `sign_request`,
`signed`) is services/common/contracts/signing.py.
"""

from services.gateway.policy.canonical import request_content_hash
from services.gateway.policy.csr import ValidatedCsr, resolve_sans, validate_csr
from services.gateway.policy.dedupe import DedupeDecision, DedupeOutcome, StoredRequest, decide_dedupe
from services.gateway.policy.domains import check_san_allowed, check_sans_allowed
from services.gateway.policy.names import San, SanKind, parse_san
from services.gateway.policy.profile import (
    DomainRules,
    EcCurve,
    KeyPolicy,
    KeyType,
    ProvisioningProfile,
    RenewalPolicy,
    SubjectAttribute,
    SubjectRules,
)
from services.gateway.policy.request_auth import (
    InMemoryRequesterKeys,
    RequesterKey,
    RequesterKeys,
    authorise_requester,
    verify_request_auth,
)
from services.gateway.policy.tokens import (
    Action,
    Decision,
    NewToken,
    Role,
    StoredToken,
    TokenClaims,
    authenticate_token,
    authorise,
    generate_token,
    hash_token,
    token_id_of,
    verify_token,
    visible_profiles,
)
from services.gateway.policy.violation import PolicyViolation

__all__ = [
    "Action",
    "Decision",
    "DedupeDecision",
    "DedupeOutcome",
    "DomainRules",
    "EcCurve",
    "InMemoryRequesterKeys",
    "KeyPolicy",
    "KeyType",
    "NewToken",
    "PolicyViolation",
    "ProvisioningProfile",
    "RenewalPolicy",
    "RequesterKey",
    "RequesterKeys",
    "Role",
    "San",
    "SanKind",
    "StoredRequest",
    "StoredToken",
    "SubjectAttribute",
    "SubjectRules",
    "TokenClaims",
    "ValidatedCsr",
    "authenticate_token",
    "authorise",
    "authorise_requester",
    "check_san_allowed",
    "check_sans_allowed",
    "decide_dedupe",
    "generate_token",
    "hash_token",
    "parse_san",
    "request_content_hash",
    "resolve_sans",
    "token_id_of",
    "validate_csr",
    "verify_request_auth",
    "verify_token",
    "visible_profiles",
]
