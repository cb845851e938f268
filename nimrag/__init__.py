"""nimrag: NIM-style inference microservices and a RAG pipeline. The ``nimrag`` command lives in nimrag.cli.

One top-level package: the folders ``services/``, ``pipeline/`` and ``guardrails/`` at the checkout's root are
``nimrag.services``, ``nimrag.pipeline`` and ``nimrag.guardrails`` (an install maps them: pyproject's package-dir).
Run from a checkout that is not installed (``PYTHONPATH=<checkout>``, as scripts/gpu-check does), the checkout's root
joins this package's path so that the same names resolve there too.
"""

from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent
if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "services" / "__init__.py").is_file():
    __path__.append(str(_CHECKOUT))
