"""The reranking microservice (NIM /v1/ranking). Not built yet: tracked in issue 3."""
