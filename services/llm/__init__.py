"""The LLM microservice (OpenAI chat/completions). Not built yet: tracked in issue 4."""
