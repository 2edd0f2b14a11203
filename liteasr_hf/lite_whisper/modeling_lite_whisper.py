"""Lite-Whisper: Whisper whose encoder projections are low-rank, `(x @ weight1) @ weight2 + bias`.

Ships inside checkpoints (trust_remote_code): import siblings with single-dot imports only, nothing from
liteasr_hf. Tensor names follow the published LiteASR checkpoints (efficient-speech/lite-whisper-*):
`model.encoder.layers.{i}.self_attn.{q,k,v,out}_proj.{weight1,weight2,bias}`, `model.encoder.layers.{i}.{fc1,fc2}.*`.

`attn_implementation="liteasr"` runs encoder self-attention in rank space (`LiteWhisperAttention`) and the
decoder on SDPA. Importing this file registers that implementation (AttentionInterface, AttentionMaskInterface) and
the ASR pipeline for lite models (`register_asr_pipeline`: other models keep the stock pipeline).
"""

import copy
import logging
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.whisper import modeling_whisper
from transformers.models.whisper.modeling_whisper import (
    WhisperAttention,
    WhisperEncoder,
    WhisperEncoderLayer,
    WhisperForConditionalGeneration,
    WhisperModel,
    WhisperPreTrainedModel,
    eager_attention_forward,
)

from .attention_lite_whisper import attention_core
from .generation_config_lite_whisper import complete_whisper_generation_config
from .configuration_lite_whisper import LOW_RANK_SHAPES, LiteWhisperConfig, projection_path
from .context_lite_whisper import ContextPlan, ContextSettings, fit_features, pop_context
from .pipeline_lite_whisper import LiteWhisperASRPipeline, register_asr_pipeline

ATTN_IMPLEMENTATION = "liteasr"
logger = logging.getLogger(__name__)


class LowRankLinear(nn.Module):
    """`nn.Linear` replacement of rank k: weight1 [in, k], weight2 [k, out], bias [out] (the published layout)."""

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.weight1 = nn.Parameter(torch.empty(in_features, rank))
        self.weight2 = nn.Parameter(torch.empty(rank, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        nn.init.normal_(self.weight1, std=0.02)
        nn.init.normal_(self.weight2, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # addmm: the bias add rides in the GEMM epilogue (one kernel fewer per projection in eager mode)
        h = x.reshape(-1, self.in_features) @ self.weight1
        return torch.addmm(self.bias, h, self.weight2).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


# ---------------------------------------------------------------------------------------------------------------
# attn_implementation="liteasr": decoder (and dense encoder layers) on SDPA, encoder self-attention in rank space.


def _additive_mask(query, key, attention_mask, is_causal):
    """SDPA-style mask (bool, or None meaning "causal or nothing") -> the additive float mask eager attention adds."""
    if attention_mask is None:
        if not is_causal or query.shape[2] == 1:
            return None
        q_len, kv_len = query.shape[2], key.shape[2]
        attention_mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)
    if attention_mask.dtype == torch.bool:
        zero = torch.zeros((), dtype=query.dtype, device=query.device)
        attention_mask = torch.where(attention_mask, zero, torch.finfo(query.dtype).min)
    return attention_mask


# transformers' registered attention functions, read through the public interface (not transformers.integrations).
_ATTENTION_FUNCTIONS = AttentionInterface()


def liteasr_attention_forward(module, query, key, value, attention_mask, **kwargs):
    # Attention weights (output_attentions) need the eager path (SDPA refuses them, and Whisper's word timestamps ask
    # for the cross-attention weights); it takes an additive mask, SDPA's is boolean.
    if kwargs.get("output_attentions"):
        is_causal = getattr(module, "is_causal", False)
        mask = _additive_mask(query, key, attention_mask, is_causal)
        return eager_attention_forward(module, query, key, value, mask, **kwargs)
    return _ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)


# Both registrations are needed: without a mask function, create_causal_mask skips mask creation for an unknown
# implementation and the decoder's padding mask is silently dropped (transformers issue 46132). SDPA's mask function,
# looked up through the interface rather than imported from transformers.masking_utils.
AttentionInterface.register(ATTN_IMPLEMENTATION, liteasr_attention_forward)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, AttentionMaskInterface()["sdpa"])
register_asr_pipeline()


