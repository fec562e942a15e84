"""certrail's message contracts: the CloudEvents envelope, every command and
event, identities, topics and error codes. The pydantic models here are the
source of truth; ``schemas/`` is generated from them (``certrail schemas export``)."""
