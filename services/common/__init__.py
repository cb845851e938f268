"""Code every nimrag service shares: settings, app factory, errors, batching, hardware probe, profiles."""
