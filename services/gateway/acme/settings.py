"""Settings of the ACME door (``CERTRAIL_GATEWAY_ACME__*``; decision 0033): its URL, nonces and limits, the
lifetimes of orders and authorizations, and how challenges are validated (``CHALLENGES__*``: challenges.py)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from services.gateway.acme.challenges import ChallengePolicy


class AcmeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    external_url: str | None = Field(
        default=None, pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$", max_length=500,
        description="The base URL ACME clients reach the gateway at (scheme, host, port; a path prefix when a proxy "
                    "adds one): every URL of the directory is built from it, and every JWS's url must be it plus the "
                    "request's path. Default: https://127.0.0.1:<tls port> with the gateway's HTTPS listener (then /acme answers "
                    "on that listener only), else http://127.0.0.1:<http_port>.")
    nonce_lifetime_s: int = Field(default=3600, ge=10, le=86_400,
                                  description="How long a Replay-Nonce stays usable (once), in seconds.")
    max_jws_bytes: int = Field(default=64 * 1024, ge=4096, le=1024 * 1024,
                               description="The largest JWS body an ACME POST may carry (413 malformed above).")
    terms_of_service_url: str | None = Field(
        default=None, pattern=r"^https?://\S+$", max_length=500,
        description="meta.termsOfService of the directory; when set, a new account must agree to it.")
    max_contacts: int = Field(default=4, ge=0, le=20, description="The most contacts (mailto:) an account may list.")
    order_lifetime_s: int = Field(default=7 * 86_400, ge=60, le=30 * 86_400,
                                  description="How long a new order (and its new, pending authorizations) stays usable.")
    authz_lifetime_s: int = Field(default=30 * 86_400, ge=60, le=90 * 86_400,
                                  description="How long a valid authorization stays valid (and reusable) after validation.")
    authz_reuse: bool = Field(default=True, description="A new order reuses the account's valid authorization for an "
                              "identifier when it outlives the order (no new challenge).")
    max_identifiers: int = Field(default=100, ge=1, le=1000, description="The most identifiers one order may name.")
    retry_after_s: int = Field(default=3, ge=1, le=3600, description="The Retry-After (seconds) of a processing "
                               "order: how long an ACME client waits before polling it again.")
    max_orders_listed: int = Field(default=100, ge=1, le=1000, description="The most orders an account's orders "
                                   "list answers (the newest first).")
    sweep_interval_s: float = Field(default=60.0, gt=0, le=3600, description="How often a gateway looks for "
                                    "challenges left processing by a gateway that stopped mid-validation (and fails "
                                    "them: serverInternal).")
    sweep_margin_s: float = Field(default=30.0, ge=0, le=3600, description="How long past the validation deadline a "
                                  "processing challenge counts as abandoned.")
    renewal_info_retry_after_s: int = Field(default=6 * 3600, ge=60, le=7 * 86_400, description="The Retry-After "
                                            "(seconds) of a renewalInfo answer (RFC 9773 4.3): how long an ACME client "
                                            "waits before asking again.")
    challenges: ChallengePolicy = Field(default_factory=ChallengePolicy,
                                        description="How challenges are validated: the http-01 port, deadlines, the "
                                                    "networks validation may reach, the dns-01 hook (challenges.py).")

    def base_url(self, http_port: int, https_port: int | None = None) -> str:
        """The one base URL of the door: the configured external URL, else the HTTPS listener's (``https_port``),
        else the HTTP port's."""
        if self.external_url:
            return self.external_url.rstrip("/")
        return f"https://127.0.0.1:{https_port}" if https_port is not None else f"http://127.0.0.1:{http_port}"

    def listener_port(self, https_port: int | None) -> int | None:
        """The only local port /acme answers on: the HTTPS listener's when the door's URL is (no external URL
        configured); None: any (no HTTPS listener, or a proxy in front that the external URL names)."""
        return https_port if self.external_url is None else None
