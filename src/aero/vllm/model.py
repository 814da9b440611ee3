"""Aero for vLLM: Whisper-style encoder -> projector -> vLLM's own causal LM.

Reuses vLLM's machinery and transformers' `Qwen2AudioEncoder` as vLLM's Qwen2-Audio does;
what is Aero's own:
- Weights load by their published names (`audio_tower.*`, `audio_modal_projector.linear.*`,
  `language_model.model.*`, `language_model.lm_head.*`), plus aero-mini's `linear2` (projector
  "mlp") and `projector_stack` (k encoder frames per token, the last group zero-padded).
- The LM is whatever vLLM class `text_config`'s model type names (Qwen2 for the published
  model, Llama for aero-mini), built by vLLM.
- One audio item is one whole recording: the processor cuts it into 30 s windows
  (`aero.vllm.prompt`), the placeholder becomes every window's tokens with "\\n" between
  windows, and the encoder runs each window at its real length (plus the two frames its
  convolutions read), in groups of similar length, with the padded keys masked: the
  computation of `aero.modeling.AeroForConditionalGeneration.encode_windows`.
- Transcription (`/v1/audio/transcriptions`): the whole recording is one prompt (vLLM's own
  30 s chunking is off), with the checkpoint's transcription prompt as the instruction.
- A projector whose token count depends on the audio content ("ctc") cannot be served: vLLM
  sizes the prompt before the encoder runs. The error says so and names `aero serve`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment
from torch import nn
from transformers import BatchFeature
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder
from vllm.config import ModelConfig, SpeechToTextConfig, VllmConfig
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.config.speech_to_text import SpeechToTextParams
from vllm.inputs import MultiModalDataDict, PromptType, TokensPrompt
from vllm.model_executor.models.interfaces import (
    MultiModalEmbeddings,
    SupportsMultiModal,
    SupportsPP,
    SupportsTranscription,
)
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    init_vllm_registered_model,
    maybe_prefix,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems, MultiModalDataParser
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
    PromptUpdateDetails,
)
from vllm.sequence import IntermediateTensors
from vllm.transformers_utils.processor import cached_processor_from_config

from aero.audio import (
    ENCODER_LOOKAHEAD_FRAMES,
    N_FRAMES,
    N_SAMPLES,
    SAMPLE_RATE,
    audio_tokens_for_samples,
    encoder_output_lengths,
    mel_frames,
    window_tokens,
)
from aero.chat_format import AUDIO_TOKEN
from aero.vllm.config import AeroProcessor, AeroVllmConfig
from aero.vllm.prompt import (
    WINDOW_SEPARATOR,
    length_groups,
    placeholder_ids,
    recording_windows,
    window_features,
)

SERVABLE_PROJECTORS = ("linear", "mlp")  # token counts known from the audio's length alone


def check_servable(config) -> None:
    """A clear error for a config vLLM cannot serve (see the module docstring)."""
    kind = getattr(config, "projector_type", "linear")
    if kind == "ctc":
        raise ValueError(
            "This Aero model's projector_type is 'ctc': its number of audio tokens depends on "
            "what is said, and vLLM must know each audio's token count from its length before "
            "the encoder runs, so vLLM cannot serve it; serve it with `aero serve`."
        )
    if kind not in SERVABLE_PROJECTORS:
        raise ValueError(
            f"projector_type {kind!r} is not one aero.vllm knows "
            f"({', '.join(SERVABLE_PROJECTORS)}); serve this model with `aero serve`."
        )


def longest_audio_windows(seq_len: int, stack: int) -> int:
    """Full 30 s windows of the longest recording whose tokens (and separators) fit `seq_len`."""
    return max(1, seq_len // (window_tokens(N_SAMPLES, stack) + 1))


# ----- processing: recordings -> windows, features and prompt ids ----------------------------


class AeroProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self) -> AeroVllmConfig:
        config = self.ctx.get_hf_config(AeroVllmConfig)
        check_servable(config)
        return config

    def get_hf_processor(self, **kwargs: object) -> AeroProcessor:
        return self.ctx.get_hf_processor(AeroProcessor, **kwargs)

    def get_data_parser(self) -> MultiModalDataParser:
        return MultiModalDataParser(
            target_sr=SAMPLE_RATE,
            target_channels=1,
            expected_hidden_size=self._get_expected_hidden_size(),
            allow_missing_mm_embeddings=self.allow_missing_mm_embeddings,
        )

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"audio": None}

    def get_mm_max_tokens_per_item(
        self, seq_len: int, mm_counts: Mapping[str, int] | None = None
    ) -> Mapping[str, int]:
        # Any length: a recording may fill the whole context (one item, many windows).
        stack = self.get_hf_config().projector_stack
        return {"audio": longest_audio_windows(seq_len, stack) * window_tokens(N_SAMPLES, stack)}


class AeroDummyInputsBuilder(BaseDummyInputsBuilder[AeroProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return AUDIO_TOKEN * mm_counts.get("audio", 0)

    def get_dummy_mm_data(
        self, seq_len: int, mm_counts: Mapping[str, int], mm_options: MultiModalDummyOptions
    ) -> MultiModalDataDict:
        windows = longest_audio_windows(seq_len, self.info.get_hf_config().projector_stack)
        audios = self._get_dummy_audios(
            length=windows * N_SAMPLES,
            num_audios=mm_counts.get("audio", 0),
            overrides=mm_options.get("audio") if mm_options else None,
        )
        return {"audio": audios}


class AeroMultiModalProcessor(BaseMultiModalProcessor[AeroProcessingInfo]):
    def _call_hf_processor(
        self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]
    ) -> BatchFeature:
        """Each recording -> its windows' (W, M, T) log-mel, (W,) real frames, (W,) tokens."""
        stack = self.info.get_hf_config().projector_stack
        extractor = self.info.get_hf_processor().feature_extractor
        values, frames, tokens = [], [], []
        for samples in hf_data.get("audio", []):
            windows, counts = recording_windows(np.asarray(samples), stack)
            values.append(window_features(extractor, windows))
            frames.append(torch.tensor([mel_frames(len(w)) for w in windows]))
            tokens.append(torch.tensor(counts))
        return BatchFeature(
            {"audio_values": values, "audio_frames": frames, "audio_window_tokens": tokens}
        )

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        return dict(
            audio_values=MultiModalFieldConfig.batched("audio"),
            audio_frames=MultiModalFieldConfig.batched("audio", keep_on_cpu=True),
            audio_window_tokens=MultiModalFieldConfig.batched("audio", keep_on_cpu=True),
        )

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        audio_id = self.info.get_hf_config().audio_token_index
        separator = self.info.get_tokenizer().encode(WINDOW_SEPARATOR, add_special_tokens=False)
        tokens = out_mm_kwargs.get_data().get("audio_window_tokens", [])

        def replacement(item: int) -> PromptUpdateDetails:
            ids = placeholder_ids(tokens[item].tolist(), audio_id, separator)
            return PromptUpdateDetails.select_token_id(ids, audio_id)

        return [PromptReplacement(modality="audio", target=[audio_id], replacement=replacement)]


