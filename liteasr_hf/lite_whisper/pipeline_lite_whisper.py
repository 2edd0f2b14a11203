"""ASR pipeline for Lite-Whisper: the stock pipeline, taking the Whisper seq2seq path for lite models too.

Ships inside checkpoints (trust_remote_code, config.json's `custom_pipelines`): single-dot imports only.
`pipeline("automatic-speech-recognition", model=<checkpoint folder>, trust_remote_code=True)` finds the class through
`custom_pipelines`; a model object (and a folder loaded by the package, whose config drops `custom_pipelines`) reaches
it through the task's registry entry, which `register_asr_pipeline` sets once when the modeling file is imported.
The stock pipeline picks the Whisper path only for model_type == "whisper" and sends anything else to CTC.
For lite models it also refuses audio that Whisper would silently transcribe as noise: empty audio (" . . . .")
and audio with NaN or infinite samples. Any other model gets the stock pipeline itself (see __new__).
"""

from transformers import AutomaticSpeechRecognitionPipeline

LITE_MODEL_TYPE = "lite-whisper"


class LiteWhisperASRPipeline(AutomaticSpeechRecognitionPipeline):
    def __new__(cls, model=None, *args, **kwargs):
        # Registered for the whole task (by the package), the class is asked for every model: build the stock pipeline
        # for any model that is not a lite one (Python then skips __init__, the object not being an instance of cls).
        if model is not None and getattr(model.config, "model_type", None) != LITE_MODEL_TYPE:
            return AutomaticSpeechRecognitionPipeline(model, *args, **kwargs)
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        # A chunk length given at construction: _sanitize_parameters sees it then, but not in a later call's arguments.
        self.chunked_by_default = bool(kwargs.get("chunk_length_s"))
        super().__init__(*args, **kwargs)

    def _sanitize_parameters(self, **kwargs):
        # Pipeline.__init__ calls this right after AutomaticSpeechRecognitionPipeline.__init__ chose self.type, and
        # before anything reads it: the one place to correct the choice without copying __init__.
        self.type = "seq2seq_whisper"
        preprocess, forward, postprocess = super()._sanitize_parameters(**kwargs)
        # Chunked audio (chunk_length_s): decode every chunk WITH timestamp tokens unless the caller chose. Without
        # them Whisper decodes a 30 s chunk in its no-timestamps mode, which can stop after the first sentence or
        # loop to max_length (448 tokens) on a chunk that starts mid-sentence, and the chunks are then joined by a
        # token-overlap match that has no timing to anchor it: a loop is kept whole, and neighbours that disagree on
        # the 10 s they share are cut at a spurious match. With timestamps the merge skips tokens inside each
        # chunk's strides. Only the decoding changes: the output stays text only unless return_timestamps is given.
        # Some transformers versions put the generation config's `return_timestamps=False` in `forward` on every
        # call, so only the caller's own choice counts.
        chunked = preprocess.get("chunk_length_s") or self.chunked_by_default
        if chunked and kwargs.get("return_timestamps") is None:
            forward["return_timestamps"] = True
        return preprocess, forward, postprocess

    def preprocess(self, inputs, **kwargs):
        # Checked on the log-mel features: the stock preprocess has decoded, resampled and downmixed by then, whatever
        # the input was (array, dict, path, bytes).
        for item in super().preprocess(inputs, **kwargs):
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


def _dotted(impl):  # the registry holds a class (transformers 5.17) or its dotted path (5.25)
    return impl if isinstance(impl, str) else f"{impl.__module__}.{impl.__qualname__}"


def register_asr_pipeline():
    """Make the automatic-speech-recognition task's registry entry this class, in place (the task keeps its default
    model and model classes), where the entry is still transformers' own class: `pipeline(model=<model object>)`
    reads no config, so the entry is the only way a lite model object gets the Whisper path. Every other model still
    gets the stock pipeline (`__new__`); a pipeline someone else registered for the task is left alone."""
    from transformers.pipelines import PIPELINE_REGISTRY

    task = PIPELINE_REGISTRY.supported_tasks["automatic-speech-recognition"]
    if _dotted(task["impl"]) == _dotted(AutomaticSpeechRecognitionPipeline):
        task["impl"] = LiteWhisperASRPipeline
