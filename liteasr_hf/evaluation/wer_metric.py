"""`evaluate` metric module: word error rate with its parts, backed by jiwer.

The Hub's `evaluate.load("wer")` downloads its script; this local copy loads offline through
`evaluate.load(<this file>)` and also returns substitutions/deletions/insertions and per-utterance
error counts, which the Hub script does not. evaluate parses imports line by line: keep one per line.
"""

import datasets
import evaluate
import jiwer


class WerMetric(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Word error rate (S + D + I) / N over the whole corpus, with its parts.",
            citation="",
            inputs_description="predictions, references: lists of (already normalized) strings; references non-empty.",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        out = jiwer.process_words(list(references), list(predictions))
        per = [
            sum(c.ref_end_idx - c.ref_start_idx if c.type != "insert" else c.hyp_end_idx - c.hyp_start_idx
                for c in chunks if c.type != "equal")
            for chunks in out.alignments
        ]
        return {
            "wer": out.wer,
            "substitutions": out.substitutions,
            "deletions": out.deletions,
            "insertions": out.insertions,
            "hits": out.hits,
            "utterance_errors": per,
            "utterance_words": [len(r) for r in out.references],
        }