# ----- the model ---------------------------------------------------------------------------


def _fit(values: torch.Tensor, T: int) -> torch.Tensor:
    """(M, T_i) -> (M, T): cut, or zero-pad frames past the lookahead (they are masked keys)."""
    values = values[:, :T]
    return nn.functional.pad(values, (0, T - values.shape[-1]))


class AeroAudioProjector(nn.Module):
    """N, k*D -> N, H: `linear` (published), or Linear-GELU-Linear (`mlp`, aero-mini)."""

    def __init__(self, config: AeroVllmConfig):
        super().__init__()
        hidden = config.text_config.hidden_size
        width = config.audio_config.d_model * config.projector_stack
        self.linear = nn.Linear(width, hidden, bias=True)
        mlp = config.projector_type == "mlp"
        self.linear2 = nn.Linear(hidden, hidden, bias=True) if mlp else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        return self.linear2(nn.functional.gelu(x)) if self.linear2 is not None else x


def language_model_architecture(text_config) -> str:
    """The causal-LM class a text config names (vLLM registers the same class names)."""
    if getattr(text_config, "architectures", None):
        return text_config.architectures[0]
    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(text_config.model_type)
    if name is None:
        raise ValueError(f"No causal-LM class is known for text model {text_config.model_type!r}.")
    return name


