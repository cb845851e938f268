"""NeMo Guardrails policies on nimrag's own services (runtime.py), nimrag's rails (actions.py, detectors.py), and
policy editing: a versioned store (store.py), validation (validation.py) and the service the API uses (service.py)."""

import os

# NeMo Guardrails reports usage to an online endpoint unless told not to; this platform runs offline. Set before
# any module of this package imports nemoguardrails.
os.environ.setdefault("NEMO_GUARDRAILS_NO_USAGE_STATS", "1")
