"""Greedy decoding of a batch of encoded pieces, each row leaving the batch when it ends.

Whisper's `generate` keeps every row of a batch until its last row ends. A decoder step at batch 8 costs about the
same per row (each row reads its own cross-attention keys and values, 15 MB of them a layer for 8 rows of 19 s in
bf16), and in a batch of pieces sorted by length the rows still end tens of tokens apart, since people speak at
different rates. Here the rows that have ended leave, once they are a quarter of the batch (leaving copies the
caches of the rows that stay): the caches and the encoder states keep only the rows still decoding
(`EncoderDecoderCache.batch_select_indices`). The prompt and the token suppression are `generate`'s for
greedy decoding without timestamps, so the tokens are `generate(num_beams=1, do_sample=False)`'s (tested), and the
rows come back in `generate`'s form: the text tokens, without the prompt or the closing <|endoftext|>.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

from ..generation import suppression_mask


def decoder_prompt(generation_config, language: str | None = None, task: str | None = None) -> list[int]:
    """<|startoftranscript|> [<|language|> <|task|>] <|notimestamps|>, as Whisper's `generate` starts a window
    decoded without timestamps (English-only models take neither language nor task)."""
    prompt = [generation_config.decoder_start_token_id]
    if getattr(generation_config, "is_multilingual", False):
        code = TO_LANGUAGE_CODE.get((language or "en").lower(), (language or "en").lower())
        token = generation_config.lang_to_id.get(f"<|{code}|>")
        if token is None:
            raise ValueError(f"unknown language {language!r}")
        prompt += [token, generation_config.task_to_id[task or "transcribe"]]
    return prompt + [generation_config.no_timestamps_token_id]


def _suppression(generation_config, vocab_size, device):
    """(every step's, the first step's) additive masks, as Whisper's logits processors suppress tokens: the
    `suppress_tokens` at every step, also the `begin_suppress_tokens` at the first. None where nothing is suppressed
    (`optimize_for_cpu` moves the suppressed tokens into the output projection, `SuppressedLogits`)."""
    every = generation_config.suppress_tokens or ()
    first = [*every, *(generation_config.begin_suppress_tokens or ())]
    return suppression_mask(every, vocab_size, device), suppression_mask(first, vocab_size, device)


@torch.inference_mode()
def greedy_decode(model, encoder_states: torch.Tensor, prompt: list[int], max_new_tokens: int) -> list[torch.Tensor]:
    """The greedy tokens of each row of `encoder_states` [B, T, d] (the encoder's output for a batch of pieces):
    at most `max_new_tokens` a row, <|endoftext|> ending a row (not returned)."""
    config = model.generation_config
    eos = config.eos_token_id[0] if isinstance(config.eos_token_id, (list, tuple)) else config.eos_token_id
    decoder, device = model.get_decoder(), encoder_states.device
    suppress, first_suppress = _suppression(config, model.config.vocab_size, device)
    batch = encoder_states.shape[0]
    rows = torch.arange(batch, device=device)  # the batch rows still in the decoder's batch
    running = torch.ones(batch, dtype=torch.bool, device=device)  # of those, the ones that have not ended
    tokens: list[list[int]] = [[] for _ in range(batch)]
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    inputs = torch.tensor([prompt], device=device).expand(batch, -1)
    for step in range(max_new_tokens):
        # the cache by position: transformers 5.17 names it past_key_values, later versions cache
        hidden = decoder(inputs, None, encoder_states, cache, use_cache=True).last_hidden_state[:, -1:]
        logits = model.proj_out(hidden)[:, -1].float()
        mask = first_suppress if step == 0 else suppress
        chosen = (logits if mask is None else logits + mask).argmax(-1)
        running &= chosen != eos
        for row, token, more in zip(rows.tolist(), chosen.tolist(), running.tolist()):
            if more:
                tokens[row].append(token)
        alive = int(running.sum())
        if not alive:
            break
        # Leaving copies every remaining row's caches once; a quarter of the batch ended makes it worth it.
        if alive <= len(rows) * 3 // 4:
            keep = running.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            encoder_states, rows, chosen, running = encoder_states[keep], rows[keep], chosen[keep], running[keep]
        inputs = chosen[:, None]
    return [torch.tensor(t, dtype=torch.long) for t in tokens]