@MULTIMODAL_REGISTRY.register_processor(
    AeroMultiModalProcessor, info=AeroProcessingInfo, dummy_inputs=AeroDummyInputsBuilder
)
class AeroForConditionalGeneration(
    nn.Module, SupportsMultiModal, SupportsPP, SupportsTranscription
):
    supported_languages = {"en": "English"}  # what aero's models were trained on

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("audio"):
            return AUDIO_TOKEN
        raise ValueError(f"Aero takes audio and text, not {modality}.")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        check_servable(config)
        self.config = config
        with self._mark_tower_model(vllm_config, "audio"):
            self.audio_tower = Qwen2AudioEncoder(config.audio_config)
            self.audio_modal_projector = AeroAudioProjector(config)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=config.text_config,
                prefix=maybe_prefix(prefix, "language_model"),
                architectures=[language_model_architecture(config.text_config)],
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    # ----- audio -> embeddings ---------------------------------------------------------------

    def encode(self, values: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """(W, M, T) log-mel, (W,) real frames -> (W, P//2, D) encoder output (padded keys
        masked; rows past a window's tokens are not meaningful)."""
        tower = self.audio_tower
        positions, _ = encoder_output_lengths(frames)
        x = values.to(dtype=tower.conv1.weight.dtype, device=tower.conv1.weight.device)
        x = nn.functional.gelu(tower.conv1(x))
        x = nn.functional.gelu(tower.conv2(x)).transpose(1, 2)  # W, P, D
        P = x.shape[1]
        x = x + tower.embed_positions.weight[:P]
        pad = torch.arange(P, device=x.device)[None, :] >= positions.to(x.device)[:, None]
        mask = torch.zeros(pad.shape, dtype=x.dtype, device=x.device)
        mask = mask.masked_fill(pad, torch.finfo(x.dtype).min)[:, None, None, :]
        for layer in tower.layers:
            x = layer(x, mask)
            x = x[0] if isinstance(x, tuple) else x
        x = tower.avg_pooler(x.transpose(1, 2)).transpose(1, 2)  # W, P//2, D
        return tower.layer_norm(x)

    def encode_windows(self, windows: list[torch.Tensor], frames: list[int]) -> list[torch.Tensor]:
        """Windows [(M, T_i)] -> their real tokens [(n_i, D)], encoded in groups of similar
        length, each group cut to its longest window + the convolutions' lookahead."""
        out: list[torch.Tensor | None] = [None] * len(windows)
        for group in length_groups(frames):
            T = min(max(f for _, f in group) + ENCODER_LOOKAHEAD_FRAMES, N_FRAMES)
            batch = torch.stack([_fit(windows[i], T) for i, _ in group])
            group_frames = torch.tensor([f for _, f in group])
            features = self.encode(batch, group_frames)
            _, tokens = encoder_output_lengths(group_frames)
            for (i, _), feats, n in zip(group, features, tokens.tolist()):
                out[i] = feats[:n]
        return out  # type: ignore[return-value]

    def project(self, windows: list[torch.Tensor]) -> list[torch.Tensor]:
        """[(n_i, D)] -> [(ceil(n_i / k), H)]: stack k frames per token (zero-padding the last
        group), then the projector."""
        k = self.config.projector_stack
        stacked = []
        for feats in windows:
            feats = nn.functional.pad(feats, (0, 0, 0, (-feats.shape[0]) % k))
            stacked.append(feats.reshape(-1, k * feats.shape[-1]))
        projected = self.audio_modal_projector(torch.cat(stacked))
        return list(projected.split([s.shape[0] for s in stacked]))

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        """Every recording's windows encoded together -> one (N_i, H) tensor per recording."""
        values, frames = kwargs.get("audio_values"), kwargs.get("audio_frames")
        if values is None:
            return []
        windows, window_frames, owner = [], [], []
        for item, (item_values, item_frames) in enumerate(zip(values, frames)):
            for w, f in zip(item_values, item_frames.tolist()):
                windows.append(w)
                window_frames.append(int(f))
                owner.append(item)
        projected = self.project(self.encode_windows(windows, window_frames))
        per_item: list[list[torch.Tensor]] = [[] for _ in range(len(values))]
        for item, tensor in zip(owner, projected):
            per_item[item].append(tensor)
        return tuple(torch.cat(parts) for parts in per_item)

    # ----- the LM ------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(
            input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds
        )

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        # The published names are this module's names: no mapping needed.
        return AutoWeightsLoader(self).load_weights(weights)

    # ----- transcription (/v1/audio/transcriptions) ---------------------------------------------

    @classmethod
    def get_speech_to_text_config(
        cls, model_config: ModelConfig, task_type: str
    ) -> SpeechToTextConfig:
        # max_audio_clip_s=None: no chunking by vLLM; the whole recording is one prompt.
        return SpeechToTextConfig(sample_rate=SAMPLE_RATE, max_audio_clip_s=None)

    @classmethod
    def get_generation_prompt(cls, stt_params: SpeechToTextParams) -> PromptType:
        """The transcription prompt aero's engine builds: one user turn, the audio then the
        instruction (a request's `prompt` replaces the checkpoint's transcription prompt)."""
        if stt_params.task_type != "transcribe":
            raise ValueError(
                "Aero serves transcriptions; ask for a translation through /v1/chat/completions."
            )
        processor = cached_processor_from_config(stt_params.model_config)
        text = stt_params.request_prompt or processor.transcribe_prompt
        messages = [
            {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": text}]}
        ]
        prompt = (
            ImmutableSandboxedEnvironment()
            .from_string(processor.chat_template)
            .render(messages=messages, add_generation_prompt=True)
        )
        ids = processor.tokenizer.encode(prompt, add_special_tokens=False)
        return TokensPrompt(prompt_token_ids=ids, multi_modal_data={"audio": stt_params.audio})

    @classmethod
    def get_num_audio_tokens(
        cls, audio_duration_s: float, stt_config: SpeechToTextConfig, model_config: ModelConfig
    ) -> int | None:
        stack = model_config.hf_config.projector_stack
        return sum(audio_tokens_for_samples(round(audio_duration_s * SAMPLE_RATE), stack))

    @classmethod
    def post_process_output(cls, text: str) -> str:
        return text.strip()
