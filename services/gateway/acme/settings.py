"""Settings of the ACME door (``CERTRAIL_GATEWAY_ACME__*``; decision 0033)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AcmeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    external_url: str | None = Field(
        default=None, pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$", max_length=500,
        description="The base URL ACME clients reach the gateway at (scheme, host, port; a path prefix when a proxy "
                    "adds one): every URL of the directory is built from it, and every JWS's url must be it plus the "
                    "request's path. Default: http://127.0.0.1:<http_port>.")
    nonce_lifetime_s: int = Field(default=3600, ge=10, le=86_400,
                                  description="How long a Replay-Nonce stays usable (once), in seconds.")
    max_jws_bytes: int = Field(default=64 * 1024, ge=4096, le=1024 * 1024,
                               description="The largest JWS body an ACME POST may carry (413 malformed above).")
    terms_of_service_url: str | None = Field(
        default=None, pattern=r"^https?://\S+$", max_length=500,
        description="meta.termsOfService of the directory; when set, a new account must agree to it.")
    max_contacts: int = Field(default=4, ge=0, le=20, description="The most contacts (mailto:) an account may list.")

    def base_url(self, http_port: int) -> str:
        return (self.external_url or f"http://127.0.0.1:{http_port}").rstrip("/")
