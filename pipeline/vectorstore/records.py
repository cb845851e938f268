"""What every backend writes the same way: timestamps and JSON metadata (one format, whichever store holds it)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from nimrag.pipeline.vectorstore.base import InvalidArgument


def utc_now() -> str:
    """Now, as the contract's records carry it: ISO 8601, UTC, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def dumps(value: object) -> str:
    """Metadata as stored: JSON text with sorted keys; what JSON cannot hold is the caller's InvalidArgument."""
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise InvalidArgument(f"metadata must be JSON-serializable: {error}") from error
