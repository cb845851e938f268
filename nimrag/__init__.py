"""nimrag: NIM-style inference microservices and a RAG pipeline. The ``nimrag`` command lives in nimrag.cli."""
