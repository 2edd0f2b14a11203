"""WER as Whisper papers report it: Whisper's English text normalizer on both sides, then corpus WER. Other
languages: Whisper's basic normalizer (lower case, no punctuation or symbols); Chinese, Japanese, Korean, Thai and
the like are scored per character (CER), as their text has no spaces between words.

One code path, online or offline: `evaluate.load` on the metric module shipped next to this file
(wer_metric.py), which wraps jiwer.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Sequence

METRIC_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wer_metric.py")


@lru_cache(maxsize=1)
def normalizer():
    """Whisper's EnglishTextNormalizer with the English spelling map shipped in the package (the
    conversion code writes the same file as each converted model's normalizer.json)."""
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    from ..conversion.ctranslate2 import NORMALIZER_JSON

    with open(NORMALIZER_JSON, encoding="utf-8") as f:
        return EnglishTextNormalizer(json.load(f))


CHARACTER_LANGUAGES = {"zh", "ja", "ko", "th", "lo", "my", "yue"}  # scored per character (CER)


@lru_cache(maxsize=2)
def basic_normalizer(split_letters: bool):
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    return BasicTextNormalizer(remove_diacritics=False, split_letters=split_letters)


def normalize(text: str, language: str | None = None) -> str:
    """English (or unknown) text through Whisper's English normalizer; other languages through its basic one."""
    if language in (None, "en", "english"):
        return normalizer()(text or "")
    return basic_normalizer(language in CHARACTER_LANGUAGES)(text or "")


@lru_cache(maxsize=1)
def metric():
    import evaluate

    return evaluate.load(METRIC_SCRIPT)


def word_errors(references: Sequence[str], hypotheses: Sequence[str], languages: Sequence[str | None] | None = None) -> dict:
    """Corpus WER of normalized texts with S/D/I, plus per-utterance `errors` and `words` lists.

    A reference that normalizes to nothing (e.g. only a filler word) has no words to score: it gets
    errors = words = 0 and is counted in `empty_references` (its hypothesis still shows in the output).
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    languages = languages or [None] * len(references)
    refs = [normalize(r, lang) for r, lang in zip(references, languages)]
    hyps = [normalize(h, lang) for h, lang in zip(hypotheses, languages)]
    keep = [i for i, r in enumerate(refs) if r.strip()]
    errors, words = [0] * len(refs), [0] * len(refs)
    out = {"wer": 0.0, "substitutions": 0, "deletions": 0, "insertions": 0, "hits": 0}
    if keep:
        res = metric().compute(predictions=[hyps[i] for i in keep], references=[refs[i] for i in keep])
        out = {k: res[k] for k in out}
        for i, e, w in zip(keep, res["utterance_errors"], res["utterance_words"]):
            errors[i], words[i] = e, w
    out.update(words=sum(words), empty_references=len(refs) - len(keep), errors=errors, utterance_words=words,
               references=refs, hypotheses=hyps)
    return out


def paired_bootstrap(errors_a: Sequence[int], errors_b: Sequence[int], words: Sequence[int], *, samples: int = 10_000,
                     level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Confidence interval of corpus WER(b) - WER(a), both scored on the same clips (per-clip errors and
    reference words). Clips are resampled with replacement for both systems at once (paired): on a small
    test set most of a WER's spread is which clips were drawn, and two systems share it, so their
    difference is much better determined than either WER alone."""
    import numpy as np

    e_a, e_b, w = (np.asarray(x, dtype=np.float64) for x in (errors_a, errors_b, words))
    if not len(w) or not len(e_a) == len(e_b) == len(w):
        raise ValueError(f"per-clip errors and words must be non-empty and equally long, got {len(e_a)}, {len(e_b)}, {len(w)}")
    rng, diffs = np.random.default_rng(seed), []
    for start in range(0, samples, 1000):  # chunks: samples x clips indices stay small for large test sets
        idx = rng.integers(0, len(w), (min(1000, samples - start), len(w)))
        diffs.append((e_b[idx].sum(1) - e_a[idx].sum(1)) / np.maximum(w[idx].sum(1), 1))
    lo, hi = np.quantile(np.concatenate(diffs), [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def wer_difference(wer_a: float, wer_b: float, clips_a: dict | None = None, clips_b: dict | None = None) -> str:
    """b's WER minus a's in points, e.g. "+1.01 (+0.09, +1.98)": with the 95 % `paired_bootstrap` interval when both
    give {clip id: (errors, words)} for the same clips, the difference alone otherwise."""
    text = f"{100 * (wer_b - wer_a):+.2f}"
    if clips_a and clips_b and clips_a.keys() == clips_b.keys():
        ids = sorted(clips_a)
        lo, hi = paired_bootstrap([clips_a[i][0] for i in ids], [clips_b[i][0] for i in ids], [clips_a[i][1] for i in ids])
        text += f" ({100 * lo:+.2f}, {100 * hi:+.2f})"
    return text
