"""The RAG pipeline service and ingestion CLI. Not built yet: tracked in issue 5."""
