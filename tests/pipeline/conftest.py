from __future__ import annotations

from nimrag.platform import Platform

# The platform fixture lives in tests/conftest.py, so that tests/fuzz shares the same running platform.
from tests.conftest import ADMIN_KEY, UPLOAD_LIMIT  # noqa: F401 - the pipeline tests import them from here


def pipeline_url(platform: Platform) -> str:
    return f"http://127.0.0.1:{platform.ports['pipeline']}"