def _split_heads(x, num_heads):
    """[B, T, H*d] -> [B, H, T, d]"""
    return x.unflatten(-1, (num_heads, -1)).transpose(1, 2)


class LiteWhisperAttention(WhisperAttention):
    """Encoder self-attention that, under attn_implementation="liteasr", computes in rank space where that pays.

    With q = A W_Q2 + b_Q (A = X W_Q1) and k = B W_K2 + b_K (B = X W_K1), head i scores are
        s q_i k_i^T = s A (W_Q2^i W_K2^iT) B^T + s 1 (W_K2^i b_Q^i)^T B^T + (terms constant along each query row).
    The row constants cancel in softmax, so b_K never matters and b_Q leaves a per-key bias. The [kq, kk] product
    is contracted into whichever operand is larger, so QK^T costs H T^2 min(kq, kk) instead of H T^2 d. A dense
    projection is the same with A = per-head q (W_Q2 = I). Values: S (C W_V2^i + b_V^i) = (S C) W_V2^i + b_V^i with
    C = X W_V1, since softmax rows sum to 1; PV costs H T^2 kv instead of H T^2 d.
    Each part takes the rank-space form only when it is cheaper (rank < head_dim); `attention_core` does the rest, with
    the implementation `config.attention_kernel` picks ("auto": the Triton kernel on CUDA, PyTorch elsewhere).
    When neither part pays (ranks >= head_dim, e.g. the paper's configuration (c)), attention runs on SDPA in dense
    space; the projections still run fused (see `_first_stage`, `_dense_space`).
    """

    def forward(self, hidden_states, key_value_states=None, attention_mask=None, output_attentions=False,
                key_weights=None, **kwargs):
        """`key_weights` [T] (log of how many positions each row stands for, see `ContextPlan.groups`) adds to every
        query's score of that key: the encoder's padding stride."""
        if (
            self.config._attn_implementation != ATTN_IMPLEMENTATION
            or key_value_states is not None
            or attention_mask is not None
            or output_attentions
            or (self.training and self.dropout > 0)
            or not self._low_rank_names()
        ):
            if key_weights is not None:  # an additive mask is what transformers' attention takes for it
                attention_mask = key_weights.view(1, 1, 1, -1) if attention_mask is None else attention_mask + key_weights
            return super().forward(
                hidden_states,
                key_value_states=key_value_states,
                attention_mask=attention_mask,
                output_attentions=output_attentions,
                **kwargs,
            )
        q, k, v, key_bias = self.attention_operands(hidden_states)
        if self._qk_rank_space() or self._v_rank_space():
            if key_weights is not None:
                weights = key_weights.to(q.dtype).view(1, 1, -1)
                key_bias = weights.expand(q.shape[0], q.shape[1], -1) if key_bias is None else key_bias + weights
            kernel = getattr(self.config, "attention_kernel", "auto")  # "auto" | "triton" | "reference"
            out = attention_core(q, k, v, key_bias, kernel=kernel)  # [B, H, T, r or d]
        else:  # the scale is folded into q
            mask = None if key_weights is None else key_weights.to(q.dtype).view(1, 1, 1, -1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
        if self._v_rank_space():
            v_proj = self.v_proj
            w2 = v_proj.weight2.unflatten(1, (self.num_heads, self.head_dim)).transpose(0, 1)  # [H, kv, d]
            out = out @ w2 + v_proj.bias.view(self.num_heads, 1, self.head_dim)
        out = out.transpose(1, 2).flatten(2)
        return self.out_proj(out), None

    def _derived(self, name, sources, build):
        """A tensor computed from weights only (fused at run time from the published per-projection tensors, never
        saved), cached until a source tensor changes (in-place ops under no_grad bump `_version`; moves, casts and
        `.data =` change the pointer). Under torch.compile or autograd it is rebuilt inside the graph instead.
        NOT seen: in-place writes through `.data` (`w.data.copy_(...)` keeps pointer and version): call
        `clear_derived_cache()` after such edits."""
        if torch.compiler.is_compiling() or (torch.is_grad_enabled() and any(t.requires_grad for t in sources)):
            return build()
        # Inference tensors (made under torch.inference_mode) keep no version counter; they cannot change outside it.
        key = tuple((t.data_ptr(), 0 if t.is_inference() else t._version, t.dtype, t.device) for t in sources)
        cache = self.__dict__.setdefault("_derived_cache", {})
        hit = cache.get(name)
        if hit is None or hit[0] != key:
            with torch.no_grad():
                hit = cache[name] = (key, build())
        return hit[1]

    def clear_derived_cache(self):
        self.__dict__.pop("_derived_cache", None)

    def _low_rank_names(self):
        return [n for n in ("q_proj", "k_proj", "v_proj") if isinstance(getattr(self, n), LowRankLinear)]

    def _qk_rank_space(self):
        ranks = [p.rank for p in (self.q_proj, self.k_proj) if isinstance(p, LowRankLinear)]
        return bool(ranks) and min(ranks) < self.head_dim

    def _v_rank_space(self):
        return isinstance(self.v_proj, LowRankLinear) and self.v_proj.rank < self.head_dim

    def _first_stage(self, x):
        """x @ weight1 of every low-rank q/k/v projection as ONE GEMM over the concatenated weight1 [d, kq + kk + kv]
        (skinny N=k GEMMs leave most of a GPU idle at batch 1). Returns {name: [B*T, k] column view} of the product;
        addmm and attention_core take the views' strides as they are."""
        names = self._low_rank_names()
        w1s = [getattr(self, n).weight1 for n in names]
        w1 = w1s[0] if len(w1s) == 1 else self._derived("w1:" + ",".join(names), w1s, lambda: torch.cat(w1s, dim=1))
        h = x.reshape(-1, x.shape[-1]) @ w1
        return dict(zip(names, h.split([w.shape[1] for w in w1s], dim=1)))

    def _dense_space(self, x, names, first):
        """Full projections {name: [B, T, D]} for `names`, q pre-scaled by the softmax scale (folded into cached
        copies of its weight2 and bias; 64^-0.5 = 1/8 is exact in every dtype). A low-rank one is one addmm on its
        columns of the fused first stage, so the bias rides in cuBLASLt's epilogue. (One baddbmm over q/k/v was
        tried: it first copies its broadcast bias into the output, a strided copy that cost an H100 more than the
        batching saved.)"""
        batch, length, _ = x.shape
        out = {}
        for n in names:
            proj = getattr(self, n)
            if n not in first:  # a dense projection
                out[n] = proj(x) * self.scaling if n == "q_proj" else proj(x)
                continue
            w2, bias = proj.weight2, proj.bias
            if n == "q_proj":
                w2, bias = self._derived("q_scaled", [w2, bias], lambda: (w2 * self.scaling, bias * self.scaling))
            out[n] = torch.addmm(bias, first[n], w2).view(batch, length, -1)
        return out

    def _qk_factors(self, proj, x, first):
        """proj(x) per head i as a @ p[i] + c[i]: a [B, 1, T, k] (shared by heads) for a low-rank projection, else
        a = the per-head projection [B, H, T, d] with p = identity and c = 0 (returned as None)."""
        if isinstance(proj, LowRankLinear):
            a = first["q_proj" if proj is self.q_proj else "k_proj"].view(x.shape[0], 1, x.shape[1], proj.rank)
            p = proj.weight2.unflatten(1, (self.num_heads, self.head_dim)).transpose(0, 1)  # [H, k, d]
            return a, p, proj.bias.view(self.num_heads, self.head_dim)
        return _split_heads(proj(x), self.num_heads), None, None

    def attention_operands(self, x):
        """Operands of the attention core: q [B, H, T, r] (softmax scale folded in), k [B, 1 or H, T, r],
        v [B, 1 or H, T, kv or d], key_bias [B, H, T] or None. r is min(kq, kk) where QK pays in rank space, else
        head_dim (then q, k are per-head dense-space views and key_bias is None)."""
        batch, length, _ = x.shape
        heads = self.num_heads
        first = self._first_stage(x)  # one GEMM for the low-rank q/k/v first stages
        qk_rank, v_rank = self._qk_rank_space(), self._v_rank_space()
        dense_names = ([] if qk_rank else ["q_proj", "k_proj"]) + ([] if v_rank else ["v_proj"])
        dense = self._dense_space(x, dense_names, first)
        if qk_rank:
            aq, pq, cq = self._qk_factors(self.q_proj, x, first)
            ak, pk, _ = self._qk_factors(self.k_proj, x, first)  # b_K cancels in softmax
            # s W_Q2^i W_K2^iT and s W_K2^i b_Q^i depend on weights only: built once, cached (self._derived).
            # m[i] = s W_Q2^i W_K2^iT, with identity standing in for a dense side; the scale s rides in m.
            # Keyed on the parameters themselves, not on these per-call views of them.
            sources = [t for proj in (self.q_proj, self.k_proj) if isinstance(proj, LowRankLinear)
                       for t in (proj.weight2, proj.bias)]

            def build_m():
                if pk is None:
                    return pq * self.scaling  # [H, kq, d]
                if pq is None:
                    return pk.transpose(1, 2) * self.scaling  # [H, d, kk]
                return (pq @ pk.transpose(1, 2)) * self.scaling  # [H, kq, kk]

            m = self._derived("m", sources, build_m)
            if ak.shape[-1] <= aq.shape[-1]:
                q, k = aq @ m, ak  # contract on the query side: r = kk
            else:
                # contract on the key side: r = kq; q stays one [B, 1, T, kq] tensor with stride 0 over heads
                q, k = aq.expand(batch, heads, length, -1), ak @ m.transpose(1, 2)
            key_bias = None
            if cq is not None:  # the b2 term: s b_Q^i . k_i(t), without b_K
                kq_bias = self._derived(
                    "kq_bias", sources,
                    lambda: (cq[:, :, None] if pk is None else pk @ cq[:, :, None]) * self.scaling,  # [H, kk|d, 1]
                )
                key_bias = (ak @ kq_bias).squeeze(-1)
                key_bias = key_bias.expand(batch, heads, length)
        else:
            q, k, key_bias = _split_heads(dense["q_proj"], heads), _split_heads(dense["k_proj"], heads), None
        if v_rank:  # [B, 1, T, kv]; W_V2 and b_V are applied after the core
            v = first["v_proj"].view(batch, 1, length, self.v_proj.rank)
        else:
            v = _split_heads(dense["v_proj"], heads)
        # No .contiguous(): attention_core and SDPA take strides (stride 0 over heads, column views of the fused
        # GEMM, per-head views of [B, T, D]); copies here would write H x [B, T, r] for an expanded q.
        return q, k, v, key_bias


# ---------------------------------------------------------------------------------------------------------------
# Models


class LiteWhisperEncoderLayer(WhisperEncoderLayer):
    def __init__(self, config: LiteWhisperConfig, low_rank_config: dict[str, int] | None = None):
        super().__init__(config)
        self.self_attn = LiteWhisperAttention(
            embed_dim=self.embed_dim,
            num_heads=config.encoder_attention_heads,
            dropout=config.attention_dropout,
            config=config,
        )
        for name, rank in (low_rank_config or {}).items():
            owner = self.get_submodule(projection_path(name).rpartition(".")[0])  # "" is the layer itself
            setattr(owner, name, LowRankLinear(*LOW_RANK_SHAPES[name](config), rank))

    def forward(self, hidden_states, *args, **kwargs):
        # Whisper's stem hands the layers a channels-first residual stream (the conv output permuted to [B, T, C] is a
        # view, and adding the positions keeps its layout), and every layer keeps it: each residual add and layer norm
        # then runs as a strided, uncoalesced kernel (large-v3 on an H100, batch 8: this copy saved 12 of 61 ms). One
        # copy here, a no-op after the first layer, makes the stream contiguous for all of them; values are unchanged.
        return super().forward(hidden_states.contiguous(), *args, **kwargs)


class LiteWhisperPreTrainedModel(WhisperPreTrainedModel):
    config_class = LiteWhisperConfig
    _no_split_modules = ["LiteWhisperEncoderLayer", "WhisperEncoderLayer", "WhisperDecoderLayer"]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, LowRankLinear):
            init.normal_(module.weight1, mean=0.0, std=self.config.init_std)
            init.normal_(module.weight2, mean=0.0, std=self.config.init_std)
            init.zeros_(module.bias)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, but tensors that disagree with the config are an error naming them
        (transformers only warns about missing ones). Pass ignore_mismatched_sizes=True to allow shape mismatches."""
        want_info = kwargs.pop("output_loading_info", False)
        ignore_mismatched = kwargs.pop("ignore_mismatched_sizes", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
        problems = [f"missing tensor {key}" for key in sorted(info["missing_keys"])]
        if not ignore_mismatched:
            problems += [
                f"tensor {key} has shape {tuple(saved)} but the config expects {tuple(expected)}"
                for key, saved, expected in sorted(info["mismatched_keys"])
            ]
        # A tensor the encoder does not expect means the checkpoint's ranks or dense/low-rank split differ.
        problems += [
            f"unexpected tensor {key}" for key in sorted(info["unexpected_keys"]) if ".encoder.layers." in key
        ]
        if problems:
            raise ValueError(f"checkpoint does not match its low_rank_config: {'; '.join(problems)}")
        if model.can_generate():  # published uploads carry a bare generation config (see generation_config_...)
            complete_whisper_generation_config(model.generation_config, model.config)
        return (model, info) if want_info else model


# ---------------------------------------------------------------------------------------------------------------
# Dynamic encoder context (context_lite_whisper.py: the plan)


class LiteWhisperEncoder(LiteWhisperPreTrainedModel, WhisperEncoder):
    """Whisper's encoder with low-rank layers, on the context a `ContextPlan` gives: the full window (3,000 mel
    frames, 30 s) or, with the config's `encoder_context_buckets`, the bucket that covers the audio, positions sliced to
    match. `forward(..., encoder_context=...)` takes a plan, or settings to plan with (`ContextSettings`), for one
    call; by default the config's settings. Shorter input features are padded to the plan as the feature extractor
    pads (`padding_frames`)."""

    def __init__(self, config: LiteWhisperConfig):
        super().__init__(config)
        self.layers = nn.ModuleList(LiteWhisperEncoderLayer(config, ranks) for ranks in config.low_rank_config)
        self.post_init()

    def full_frames(self) -> int:
        return self.config.max_source_positions * self.conv1.stride[0] * self.conv2.stride[0]

    def context_settings(self) -> ContextSettings:
        """The config's context settings (what a call without `encoder_context` runs on)."""
        return ContextSettings.from_config(self.config)

    def context_plan(self, input_features, attention_mask=None, encoder_context=None) -> ContextPlan:
        """The plan for these features: `encoder_context` itself when it is a plan, else planned with it (settings)
        or with the config's settings. The one data-dependent step (it reads the audio's length); `encode`'s shapes
        then follow from the plan (CUDA graphs)."""
        full = self.full_frames()
        if input_features.shape[-1] > full:
            raise ValueError(f"the encoder takes at most {full} mel frames ({full // 100} s), got "
                             f"{input_features.shape[-1]}: long-form audio goes through generate(), 30 s at a time")
        if isinstance(encoder_context, ContextPlan):
            return encoder_context
        settings = self.context_settings() if encoder_context is None else encoder_context
        if not isinstance(settings, ContextSettings):
            raise TypeError(f"encoder_context must be a ContextPlan or ContextSettings, got {type(settings).__name__}")
        return settings.plan_features(input_features, attention_mask)

    @modeling_whisper.merge_with_config_defaults
    @modeling_whisper.capture_outputs
    def forward(self, input_features, attention_mask=None, encoder_context=None, **kwargs):
        plan = self.context_plan(input_features, attention_mask, encoder_context)
        hidden_states = self.encode(fit_features(input_features, plan), plan, **kwargs)
        return BaseModelOutput(last_hidden_state=hidden_states)

    def encode(self, input_features, plan: ContextPlan | None = None, **kwargs):
        """Last hidden state [B, frames / 2, d] of features already at their context: stem, sliced positions, layers.
        Where the plan strides the padding, the positions past its dense ones are computed one in `plan.stride`
        (`padding_groups`) and repeated over their groups in the output: every row of a group is then equal, and a
        decoder may project each run of equal rows once (liteasr_hf.cpu's lean layers do)."""
        inputs_embeds = F.gelu(self.conv1(input_features))
        inputs_embeds = F.gelu(self.conv2(inputs_embeds)).permute(0, 2, 1)
        hidden_states = inputs_embeds + self.embed_positions.weight[: inputs_embeds.shape[1]]
        hidden_states = F.dropout(hidden_states, p=self.dropout, training=self.training)
        frames = hidden_states.shape[1]
        # flash-attention implementations take no additive bias: they run every frame
        groups = None
        if plan is not None and self.config._attn_implementation in (ATTN_IMPLEMENTATION, "sdpa", "eager"):
            groups = plan.groups(hidden_states.device)
        key_weights = None
        if groups is not None:
            index, counts = groups
            hidden_states = hidden_states[:, index]
            key_weights = counts.to(hidden_states.dtype).log()  # [N]: each row counts `count` times in attention
        for encoder_layer in self.layers:  # as WhisperEncoder.forward, LayerDrop included
            if not (self.training and self.layerdrop > 0.0 and torch.rand([]) < self.layerdrop):
                hidden_states = encoder_layer(hidden_states, None, key_weights=key_weights, **kwargs)
        hidden_states = self.layer_norm(hidden_states)
        if groups is not None:  # every position back, so that the decoder (and word timestamps) see the whole context
            hidden_states = hidden_states.repeat_interleave(groups[1], dim=1, output_size=frames)
        return hidden_states


