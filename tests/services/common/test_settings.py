from __future__ import annotations

from nimrag.services.embed.settings import EmbedSettings


def test_nim_names_are_read(monkeypatch):
    monkeypatch.setenv("NIM_MODEL_PROFILE", "torch-cpu-fp32")
    monkeypatch.setenv("NIM_SERVED_MODEL_NAME", "my-embedder")
    monkeypatch.setenv("NIM_CACHE_PATH", "/tmp/nim-cache")
    monkeypatch.setenv("NIM_MODEL_NAME", "/models/e5")
    s = EmbedSettings()
    assert (s.profile, s.served_model_name, str(s.cache_path)) == ("torch-cpu-fp32", "my-embedder", "/tmp/nim-cache")
    assert s.model == "/models/e5"


def test_service_prefix_wins_over_nim_names(monkeypatch):
    monkeypatch.setenv("NIM_MODEL_PROFILE", "torch-cpu-fp32")
    monkeypatch.setenv("NIMRAG_EMBED_PROFILE", "onnx-cpu-fp32")
    monkeypatch.setenv("NIMRAG_EMBED_MAX_INPUTS", "12")
    monkeypatch.setenv("NIMRAG_EMBED_API_KEYS", "k1, k2")
    s = EmbedSettings()
    assert s.profile == "onnx-cpu-fp32" and s.max_inputs == 12 and s.api_key_list == ["k1", "k2"]


def test_explicit_arguments_win(monkeypatch):
    monkeypatch.setenv("NIMRAG_EMBED_PORT", "9999")
    assert EmbedSettings(port=1234).port == 1234
