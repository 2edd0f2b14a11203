"""ASR pipeline for Lite-Whisper: the stock pipeline, taking the Whisper seq2seq path for lite models too.

Ships inside checkpoints (trust_remote_code, config.json's `custom_pipelines`): single-dot imports only.
The stock pipeline picks the Whisper path only for model_type == "whisper" and sends anything else to CTC.
For lite models it also refuses audio that Whisper would silently transcribe as noise: empty audio (" . . . .")
and audio with NaN or infinite samples.
"""

from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.automatic_speech_recognition import AutomaticSpeechRecognitionPipeline

LITE_MODEL_TYPE = "lite-whisper"
TASK = "automatic-speech-recognition"


class LiteWhisperASRPipeline(AutomaticSpeechRecognitionPipeline):
    def _sanitize_parameters(self, **kwargs):
        # Pipeline.__init__ calls this right after AutomaticSpeechRecognitionPipeline.__init__ chose self.type, and
        # before anything reads it: the one place to correct the choice without copying __init__.
        lite = self.model.config.model_type == LITE_MODEL_TYPE
        if lite:
            self.type = "seq2seq_whisper"
        preprocess, forward, postprocess = super()._sanitize_parameters(**kwargs)
        # Chunked audio (chunk_length_s): decode every chunk WITH timestamp tokens unless the caller chose. Without
        # them Whisper decodes a 30 s chunk in its no-timestamps mode, which can stop after the first sentence or
        # loop to max_length (448 tokens) on a chunk that starts mid-sentence, and the chunks are then joined by a
        # token-overlap match that has no timing to anchor it: a loop is kept whole, and neighbours that disagree on
        # the 10 s they share are cut at a spurious match. With timestamps the merge skips tokens inside each
        # chunk's strides. Only the decoding changes: the output stays text only unless return_timestamps is given.
        # The chunk length may come with this call or from the pipeline's construction (`_preprocess_params`); some
        # transformers versions put the generation config's `return_timestamps=False` in `forward` on every call, so
        # only the caller's own choice counts.
        chunked = preprocess.get("chunk_length_s") or getattr(self, "_preprocess_params", {}).get("chunk_length_s")
        if lite and chunked and kwargs.get("return_timestamps") is None:
            forward["return_timestamps"] = True
        return preprocess, forward, postprocess

    def preprocess(self, inputs, **kwargs):
        # Checked on the log-mel features: the stock preprocess has decoded, resampled and downmixed by then, whatever
        # the input was (array, dict, path, bytes).
        for item in super().preprocess(inputs, **kwargs):
            if self.model.config.model_type == LITE_MODEL_TYPE:
                check_features(item)
            yield item


def check_features(item):
    """Raise ValueError for one preprocessed window of empty or non-finite audio. The feature extractor's attention
    mask has one frame per started 10 ms, so it is all zeros only for 0 samples."""
    mask = item.get("attention_mask")
    if mask is not None and not mask.any():
        raise ValueError("the audio is empty (0 samples): nothing to transcribe")
    if not item["input_features"].isfinite().all():
        raise ValueError("the audio has NaN or infinite samples")


def register_asr_pipeline():
    """Make pipeline("automatic-speech-recognition", ...) use LiteWhisperASRPipeline, which behaves exactly like the
    stock class for every other model. Done in place so the task keeps its default model and model classes; a
    pipeline someone else registered for the task is left alone."""
    task = PIPELINE_REGISTRY.supported_tasks[TASK]
    impl = task["impl"]
    name = impl if isinstance(impl, str) else f"{impl.__module__}.{impl.__qualname__}"
    stock = f"{AutomaticSpeechRecognitionPipeline.__module__}.{AutomaticSpeechRecognitionPipeline.__qualname__}"
    if name == stock or name.endswith(f".{LiteWhisperASRPipeline.__qualname__}"):
        task["impl"] = LiteWhisperASRPipeline
