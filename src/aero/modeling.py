"""Aero-1-Audio: Whisper-style audio encoder -> one linear projector -> causal language model.

Architecture choices (facts of the published `lmms-lab/Aero-1-Audio` checkpoint):
- `audio_tower` is transformers' own `Qwen2AudioEncoder` (Whisper-large-v3 shape: conv k3 ->
  conv k3 stride 2 -> positions -> 32 layers -> AvgPool1d(2) -> LayerNorm). We do not
  re-implement it; we drive its sub-modules so a window can be encoded at its real length.
- `audio_modal_projector.linear` is ONE `Linear(d_model -> hidden)`, no activation.
- `language_model` is any transformers causal LM built from `text_config` (Qwen2 by default).
- A 30 s window of 3000 mel frames gives 1500 encoder positions and 750 tokens: 25 audio
  tokens per second. The arithmetic lives in `aero.audio.encoder_output_lengths` only.
- Audio features replace the `<|AUDIO|>` placeholder embeddings with one masked scatter; a
  count mismatch is an error naming both counts.
- Long recordings are several windows in one prompt: the encoder sees windows independently,
  the LM sees all their tokens in one sequence.

Shapes: W windows, M mel bins, T mel frames (<= 3000), P = (T-1)//2+1 encoder positions,
D encoder width, H LM width, N = total real audio tokens over all windows.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

from aero.audio import (
    ENCODER_LOOKAHEAD_FRAMES,
    N_FRAMES,
    encoder_output_lengths,
    in_length_groups,
    length_groups,
)
from aero.chat_format import AUDIO_TOKEN, WHISPER_LARGE_V3_ENCODER
from aero.connector import CtcConnector, CtcPart

# Qwen2.5's 151643 base tokens + 22 specials + <image>, <video> -> <|AUDIO|> is id 151667.
# (The reference default 151648 is stale; scripts that use the release hard-code 151667.)
DEFAULT_AUDIO_TOKEN_INDEX = 151667


class AeroConfig(PreTrainedConfig):
    """`text_config`: any causal-LM config (qwen2 by default); `audio_config`: a
    `qwen2_audio_encoder` config (Whisper-large-v3 shape by default)."""

    model_type = "aero"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
        "audio_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="qwen2_audio_encoder",
            init_kwargs=WHISPER_LARGE_V3_ENCODER,
        ),
    }

    audio_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    audio_token_index: int = DEFAULT_AUDIO_TOKEN_INDEX
    tie_word_embeddings: bool = False
    # Options for compact models (the published checkpoint uses the defaults): stack this many
    # adjacent encoder frames into one audio token (fewer LM positions per second), and a
    # "linear" or two-layer "mlp" projector.
    projector_stack: int = 1
    projector_type: str = "linear"
    # projector_type "ctc" (aero-mini v2): this many transformer layers over the stacked frames,
    # trained with CTC onto the LM's embeddings; the LM reads one token per CTC emission.
    connector_layers: int = 2
    # what each CTC emission puts in front of the LM: "mix", the posterior-weighted mix of the
    # LM's embeddings (LegoSLM), or "argmax", the most likely token's own embedding (the LM then
    # reads ordinary, if misspelt, text)
    ctc_emissions: str = "mix"

    def __post_init__(self, **kwargs):
        # Published configs carry remote-code pointers; we are the local code for them.
        kwargs.pop("auto_map", None)
        super().__post_init__(**kwargs)


PROJECTOR_TYPES = ("linear", "mlp", "ctc")


class AeroAudioProjector(nn.Module):
    """N, k*D -> N, H. Published: one linear layer (`linear`), k = 1. Option: Linear-GELU-Linear."""

    def __init__(self, config: AeroConfig):
        super().__init__()
        if config.projector_type not in PROJECTOR_TYPES:
            raise ValueError(
                f"projector_type must be one of {', '.join(PROJECTOR_TYPES)}, "
                f"not {config.projector_type!r}."
            )
        hidden = config.text_config.hidden_size
        self.linear = nn.Linear(
            config.audio_config.d_model * config.projector_stack, hidden, bias=True
        )
        self.linear2 = (
            nn.Linear(hidden, hidden, bias=True) if config.projector_type == "mlp" else None
        )

    def forward(self, audio_features: torch.Tensor) -> torch.Tensor:
        x = self.linear(audio_features)
        return self.linear2(nn.functional.gelu(x)) if self.linear2 is not None else x


class AeroPreTrainedModel(PreTrainedModel):
    config_class = AeroConfig
    config: AeroConfig
    base_model_prefix = "aero"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["Qwen2AudioEncoderLayer", "Qwen2DecoderLayer", "LlamaDecoderLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True


class AeroForConditionalGeneration(AeroPreTrainedModel, GenerationMixin):
    def __init__(self, config: AeroConfig):
        super().__init__(config)
        self.audio_tower = Qwen2AudioEncoder(config.audio_config)
        self.audio_modal_projector = (
            CtcConnector(config) if config.projector_type == "ctc" else AeroAudioProjector(config)
        )
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value):
        self.language_model.set_output_embeddings(value)

    def get_decoder(self):
        return self.language_model.get_decoder()

    def encode_audio(
        self, audio_values: torch.Tensor, audio_attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode W windows at their real length. Returns (W, P//2, D) features, (W,) token counts.

        `audio_values` is (W, M, T) log-mel with T <= 3000; `audio_attention_mask` (W, T) marks the
        real frames of each window (None: all T frames are real).

        How this equals the reference (every window padded to 3000 frames, key-padding mask over
        the 1500 positions): positions past a window's real length are masked as keys, so real
        positions never see them, and the pooled tokens kept (`encoder_output_lengths`) read only
        real positions. The convolutions near the end read frames past the real length; the
        processor keeps two of Whisper's own padding frames after each window's real frames, so
        they read the same values as in the 30 s padded input. The result therefore equals the
        padded + masked computation up to float summation order (|diff| ~1e-6 in float32),
        which `tests/test_modeling.py` checks against `Qwen2AudioEncoder` itself.
        """
        tower = self.audio_tower
        W, _, T = audio_values.shape
        if T > N_FRAMES:
            raise ValueError(
                f"An audio window has {T} mel frames; at most {N_FRAMES} (30 s) fit one window."
            )
        if audio_attention_mask is None:
            frames = torch.full((W,), T, dtype=torch.long, device=audio_values.device)
        else:
            frames = audio_attention_mask.sum(-1).long()
        positions, tokens = encoder_output_lengths(frames)

        x = audio_values.to(dtype=tower.conv1.weight.dtype, device=tower.conv1.weight.device)
        x = nn.functional.gelu(tower.conv1(x))
        x = nn.functional.gelu(tower.conv2(x))  # W, D, P
        x = x.transpose(1, 2)  # W, P, D
        P = x.shape[1]
        x = x + tower.embed_positions.weight[:P]
        x = nn.functional.dropout(x, p=tower.dropout, training=tower.training)

        mask = None
        if audio_attention_mask is not None:
            # Additive (W, 1, 1, P) key-padding mask: the form every attention backend honours
            # (a 2-D mask or a boolean 4-D mask under eager attention masks nothing).
            pad = torch.arange(P, device=x.device)[None, :] >= positions.to(x.device)[:, None]
            mask = torch.zeros(pad.shape, dtype=x.dtype, device=x.device)
            mask = mask.masked_fill(pad, torch.finfo(x.dtype).min)[:, None, None, :]
        for layer in tower.layers:
            x = layer(x, mask)

        x = tower.avg_pooler(x.transpose(1, 2)).transpose(1, 2)  # W, P//2, D
        return tower.layer_norm(x), tokens

    def get_audio_features(
        self, audio_values: torch.Tensor, audio_attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(W, M, T) log-mel -> (N, H) projected features of the real tokens, window by window.

        Windows of very different lengths (a 2 s clip beside full 30 s windows of a long
        recording) are encoded in separate groups of similar length, so padding inside any
        encoder batch stays under ~10% of its frames; the output order is the input order.
        """
        return self.project_audio(self.encode_windows(audio_values, audio_attention_mask))

    def encode_windows(
        self, audio_values: torch.Tensor, audio_attention_mask: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """(W, M, T) log-mel -> W encoder outputs [(n_i, D)] of the real tokens, in input order,
        encoded in groups of similar length (see `get_audio_features`)."""
        if audio_attention_mask is None or audio_values.shape[0] == 1:
            features, tokens = self.encode_audio(audio_values, audio_attention_mask)
            return [feats[:n] for feats, n in zip(features, tokens.tolist())]

        def run(group):
            T = min(max(f for _, f in group) + ENCODER_LOOKAHEAD_FRAMES, audio_values.shape[-1])
            index = torch.tensor([i for i, _ in group], device=audio_values.device)
            features, tokens = self.encode_audio(
                audio_values[index, :, :T], audio_attention_mask[index, :T]
            )
            return [feats[:n] for feats, n in zip(features, tokens.tolist())]

        return in_length_groups(audio_attention_mask.sum(-1).tolist(), run)

    def project_audio(self, windows: list[torch.Tensor]) -> torch.Tensor:
        """Per-window encoder outputs [(n_i, D)] -> (N, H): stack k frames per token, project."""
        return torch.cat(self.project_windows(windows))

    def grow_connector(self, layers: int) -> None:
        """projector_type "ctc": deepen the connector to `layers` transformer layers, the new
        ones starting as the identity (`CtcConnector.grow`)."""
        projector = self.audio_modal_projector
        if not isinstance(projector, CtcConnector):
            raise ValueError(
                f"Only a 'ctc' connector grows; this one is {self.config.projector_type!r}."
            )
        if layers < len(projector.layers):
            raise ValueError(
                f"The connector has {len(projector.layers)} layers; it grows, it does not shrink "
                f"to {layers}."
            )
        projector.grow(layers)
        self.config.connector_layers = layers

    def stack_frames(self, windows: list[torch.Tensor]) -> list[torch.Tensor]:
        """[(n_i, D)] -> [(ceil(n_i / k), k*D)]: k adjacent encoder frames per audio token."""
        k = self.config.projector_stack
        if k == 1:
            return windows
        stacked = []
        for feats in windows:
            pad = (-feats.shape[0]) % k  # zero-pad the last group: no frame is dropped
            feats = nn.functional.pad(feats, (0, 0, 0, pad))
            stacked.append(feats.reshape(-1, k * feats.shape[-1]))  # n, D -> n/k, k*D
        return stacked

    def project_windows(self, windows: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-window encoder outputs -> per-window LM inputs [(m_i, H)]. m_i is the window's
        token count (`aero.audio.window_tokens`), or for the "ctc" projector 1 + its number of
        CTC emissions (`ctc_parts`)."""
        stacked = self.stack_frames(windows)
        projector = self.audio_modal_projector
        if not isinstance(projector, CtcConnector):
            out = projector(torch.cat(stacked))
            return list(out.split([s.shape[0] for s in stacked]))
        return [
            torch.cat([projector.summary(pooled)[None], emitted.to(pooled.dtype)])
            for pooled, emitted, _ in self.ctc_parts(windows)
        ]

    def ctc_parts(self, windows: list[torch.Tensor], posteriors: bool = False) -> list[CtcPart]:
        """ "ctc" projector: per window, the mean of its stacked frames (k*D,), its CTC
        emissions (e, H) and, with `posteriors`, its frames' CTC posteriors; its LM inputs are
        `summary(mean)` then the emissions (1 + e tokens)."""
        stacked = self.stack_frames(windows)
        projector = self.audio_modal_projector
        embeddings = self.get_input_embeddings().weight
        mode = self.config.ctc_emissions
        return [
            CtcPart(s.mean(0), *projector.emit(h, embeddings, mode, posteriors))
            for s, h in zip(stacked, projector.frames(stacked))
        ]

    def merge_audio(
        self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, audio_features: torch.Tensor
    ):
        """Put the (N, H) audio features at the N `<|AUDIO|>` positions of the prompt."""
        placeholders = input_ids == self.config.audio_token_index
        n_placeholders, n_features = int(placeholders.sum()), audio_features.shape[0]
        if n_placeholders != n_features and self.config.projector_type == "ctc":
            raise ValueError(
                f"The prompt has {n_placeholders} {AUDIO_TOKEN} positions but the audio gives "
                f"{n_features} features: with projector_type 'ctc' the count depends on the "
                "audio; build inputs with aero.Engine, or call "
                "aero.processing.count_audio_tokens_with(model, processor) first."
            )
        if n_placeholders != n_features:
            raise ValueError(
                f"The prompt has {n_placeholders} {AUDIO_TOKEN} positions "
                f"but the audio gives {n_features} features; "
                "build inputs with AeroProcessor so each window's placeholder is expanded to its "
                "length."
            )
        mask = placeholders.unsqueeze(-1).expand_as(inputs_embeds)
        return inputs_embeds.masked_scatter(mask, audio_features.to(inputs_embeds.dtype))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        audio_values: torch.Tensor | None = None,
        audio_attention_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if audio_values is not None:
            if input_ids is None:
                raise ValueError(
                    "audio_values need input_ids to find the audio placeholder positions."
                )
            features = self.get_audio_features(audio_values, audio_attention_mask)
            inputs_embeds = self.merge_audio(input_ids, inputs_embeds, features)
        elif input_ids is not None and cache is None:
            if (input_ids == self.config.audio_token_index).any():
                raise ValueError(
                    f"The prompt has {AUDIO_TOKEN} placeholders but no audio_values were given."
                )
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    def prepare_inputs_for_generation(
        self,
        *args,
        audio_values=None,
        audio_attention_mask=None,
        is_first_iteration=False,
        **kwargs,
    ):
        inputs = super().prepare_inputs_for_generation(
            *args, is_first_iteration=is_first_iteration, **kwargs
        )
        # Audio is merged once, in the prefill; later steps read it from the KV cache.
        if is_first_iteration or not kwargs.get("use_cache", True):
            inputs["audio_values"] = audio_values
            inputs["audio_attention_mask"] = audio_attention_mask
        return inputs


def encoder_frame_slots(frames: list[int], frames_per_window: int) -> int:
    """Mel frames the encoder actually runs for windows of `frames` real frames (after grouping)."""
    if len(frames) <= 1:
        return len(frames) * frames_per_window
    return sum(
        len(g) * min(max(f for _, f in g) + ENCODER_LOOKAHEAD_FRAMES, frames_per_window)
        for g in length_groups(frames)
    )


def register_auto_classes() -> None:
    """Make `AutoConfig` / `AutoModel*` resolve `model_type: "aero"` to these classes."""
    from transformers import AutoModel, AutoModelForImageTextToText

    try:
        AutoConfig.register("aero", AeroConfig)
    except ValueError:
        return  # already registered
    for auto in (AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText):
        auto.register(AeroConfig, AeroForConditionalGeneration, exist_ok=True)


register_auto_classes()
