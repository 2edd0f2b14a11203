"""What Whisper's `generate` needs in a generation config, filled in where a checkpoint leaves it out.

Ships inside checkpoints (trust_remote_code): single-dot imports only. The published LiteASR uploads carry a bare
generation config (`GenerationConfig.from_model_config`): `generate()` then stops at 20 tokens and `language=` /
`return_timestamps=` raise. Every Whisper vocabulary lays its special tokens out the same way, so the ids follow from
the vocabulary size alone; what a checkpoint sets is never changed.
"""

import logging

from transformers.models.whisper.tokenization_whisper import LANGUAGES

logger = logging.getLogger(__name__)

# vocabulary size -> (<|endoftext|> id, language tokens): .en, multilingual v1/v2, v3 (adds <|yue|>)
WHISPER_VOCABULARIES = {51864: (50256, 99), 51865: (50257, 99), 51866: (50257, 100)}


def whisper_special_ids(vocab_size: int) -> dict | None:
    """Special-token ids of a standard Whisper vocabulary: <|endoftext|>, <|startoftranscript|>, the languages, then
    <|translate|> <|transcribe|> <|startoflm|> <|startofprev|> <|nospeech|> <|notimestamps|>, then timestamps.
    None for a vocabulary of another size."""
    if vocab_size not in WHISPER_VOCABULARIES:
        return None
    eot, num_languages = WHISPER_VOCABULARIES[vocab_size]
    sot = eot + 1
    translate = sot + 1 + num_languages
    return {
        "eot": eot, "sot": sot, "translate": translate, "transcribe": translate + 1, "prev": translate + 3,
        "no_timestamps": translate + 5,
        "languages": {f"<|{code}|>": sot + 1 + i for i, code in enumerate(list(LANGUAGES)[:num_languages])},
    }


def whisper_generation_fields(config) -> dict:
    """{field: value} of a complete Whisper generation config for this model config."""
    fields = {
        "max_length": config.max_target_positions,
        "decoder_start_token_id": config.decoder_start_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "bos_token_id": config.bos_token_id,
        "max_initial_timestamp_index": 50,  # 1 s, as OpenAI's decoding
        # OpenAI's (and CTranslate2's) default without a measured set: every head of the second half of the layers
        "alignment_heads": [[layer, head] for layer in range(config.decoder_layers // 2, config.decoder_layers)
                            for head in range(config.decoder_attention_heads)],
        "suppress_tokens": getattr(config, "suppress_tokens", None),
        "begin_suppress_tokens": getattr(config, "begin_suppress_tokens", None),
    }
    ids = whisper_special_ids(config.vocab_size)
    if ids is not None:
        multilingual = config.vocab_size > 51864
        fields.update(
            no_timestamps_token_id=ids["no_timestamps"], prev_sot_token_id=ids["prev"], is_multilingual=multilingual,
            task_to_id={"transcribe": ids["transcribe"], "translate": ids["translate"]},
        )
        if multilingual:
            fields.update(lang_to_id=ids["languages"], task="transcribe")
    return fields


def complete_whisper_generation_config(generation_config, config) -> list[str]:
    """Fill the fields of `generation_config` that are None with `whisper_generation_fields(config)`, log one warning
    naming them, and return their names."""
    filled = []
    for name, value in whisper_generation_fields(config).items():
        if value is not None and getattr(generation_config, name, None) is None:
            setattr(generation_config, name, value)
            filled.append(name)
    if filled:
        logger.warning("The checkpoint's generation config lacked what Whisper's generate needs; filled: %s",
                       ", ".join(filled))
    return filled
