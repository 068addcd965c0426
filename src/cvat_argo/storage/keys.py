"""Store keys: the one rule that keeps every key inside the store (no ``..``, no empty parts).

Kept apart from :mod:`.store` (which needs minio) so that the artifact contract, and through it the
nuclio bundle, can use the rule without the S3 client.
"""

from __future__ import annotations

from ..errors import CvatArgoError


def clean_key(key: str) -> str:
    """A key without empty or ``.`` components; ``..`` is refused so no key can leave the store's root."""
    parts = [part for part in key.replace("\\", "/").split("/") if part not in ("", ".")]
    if ".." in parts:
        raise CvatArgoError(f"store key {key!r} has a '..' component; keys stay inside the store")
    return "/".join(parts)
