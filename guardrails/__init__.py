"""NeMo Guardrails policies on nimrag's own services (runtime.py), nimrag's rails (actions.py, detectors.py), and
policy editing: a versioned store (store.py), validation (validation.py) and the service the API uses (service.py)."""
