"""Shared fixtures: the bundled real tiny.en, the speech-dev set and the tiny models' processor (tiny random models
and other helpers: modeling_utils.py)."""

import os

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEECH_DEV = os.path.join(REPO_ROOT, "..", "shared", "data", "speech-dev")

# Tests never reach the Hub; set before transformers is imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_en_path() -> str:
    """Folder of the real Whisper tiny.en converted from the bundled package (converted once, then cached)."""
    from liteasr_hf.conversion import TEST_MODEL, resolve_model

    try:
        return resolve_model(TEST_MODEL)
    except ModuleNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def speech_dev() -> str:
    """The 175-clip English dev set (audiofolder with metadata.csv), skipped where the shared data is absent."""
    if not os.path.isfile(os.path.join(SPEECH_DEV, "metadata.csv")):
        pytest.skip(f"{SPEECH_DEV} not present")
    return os.path.abspath(SPEECH_DEV)


@pytest.fixture(scope="session")
def processor(tmp_path_factory):
    """The tiny models' Whisper processor (byte-level vocabulary, 1 s window: modeling_utils.tiny_processor)."""
    from modeling_utils import tiny_processor

    return tiny_processor(tmp_path_factory.mktemp("processor"))


@pytest.fixture
def kernel_calls(monkeypatch):
    """Records, in order, "op" for each call of the liteasr::attention_core op by ``attention_core`` (made only when
    it picked the kernel) and "kernel" for each launch of the Triton kernel; both still run for real."""
    from liteasr_hf.lite_whisper import attention_lite_whisper

    calls = []
    op, launch = attention_lite_whisper.attention_core_op, attention_lite_whisper.attention_core_triton
    monkeypatch.setattr(attention_lite_whisper, "attention_core_op", lambda *a: calls.append("op") or op(*a))
    monkeypatch.setattr(attention_lite_whisper, "attention_core_triton", lambda *a: calls.append("kernel") or launch(*a))
    monkeypatch.delenv("LITEASR_ATTENTION", raising=False)
    return calls


@pytest.fixture(scope="module")
def real_context_model(tiny_en_path):
    """Real tiny.en twice: as Whisper ships it, and wrapped as lite-whisper with the default dynamic context."""
    from transformers import AutoProcessor, WhisperForConditionalGeneration

    from liteasr_hf import LiteWhisperForConditionalGeneration

    dense = WhisperForConditionalGeneration.from_pretrained(tiny_en_path).eval()
    lite = LiteWhisperForConditionalGeneration.from_whisper(dense)
    lite.config.encoder_context_buckets, lite.config.encoder_context_margin = [10.0, 15.0, 20.0], 1.0
    return dense, lite, AutoProcessor.from_pretrained(tiny_en_path)
