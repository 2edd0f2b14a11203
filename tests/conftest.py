"""Shared fixtures: the bundled real tiny.en, the speech-dev set, a tiny random Whisper config."""

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


def tiny_whisper_config(**overrides):
    """A tiny random-init-sized WhisperConfig with the real .en vocabulary (51864) and 30 s input (1500 positions)."""
    from transformers import WhisperConfig

    kwargs = dict(
        vocab_size=51864, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_source_positions=1500, max_target_positions=448,
        decoder_start_token_id=50257, bos_token_id=50256, eos_token_id=50256, pad_token_id=50256,
    )
    kwargs.update(overrides)
    return WhisperConfig(**kwargs)


@pytest.fixture
def make_tiny_whisper_config():
    return tiny_whisper_config
