import os
import subprocess
import sys

from ctxneurons.book.experiment import resolve_model_choice


def test_offline_auto_falls_back_to_toy_and_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    assert resolve_model_choice("auto") == ("toy", True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home"}
    out = subprocess.run([sys.executable, "-m", "ctxneurons.book.cli", "edition"], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["toy", "fallback"]


def test_an_explicit_model_is_never_a_fallback_unless_the_build_says_so(monkeypatch):
    monkeypatch.delenv("CTXN_OFFLINE_FALLBACK", raising=False)
    assert resolve_model_choice("toy") == ("toy", False)
    assert resolve_model_choice("/models/gpt2") == ("/models/gpt2", False)
    monkeypatch.setenv("CTXN_OFFLINE_FALLBACK", "1")
    assert resolve_model_choice("toy") == ("toy", True)
