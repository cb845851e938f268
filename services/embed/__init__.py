"""The embedding microservice: OpenAI- and NIM-compatible ``POST /v1/embeddings``."""
