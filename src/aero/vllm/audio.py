"""Aero's audio side on vLLM, without vLLM: the encoder and projector, and for a "ctc" connector
the front that runs them before vLLM sizes the prompt.

- `AeroAudio` holds `audio_tower` (transformers' `Qwen2AudioEncoder`) and
  `audio_modal_projector` under their published names and computes what
  `aero.modeling.AeroForConditionalGeneration` does: each 30 s window encoded at its real
  length (plus the two frames its convolutions read), in groups of similar length with the
  padded keys masked; k frames stacked per token (the last group zero-padded).
- A "ctc" connector's token count depends on what is said, and vLLM must know a prompt's length
  before the model runs. So the plugin's processor runs `CtcFront` (encoder, connector and the
  LM's input embeddings, read from the checkpoint directory, on the CPU of the process that
  prepares requests) and hands the model, per window, the mean of its stacked frames (the
  summary token's input) and its CTC emissions as LM token ids. The model puts
  `summary(mean)` and those ids' own embeddings at the placeholders: what aero's engine reads
  with `ctc_emissions: "argmax"`. A "mix" emission is a blend of embeddings, not a token id, so
  such a checkpoint is refused.

Importable in aero's own environment (no vLLM), where `tests/test_vllm_audio.py` checks the
front against aero's model.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch
from torch import nn
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

from aero.audio import ENCODER_LOOKAHEAD_FRAMES, N_FRAMES, encoder_output_lengths, in_length_groups
from aero.connector import CtcConnector

EMBEDDINGS = "language_model.model.embed_tokens.weight"  # the LM's input embeddings


class AeroAudioProjector(nn.Module):
    """N, k*D -> N, H: `linear` (published), or Linear-GELU-Linear (`mlp`, aero-mini)."""

    def __init__(self, config):
        super().__init__()
        hidden = config.text_config.hidden_size
        width = config.audio_config.d_model * config.projector_stack
        self.linear = nn.Linear(width, hidden, bias=True)
        mlp = config.projector_type == "mlp"
        self.linear2 = nn.Linear(hidden, hidden, bias=True) if mlp else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        return self.linear2(nn.functional.gelu(x)) if self.linear2 is not None else x


def _fit(values: torch.Tensor, T: int) -> torch.Tensor:
    """(M, T_i) -> (M, T): cut, or zero-pad frames past the lookahead (they are masked keys)."""
    values = values[:, :T]
    return nn.functional.pad(values, (0, T - values.shape[-1]))


class AeroAudio(nn.Module):
    """The audio modules and their computation; the vLLM model and `CtcFront` build on it."""

    def build_audio(self, config, tower: bool = True) -> None:
        self.config = config
        self.audio_tower = Qwen2AudioEncoder(config.audio_config) if tower else None
        ctc = config.projector_type == "ctc"
        self.audio_modal_projector = CtcConnector(config) if ctc else AeroAudioProjector(config)

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

        def run(group):
            T = min(max(f for _, f in group) + ENCODER_LOOKAHEAD_FRAMES, N_FRAMES)
            batch = torch.stack([_fit(windows[i], T) for i, _ in group])
            group_frames = torch.tensor([f for _, f in group])
            _, tokens = encoder_output_lengths(group_frames)
            return [f[:n] for f, n in zip(self.encode(batch, group_frames), tokens.tolist())]

        return in_length_groups(frames, run)

    def stack(self, windows: list[torch.Tensor]) -> list[torch.Tensor]:
        """[(n_i, D)] -> [(ceil(n_i / k), k*D)]: k frames per token, the last group zero-padded."""
        k = self.config.projector_stack
        stacked = []
        for feats in windows:
            feats = nn.functional.pad(feats, (0, 0, 0, (-feats.shape[0]) % k))
            stacked.append(feats.reshape(-1, k * feats.shape[-1]))
        return stacked

    def project(self, windows: list[torch.Tensor]) -> list[torch.Tensor]:
        """[(n_i, D)] -> [(ceil(n_i / k), H)] through a "linear" or "mlp" projector."""
        stacked = self.stack(windows)
        projected = self.audio_modal_projector(torch.cat(stacked))
        return list(projected.split([s.shape[0] for s in stacked]))


def check_ctc_emissions(config) -> None:
    mode = getattr(config, "ctc_emissions", "mix")
    if mode != "argmax":
        raise ValueError(
            f"This Aero model's 'ctc' connector emits {mode!r} vectors (blends of embeddings, "
            "not token ids); vLLM serves 'ctc' connectors with ctc_emissions 'argmax' only. "
            "Serve it with `aero serve`."
        )


class CtcFront(AeroAudio):
    """Encoder + "ctc" connector + the LM's input embeddings: windows -> per window the mean of
    its stacked frames (k*D,) and its emitted LM token ids (e,)."""

    def __init__(self, config):
        super().__init__()
        check_ctc_emissions(config)
        self.build_audio(config)
        vocab, hidden = config.text_config.vocab_size, config.text_config.hidden_size
        self.register_buffer("embeddings", torch.zeros(vocab, hidden), persistent=False)

    @torch.no_grad()
    def emissions(
        self, windows: list[torch.Tensor], frames: list[int]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        stacked = self.stack(self.encode_windows(windows, frames))
        connector = self.audio_modal_projector
        return [
            (s.mean(0), connector.emitted_ids(h, self.embeddings))
            for s, h in zip(stacked, connector.frames(stacked))
        ]


_FRONTS: dict[str, CtcFront] = {}
_FRONTS_LOCK = threading.Lock()


def ctc_front(model_dir: str, config) -> CtcFront:
    """The checkpoint directory's `CtcFront` in float32 on CPU, loaded once per process."""
    with _FRONTS_LOCK:
        if model_dir not in _FRONTS:
            _FRONTS[model_dir] = load_ctc_front(model_dir, config)
        return _FRONTS[model_dir]


def load_ctc_front(model_dir: str, config) -> CtcFront:
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise ValueError(
            f"A 'ctc' Aero model is served from a local checkpoint directory with its "
            f"safetensors files (vLLM's processor runs its encoder); {model_dir} has none."
        )
    front = CtcFront(config)
    state: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), "pt") as f:
            for name in f.keys():
                if (
                    name.startswith(("audio_tower.", "audio_modal_projector."))
                    or name == EMBEDDINGS
                ):
                    tensor = f.get_tensor(name)
                    state[name] = tensor.float() if tensor.is_floating_point() else tensor
    if EMBEDDINGS not in state:
        raise ValueError(f"{model_dir} has no {EMBEDDINGS}, which the 'ctc' connector reads.")
    front.embeddings.copy_(state.pop(EMBEDDINGS))
    missing, unexpected = front.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{model_dir}: the audio weights do not match the config "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})."
        )
    return front.float().eval()
