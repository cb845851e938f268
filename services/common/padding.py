"""Right-padding of token-id sequences into the int64 arrays encoders take."""

from __future__ import annotations

import numpy as np


def pad(ids: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to the longest sequence; returns (input_ids, attention_mask)."""
    width = max(len(x) for x in ids)
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return input_ids, mask


def pad_zeros(seqs: list[list[int]], width: int) -> np.ndarray:
    """Right-pad with zeros to ``width`` (token type ids)."""
    out = np.zeros((len(seqs), width), dtype=np.int64)
    for row, seq in enumerate(seqs):
        out[row, : len(seq)] = seq
    return out
