"""nimrag inference microservices: embed, rerank, llm, and the code they share (``nimrag.services.common``)."""
