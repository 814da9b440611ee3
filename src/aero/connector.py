"""The "ctc" connector (aero-mini v2): stacked encoder frames -> transformer layers -> vectors in
the LM's embedding space, with a CTC head over the LM's own embeddings.

Plain torch, no transformers: aero's model (`aero.modeling`) and its vLLM plugin (`aero.vllm`,
under vLLM's older transformers) build the same module from a config that has
`text_config.hidden_size`, `text_config.vocab_size`, `audio_config.d_model`, `projector_stack`,
`connector_layers` and `ctc_emissions`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from aero.audio import in_length_groups
from aero.ctc_scoring import CtcPosteriors

CTC_EMISSIONS = ("mix", "argmax")


def _connector_layer(hidden: int) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(
        hidden,
        max(1, hidden // 64),
        2 * hidden,
        dropout=0.1,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )


class CtcConnector(nn.Module):
    """projector_type "ctc": stacked encoder frames -> Linear -> transformer layers -> vectors in
    the LM's embedding space, plus a CTC head over the LM's own embeddings and one blank.

    Trained with CTC alone (no LM; `objective: ctc`), so most of the learning happens without
    the LM's forward and backward. At inference it compresses: a frame whose most likely class
    is the blank is dropped, a run of frames with the same most likely token becomes one, and
    each kept token is the posterior-weighted mix of the LM's embeddings (as in LegoSLM), so
    the LM reads about one position per spoken sub-word instead of a fixed frame rate. The
    number of audio tokens therefore depends on the audio, not only its length.
    """

    def __init__(self, config):
        super().__init__()
        if config.ctc_emissions not in CTC_EMISSIONS:
            raise ValueError(
                f"ctc_emissions must be one of {CTC_EMISSIONS}, not {config.ctc_emissions!r}."
            )
        hidden = config.text_config.hidden_size
        self.linear = nn.Linear(config.audio_config.d_model * config.projector_stack, hidden)
        self.layers = nn.ModuleList(
            _connector_layer(hidden) for _ in range(config.connector_layers)
        )
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, hidden)
        # one token per window ahead of its emissions, from the mean of its stacked encoder
        # frames: what CTC discards (voice, background, rate) stays readable; trained in the LM
        # stage, where the rest of the connector is frozen
        self.summary = nn.Linear(config.audio_config.d_model * config.projector_stack, hidden)
        self.blank = nn.Parameter(torch.zeros(hidden))
        self.log_scale = nn.Parameter(torch.tensor(0.0))
        # the LM tokens the CTC head may emit: the tokens of its training transcripts (a third
        # of SmolLM2's vocabulary for aero-mini's text, and three times cheaper to train)
        self.register_buffer(
            "vocab_mask", torch.ones(config.text_config.vocab_size, dtype=torch.bool)
        )

    def frames(self, windows: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-window stacked frames [(n_i, k*D)] -> per-frame vectors [(n_i, H)]; each window
        is attended on its own, windows of similar length in one batch (`in_length_groups`)."""
        lengths = [w.shape[0] for w in windows]
        return in_length_groups(lengths, lambda g: self._frames([windows[i] for i, _ in g]))

    def _frames(self, windows: list[torch.Tensor]) -> list[torch.Tensor]:
        lengths = [w.shape[0] for w in windows]
        x = self.linear(nn.utils.rnn.pad_sequence(windows, batch_first=True))
        pad = (
            torch.arange(x.shape[1], device=x.device)[None]
            >= torch.tensor(lengths, device=x.device)[:, None]
        )
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=pad)
        x = self.out(self.norm(x))
        return [row[:n] for row, n in zip(x, lengths)]

    def grow(self, layers: int) -> None:
        """Add transformer layers on top up to `layers`. Each new layer starts as the identity
        (its attention output and second feed-forward projections are zero; the layers are
        pre-norm residual), so the connector still computes what it was trained to."""
        hidden = self.norm.normalized_shape[0]
        while len(self.layers) < layers:
            layer = _connector_layer(hidden)
            for linear in (layer.self_attn.out_proj, layer.linear2):
                nn.init.zeros_(linear.weight)
                nn.init.zeros_(linear.bias)
            self.layers.append(layer.to(self.linear.weight.device, self.linear.weight.dtype))

    def emittable(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The (S, H) embedding rows of the tokens the head may emit (`vocab_mask`)."""
        return embeddings[self.vocab_mask[: embeddings.shape[0]]]

    def logits(self, h: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """(n, H) -> (n, S + 1) CTC logits over the rows of `table` (the emittable embeddings);
        the blank is the last class."""
        table = torch.cat([table, self.blank[None].to(table.dtype)])
        return self.log_scale.exp() * (h.to(table.dtype) @ table.T)

    def compress(
        self, h: torch.Tensor, embeddings: torch.Tensor, emissions: str = "mix"
    ) -> torch.Tensor:
        """(n, H) frames -> (m, H) LM inputs, one per CTC emission (m <= n): the posterior mix
        of the run's tokens ("mix") or the most likely token's own embedding ("argmax")."""
        return self.emit(h, embeddings, emissions)[0]

    def emit(
        self,
        h: torch.Tensor,
        embeddings: torch.Tensor,
        emissions: str = "mix",
        posteriors: bool = False,
    ) -> tuple[torch.Tensor, CtcPosteriors | None]:
        """`compress`, and with `posteriors` the frames' CTC posteriors (for joint CTC/LM
        decoding; None without)."""
        table = self.emittable(embeddings)
        logits = self.logits(h, table).float()
        blank = table.shape[0]
        best = logits.argmax(-1)
        kept = self._posteriors(h, embeddings, logits, best) if posteriors else None
        starts, keep = _emitting(best, blank)
        if not bool(keep.any()):
            return h.new_zeros((0, table.shape[1])), kept
        if emissions == "argmax":
            return table[best[keep]].to(h.dtype), kept
        # a run of frames emitting one token: average its posteriors over the real tokens
        run = torch.cumsum(starts.long(), 0) - 1
        probs = logits[:, :blank].softmax(-1)
        pooled = torch.zeros(int(run[-1]) + 1, blank, device=h.device).index_add_(0, run, probs)
        pooled = pooled[run[keep]]
        pooled = pooled / pooled.sum(-1, keepdim=True)
        return (pooled.to(table.dtype) @ table).to(h.dtype), kept

    def emitted_ids(self, h: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """(n, H) frames -> (e,) the LM token ids of their CTC emissions: what "argmax" hands
        the LM is these ids' embedding rows (`emit`)."""
        table = self.emittable(embeddings)
        best = self.logits(h, table).float().argmax(-1)
        vocabulary = self.vocab_mask[: embeddings.shape[0]].nonzero()[:, 0]  # row -> token id
        return vocabulary[best[_emitting(best, table.shape[0])[1]]]

    def _posteriors(
        self, h: torch.Tensor, embeddings: torch.Tensor, logits: torch.Tensor, best: torch.Tensor
    ) -> CtcPosteriors:
        """The frames' CTC posteriors from their (n, S + 1) logits and most likely classes."""
        blank = logits.shape[1] - 1
        mask = self.vocab_mask[: embeddings.shape[0]]
        log_norm = logits.logsumexp(-1)
        vocabulary = mask.nonzero()[:, 0]  # table row -> LM token id
        said = torch.where(best == blank, -1, vocabulary[best.clamp(max=blank - 1)])
        scale = float(self.log_scale.detach().exp())
        blanks = logits[:, blank] - log_norm
        return CtcPosteriors(h.detach(), embeddings.detach(), mask, scale, log_norm, blanks, said)


class CtcPart(NamedTuple):
    """One window through a "ctc" connector."""

    mean: torch.Tensor  # (k*D,) the mean of its stacked encoder frames (the summary's input)
    emitted: torch.Tensor  # (e, H) the LM inputs of its CTC emissions
    posteriors: CtcPosteriors | None  # its frames' CTC posteriors, when asked for


def _emitting(best: torch.Tensor, blank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames' most likely classes -> (where a run of one class starts, where a run of a token
    starts: the frames that emit)."""
    starts = torch.ones_like(best, dtype=torch.bool)
    starts[1:] = best[1:] != best[:-1]
    return starts, starts & (best != blank)