class LiteWhisperModel(LiteWhisperPreTrainedModel, WhisperModel):
    def __init__(self, config: LiteWhisperConfig):
        super().__init__(config)
        self.encoder = LiteWhisperEncoder(config)
        self.post_init()


# Whisper's threshold (openai/whisper transcribe.py) for gzip compression of the text; here of the token ids.
COMPRESSION_RATIO_THRESHOLD = 2.4


def repetition_suspected(tokens, eos_token_id, max_new_tokens: int | None = None, min_tokens: int = 24) -> bool:
    """Whether a row of Whisper's generate output (text and timestamp tokens, padded with `eos_token_id`; the prompt
    and the closing <|endoftext|> are not returned) looks like a repetition loop: it holds `max_new_tokens` - 1 tokens
    or more (it ran into the limit), or its text tokens compress more than `COMPRESSION_RATIO_THRESHOLD` (zlib over
    their bytes, as transformers' Whisper fallback measures tokens). Rows shorter than `min_tokens` do not compress
    either way."""
    tokens = [t for t in tokens if t != eos_token_id]
    if max_new_tokens is not None and len(tokens) >= max_new_tokens - 1:
        return True
    text = [t for t in tokens if eos_token_id is None or t < eos_token_id]  # special and timestamp tokens come after
    if len(text) < min_tokens:
        return False
    data = b"".join(t.to_bytes(2, "little") for t in text)  # every Whisper vocabulary fits in 16 bits
    return len(data) / len(zlib.compress(data)) > COMPRESSION_RATIO_THRESHOLD


