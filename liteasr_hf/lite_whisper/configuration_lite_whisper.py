"""Lite-Whisper configuration: a Whisper config plus the rank of every low-rank encoder projection.

Ships inside checkpoints (trust_remote_code): import siblings with single-dot imports only.
Reads and writes the published LiteASR layout (efficient-speech/lite-whisper-*), whose only extra field is
`low_rank_config`.
"""

from transformers import WhisperConfig

# Encoder projections that may be low-rank, with their (in, out) sizes as functions of the config.
LOW_RANK_SHAPES = {
    "q_proj": lambda c: (c.d_model, c.d_model),
    "k_proj": lambda c: (c.d_model, c.d_model),
    "v_proj": lambda c: (c.d_model, c.d_model),
    "out_proj": lambda c: (c.d_model, c.d_model),
    "fc1": lambda c: (c.d_model, c.encoder_ffn_dim),
    "fc2": lambda c: (c.encoder_ffn_dim, c.d_model),
}

# How the installed package tells itself apart from a checkpoint's copy of this file (see __init__).
_RUNS_AS_PACKAGE = __name__.startswith("liteasr_hf.")


class LiteWhisperConfig(WhisperConfig):
    """`WhisperConfig` plus `low_rank_config`: one dict per encoder layer mapping any of
    q_proj, k_proj, v_proj, out_proj, fc1, fc2 to a rank. A name left out stays a dense `nn.Linear`."""

    model_type = "lite-whisper"

    def __init__(self, low_rank_config: list[dict[str, int]] | None = None, **kwargs):
        # The checkpoint's custom ASR pipeline is for trust_remote_code users. With the package installed its own
        # pipeline is registered instead, and keeping the entry would make pipeline() demand trust_remote_code.
        if _RUNS_AS_PACKAGE:
            kwargs.pop("custom_pipelines", None)
        super().__init__(**kwargs)
        if low_rank_config is None:
            low_rank_config = [{} for _ in range(self.encoder_layers)]
        self.low_rank_config = [{str(k): v for k, v in layer.items()} for layer in low_rank_config]
        self._check_low_rank_config()

    def _check_low_rank_config(self):
        layers = self.low_rank_config
        if len(layers) != self.encoder_layers:
            raise ValueError(
                f"low_rank_config has {len(layers)} entries but the encoder has {self.encoder_layers} layers"
            )
        for i, layer in enumerate(layers):
            for name, rank in layer.items():
                where = f"low_rank_config[{i}][{name!r}]"
                if name not in LOW_RANK_SHAPES:
                    raise ValueError(f"{where}: unknown projection, expected one of {sorted(LOW_RANK_SHAPES)}")
                d_in, d_out = LOW_RANK_SHAPES[name](self)
                if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(d_in, d_out):
                    raise ValueError(f"{where}: rank must be an int in [1, {min(d_in, d_out)}], got {rank!r}")
