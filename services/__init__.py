"""nimrag inference microservices: embed, rerank, llm, and the code they share (``services.common``)."""
