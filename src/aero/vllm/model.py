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
- A "ctc" connector (aero-mini v2) emits a number of tokens that depends on what is said, and
  vLLM sizes the prompt before the model runs: the processor runs the encoder and connector
  (`aero.vllm.audio.CtcFront`) and hands the model each window's summary input and emitted
  token ids. Decoding is vLLM's (the LM's scores alone); aero's engine by default also weighs
  in the connector's CTC scores (`ctc_weight`), which vLLM cannot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment
from transformers import BatchFeature
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
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
    N_SAMPLES,
    SAMPLE_RATE,
    audio_tokens_for_samples,
    mel_frames,
    window_tokens,
)
from aero.chat_format import AUDIO_TOKEN
from aero.vllm.audio import AeroAudio, check_ctc_emissions, ctc_front
from aero.vllm.config import AeroProcessor, AeroVllmConfig
from aero.vllm.prompt import (
    WINDOW_SEPARATOR,
    placeholder_ids,
    recording_windows,
    window_features,
)

SERVABLE_PROJECTORS = ("linear", "mlp", "ctc")


def check_servable(config) -> None:
    """A clear error for a config vLLM cannot serve (see the module docstring)."""
    kind = getattr(config, "projector_type", "linear")
    if kind == "ctc":
        check_ctc_emissions(config)
    if kind not in SERVABLE_PROJECTORS:
        raise ValueError(
            f"projector_type {kind!r} is not one aero.vllm knows "
            f"({', '.join(SERVABLE_PROJECTORS)}); serve this model with `aero serve`."
        )


def most_window_tokens(config) -> int:
    """The most tokens one 30 s window gives: its frame tokens, for "ctc" at most one emission
    per frame token after the summary token."""
    tokens = window_tokens(N_SAMPLES, config.projector_stack)
    return tokens + 1 if config.projector_type == "ctc" else tokens


def longest_audio_windows(seq_len: int, config) -> int:
    """Full 30 s windows of the longest recording whose tokens (and separators) fit `seq_len`."""
    return max(1, seq_len // (most_window_tokens(config) + 1))


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
        config = self.get_hf_config()
        return {"audio": longest_audio_windows(seq_len, config) * most_window_tokens(config)}


class AeroDummyInputsBuilder(BaseDummyInputsBuilder[AeroProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return AUDIO_TOKEN * mm_counts.get("audio", 0)

    def get_dummy_mm_data(
        self, seq_len: int, mm_counts: Mapping[str, int], mm_options: MultiModalDummyOptions
    ) -> MultiModalDataDict:
        windows = longest_audio_windows(seq_len, self.info.get_hf_config())
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
        """Each recording -> its windows' (W, M, T) log-mel, (W,) real frames, (W,) tokens; for
        a "ctc" connector instead its windows' (W, k*D) summary inputs and emitted ids."""
        config = self.info.get_hf_config()
        extractor = self.info.get_hf_processor().feature_extractor
        values, frames, tokens = [], [], []
        for samples in hf_data.get("audio", []):
            windows, counts = recording_windows(np.asarray(samples), config.projector_stack)
            values.append(window_features(extractor, windows))
            frames.append(torch.tensor([mel_frames(len(w)) for w in windows]))
            tokens.append(torch.tensor(counts))
        if config.projector_type == "ctc":
            return self._ctc_features(config, values, frames)
        return BatchFeature(
            {"audio_values": values, "audio_frames": frames, "audio_window_tokens": tokens}
        )

    def _ctc_features(self, config, values: list, frames: list) -> BatchFeature:
        """Run the encoder and connector here (see the module docstring)."""
        front = ctc_front(self.info.ctx.model_config.model, config)
        means, ids, tokens = [], [], []
        for item_values, item_frames in zip(values, frames):
            parts = front.emissions(list(item_values), item_frames.tolist())
            means.append(torch.stack([mean for mean, _ in parts]))
            ids.append(torch.cat([emitted for _, emitted in parts]))
            tokens.append(torch.tensor([1 + len(emitted) for _, emitted in parts]))
        return BatchFeature({"audio_means": means, "audio_ids": ids, "audio_window_tokens": tokens})

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        batched = MultiModalFieldConfig.batched
        if "audio_ids" in hf_inputs:
            fields = {"audio_means": batched("audio"), "audio_ids": batched("audio")}
        else:
            fields = {
                "audio_values": batched("audio"),
                "audio_frames": batched("audio", keep_on_cpu=True),
            }
        return fields | {"audio_window_tokens": batched("audio", keep_on_cpu=True)}

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
    AeroAudio, SupportsMultiModal, SupportsPP, SupportsTranscription
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
            # a "ctc" model's encoder runs in the processor (`CtcFront`); here only its summary
            self.build_audio(config, tower=config.projector_type != "ctc")
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=config.text_config,
                prefix=maybe_prefix(prefix, "language_model"),
                architectures=[language_model_architecture(config.text_config)],
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    # ----- audio -> embeddings ---------------------------------------------------------------

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        """Every recording's windows encoded together -> one (N_i, H) tensor per recording."""
        if kwargs.get("audio_ids") is not None:
            return self.embed_ctc(kwargs["audio_means"], kwargs["audio_ids"], kwargs)
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

    def embed_ctc(self, means, ids, kwargs: dict) -> MultiModalEmbeddings:
        """A "ctc" connector's recordings: per window `summary(mean)`, then the embeddings of
        the ids it emitted (counted by the processor's `CtcFront`)."""
        summary = self.audio_modal_projector.summary
        out = []
        for item_means, item_ids, tokens in zip(means, ids, kwargs["audio_window_tokens"]):
            summaries = summary(item_means.to(summary.weight.dtype))
            emitted = self.language_model.embed_input_ids(item_ids).to(summaries.dtype)
            parts = emitted.split([n - 1 for n in tokens.tolist()])
            out.append(torch.cat([t for s, e in zip(summaries, parts) for t in (s[None], e)]))
        return tuple(out)

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
        # The published names are this module's names: no mapping needed. A "ctc" model's
        # encoder weights are the processor's (`CtcFront`).
        skip = ["audio_tower."] if self.audio_tower is None else None
        return AutoWeightsLoader(self, ignore_unexpected_prefixes=skip).load_weights(weights)

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
        config = model_config.hf_config
        counts = audio_tokens_for_samples(
            round(audio_duration_s * SAMPLE_RATE), config.projector_stack
        )
        # a "ctc" connector: at most one emission per frame token, after each window's summary
        return sum(counts) + (len(counts) if config.projector_type == "ctc" else 0)

    @classmethod
    def post_process_output(cls, text: str) -> str:
        return text.strip()
