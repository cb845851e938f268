"""The reranking microservice: NIM's ``POST /v1/ranking`` and the Cohere-style ``POST /v1/rerank``."""
