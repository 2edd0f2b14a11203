"""Measured WER into a lite checkpoint's model card: the card's results table (rendered by
liteasr_hf.calibration.card from the checkpoint's calibration.json) and a `model-index` block in its
YAML metadata, which the Hub reads for its evaluation widget."""

from __future__ import annotations

import json
import os


def model_index(name: str, rows: list[dict]) -> str:
    """YAML `model-index` for results rows {dataset, split, wer (fraction)}; JSON strings are valid YAML scalars."""
    lines = ["model-index:", f"- name: {json.dumps(name)}", "  results:"]
    for r in rows:
        lines += [
            "  - task:", "      type: automatic-speech-recognition", "      name: Automatic Speech Recognition",
            "    dataset:", f"      name: {json.dumps(str(r['dataset']))}", f"      type: {json.dumps(str(r['dataset']))}",
            f"      split: {json.dumps(str(r.get('split') or 'all'))}",
            "    metrics:", "    - type: wer", f"      value: {round(100 * r['wer'], 2)}", "      name: WER",
        ]
    return "\n".join(lines)


def record_in_model_card(folder: str, result: dict, dense_result: dict | None = None, dataset: str = "", split: str | None = None) -> str:
    """Add an evaluate_model() result (and the dense model's, for comparison) to the card of `folder`."""
    from ..calibration.card import INFO_FILE, render_model_card

    s = result["summary"]
    notes = f"S/D/I {s['substitutions']}/{s['deletions']}/{s['insertions']}, {s['loops']} loops; greedy, Whisper normalizer"
    row = dict(dataset=dataset, split=split or "", clips=s["clips"], wer=s["wer"],
               dense_wer=dense_result["summary"]["wer"] if dense_result else None, notes=notes)
    text = render_model_card(folder, results=[row])
    with open(os.path.join(folder, INFO_FILE)) as f:
        info = json.load(f)
    # The rendered card opens with "---\n<yaml>\n---": the block goes at the end of that metadata.
    head, sep, body = text[4:].partition("\n---\n")
    text = "---\n" + head + "\n" + model_index(info.get("name") or os.path.basename(os.path.abspath(folder)), info["results"]) + sep + body
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
        f.write(text)
    return text
