"""NeMo Guardrails policies and policy editing. Not built yet: tracked in issue 6."""
