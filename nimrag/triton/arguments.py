"""The options of ``nimrag triton serve`` (kept apart from the server, so the CLI builds its parser without
loading it)."""

from __future__ import annotations

import argparse

MODELS = ("embed", "rerank", "llm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address Triton listens on (default 127.0.0.1)")
    parser.add_argument("--grpc-port", type=int, default=8201, help="Triton's gRPC port, the services' "
                        "*_TRITON_URL (default 8201; Triton's own 8001 is the embed service's)")
    parser.add_argument("--http-port", type=int, default=8200, help="Triton's HTTP/REST port (default 8200)")
    parser.add_argument("--metrics-port", type=int, default=8202, help="Triton's Prometheus port (default 8202)")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, of {', '.join(MODELS)} (default: all)")
    parser.add_argument("--embed-model", help="encoder folder (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--rerank-model", help="cross-encoder or encoder folder (default: the bundled encoder)")
    parser.add_argument("--llm-model", help="GGUF file (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--llm-slots", type=int, default=8, help="sequences llama.cpp decodes together (default 8)")
    parser.add_argument("--llm-context", type=int, help="context per sequence (default: the model's, at most 4096)")
    parser.add_argument("--max-queue-delay-us", type=int, default=2000, help="how long Triton's dynamic batcher "
                        "holds an encoder request for others to join it (default 2000 microseconds)")
    parser.add_argument("--workspace", help="PyTriton's sockets and model store (default: a temporary folder)")


def parse_models(text: str) -> list[str]:
    chosen = [m.strip() for m in text.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(MODELS))
    if unknown or not chosen:
        raise ValueError(f"--models takes a comma-separated list of {', '.join(MODELS)}; got {text!r}")
    return chosen