@dataclass
class LoopGuardCount:
    """Rows the loop guard decoded again, and rows still suspect after that, since the model was loaded."""

    fallbacks: int = 0
    loops: int = 0


class LiteWhisperForConditionalGeneration(LiteWhisperPreTrainedModel, WhisperForConditionalGeneration):
    def __init__(self, config: LiteWhisperConfig):
        super().__init__(config)
        self.model = LiteWhisperModel(config)
        self.loop_guard = LoopGuardCount()
        self.post_init()

    @classmethod
    def from_whisper(cls, model, low_rank_config=None, factors=None):
        """Lite model from a dense `WhisperForConditionalGeneration` and factor tensors; with neither, the dense
        weights as lite-whisper with no low-rank layer (what the dynamic encoder context needs).

        `factors` maps dense module names relative to the encoder ("layers.0.self_attn.q_proj", "layers.3.fc1") to
        (weight1 [in, k], weight2 [k, out], bias [out]); exactly the names in `low_rank_config` must be present.
        Everything else is copied from `model`, so the result shares no tensor with it. Factors are cast to the
        dense model's dtype and device.
        """
        factors = factors or {}
        config_dict = model.config.to_dict()
        for key in ("model_type", "architectures", "auto_map", "custom_pipelines", "_name_or_path"):
            config_dict.pop(key, None)
        config = LiteWhisperConfig(
            **config_dict, low_rank_config=low_rank_config, architectures=["LiteWhisperForConditionalGeneration"]
        )
        config._attn_implementation = model.config._attn_implementation

        expected = {f"layers.{i}.{projection_path(n)}": (n, r)
                    for i, layer in enumerate(config.low_rank_config) for n, r in layer.items()}
        if set(factors) != set(expected):
            missing, extra = sorted(set(expected) - set(factors)), sorted(set(factors) - set(expected))
            raise ValueError(f"factors do not match low_rank_config: missing {missing}, not in config {extra}")

        weight = next(model.parameters())
        state = {key: t.detach().clone() for key, t in model.state_dict().items() if ".encoder.layers." not in key}
        for key, t in model.state_dict().items():
            if ".encoder.layers." in key:
                module = key.split(".encoder.", 1)[1].rsplit(".", 1)[0]
                if module not in expected:
                    state[key] = t.detach().clone()
        for name, (w1, w2, b) in factors.items():
            proj, rank = expected[name]
            d_in, d_out = LOW_RANK_SHAPES[proj](config)
            for part, tensor, shape in (("weight1", w1, (d_in, rank)), ("weight2", w2, (rank, d_out)), ("bias", b, (d_out,))):
                if tuple(tensor.shape) != shape:
                    raise ValueError(f"factors[{name!r}] {part} has shape {tuple(tensor.shape)}, expected {shape}")
                state[f"model.encoder.{name}.{part}"] = tensor.detach().to(weight.device, weight.dtype, copy=True)

        with torch.device("meta"):
            lite = cls(config)
        lite.load_state_dict(state, strict=True, assign=True)
        lite.tie_weights()
        lite.generation_config = copy.deepcopy(model.generation_config)
        return lite.eval() if not model.training else lite

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Self-contained checkpoint: also writes auto_map and the ASR custom pipeline; transformers copies the code
        files (this file and its single-dot imports: the class is registered for an auto class, below), so that
        `trust_remote_code=True` alone loads it. Processor files are saved by the processor's owner (see
        `liteasr_hf.save_lite_checkpoint`). A model carrying inference-only modules (liteasr_hf.optimize_for_cpu's)
        is refused: their weights are fused, quantized or cast, and their code is not in the checkpoint."""
        swapped = sorted({type(m).__name__ for m in self.modules() if getattr(m, "inference_only", False)})
        if swapped:
            raise ValueError(f"this model carries inference-only modules ({', '.join(swapped)}, from optimize_for_cpu): "
                             "save the model as loaded, before optimizing it")
        self.config.auto_map = {
            "AutoConfig": "configuration_lite_whisper.LiteWhisperConfig",
            "AutoModel": "modeling_lite_whisper.LiteWhisperForConditionalGeneration",
            "AutoModelForSpeechSeq2Seq": "modeling_lite_whisper.LiteWhisperForConditionalGeneration",
        }
        self.config.custom_pipelines = {
            "automatic-speech-recognition": {
                "impl": f"pipeline_lite_whisper.{LiteWhisperASRPipeline.__name__}",
                "pt": ["AutoModelForSpeechSeq2Seq"],
                "type": "multimodal",
            }
        }
        super().save_pretrained(save_directory, *args, **kwargs)

    def generate(self, input_features=None, *args, **kwargs):
        """Whisper's `generate` on the encoder context the config asks for, or for this call `encoder_context` (a
        `ContextSettings` or `ContextPlan`) or any of `encoder_context_buckets` (seconds, or None for the full 30 s
        window), `encoder_context_margin`, `encoder_padding_stride` (`pop_context`).

        Loop guard: where a shortened context was in force, a row that ran into the token limit or whose tokens
        compress like a repetition (`repetition_suspected`) is decoded again on the full window, every frame: a
        clip near the top of its bucket leaves the decoder little padding to see the speech end. `loop_guard`
        counts the rows decoded again (`.fallbacks`) and those still suspect after it (`.loops`);
        `guard_loops=False` turns it off."""
        guard_loops = kwargs.pop("guard_loops", True)
        context = pop_context(self.model.encoder.context_settings(), kwargs)
        if context is not None:
            kwargs["encoder_context"] = context
        out = super().generate(input_features, *args, **kwargs)
        if (not guard_loops or input_features is None or not torch.is_tensor(out)
                or input_features.shape[-1] > self.model.encoder.full_frames()):
            return out
        return self._guard_loops(out, input_features, args, kwargs)

    def _guard_loops(self, sequences, input_features, args, kwargs):
        full = ContextPlan(self.model.encoder.full_frames())
        context = kwargs.get("encoder_context")
        if context is None:
            context = self.model.encoder.context_settings()
        if context == full or (isinstance(context, ContextSettings) and not context.dynamic):
            return sequences
        batch = input_features.shape[0]
        if any(torch.is_tensor(v) and v.dim() and v.shape[0] == batch for k, v in kwargs.items() if k != "attention_mask"):
            return sequences  # other per-row inputs: not sliced here
        eos = self.generation_config.eos_token_id
        eos = eos[0] if isinstance(eos, (list, tuple)) else eos
        limit = kwargs.get("max_new_tokens") or self.generation_config.max_new_tokens
        if limit is None:  # the prompt (<|startoftranscript|>, language, task, <|notimestamps|>) counts in max_length
            limit = (kwargs.get("max_length") or self.generation_config.max_length) - 4
        rows = [i for i in range(batch) if repetition_suspected(sequences[i].tolist(), eos, limit)]
        if not rows:
            return sequences
        again = dict(kwargs, encoder_context=full)
        mask = kwargs.get("attention_mask")
        if mask is not None:
            again["attention_mask"] = mask[rows]
        redone = WhisperForConditionalGeneration.generate(self, input_features[rows], *args, **again)
        self.loop_guard.fallbacks += len(rows)
        self.loop_guard.loops += sum(repetition_suspected(r.tolist(), eos, limit) for r in redone)
        logger.info("loop guard: %d of %d rows decoded again on the full window", len(rows), batch)
        pad = self.generation_config.pad_token_id if self.generation_config.pad_token_id is not None else eos
        width = max(sequences.shape[1], redone.shape[1])
        merged = sequences.new_full((batch, width), pad)
        merged[:, : sequences.shape[1]] = sequences
        for j, i in enumerate(rows):
            merged[i] = pad
            merged[i, : redone.shape[1]] = redone[j]
        return merged

    def _prepare_decoder_input_ids_for_generation(self, batch_size, model_input_name, model_kwargs, *args, **kwargs):
        # transformers prepends decoder_start_token_id to user decoder ids unless model_type == "whisper"; Whisper's
        # generate builds them itself (<|startofprev|> prompt, language, task), so keep them as they are.
        if model_kwargs is not None and "decoder_input_ids" in model_kwargs:
            return model_kwargs.pop("decoder_input_ids"), model_kwargs
        return super()._prepare_decoder_input_ids_for_generation(
            batch_size, model_input_name, model_kwargs, *args, **kwargs
        )


# save_pretrained then copies this file and everything it imports by single-dot imports into the checkpoint (as
# trust_remote_code looks for them), and sets auto_map's entry for this auto class.
LiteWhisperForConditionalGeneration.register_for_auto_class("AutoModelForSpeechSeq2Seq")


__all__ = [
    "LowRankLinear",
    "LiteWhisperAttention",
    "LiteWhisperEncoderLayer",
    "LiteWhisperPreTrainedModel",
    "LiteWhisperEncoder",
    "LiteWhisperModel",
    "LiteWhisperForConditionalGeneration",
    "liteasr_attention_forward",
]
