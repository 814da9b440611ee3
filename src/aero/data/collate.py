"""Training samples and how they become batches: padded rows or one packed row.

- `TrainDataset` turns a manifest sample into ids, labels and audio windows; a sample that
  cannot be read becomes an error record (strict mode raises instead), so a worker never
  dies on one bad file and the trainer can count what it skipped.
- `collate` shifts labels inside each sample (`targets[t]` is the token after position t
  of the same sample, -100 at each sample's end), so nothing is learned across samples.
- Packed: all samples are concatenated into one row with position ids restarting at 0 per
  sample and no attention mask; transformers then attends within each sample only (SDPA /
  eager read the restarts from position_ids when no cache is used; flash-attention varlen
  does the same on GPU).
- Padded: rows are right-padded with an attention mask (the baseline, and generation-free).
- The encoder gets each window at its real length, padded only to the longest window of
  the batch; `pad_audio_to_30s` reproduces the reference's 3000-frame padding for
  benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aero.audio import AudioError, mel_frames
from aero.data.manifest import ManifestError, Sample, with_resolved_audio
from aero.modeling import encoder_frame_slots
from aero.processing import IGNORE_INDEX


class TrainDataset(torch.utils.data.Dataset):
    def __init__(self, samples: list[Sample], processor, strict: bool = False):
        self.samples = samples
        self.processor = processor
        self.strict = strict

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        try:
            encoded = self.processor.encode_conversation(with_resolved_audio(sample))
        except (AudioError, ManifestError, ValueError, OSError) as err:
            if self.strict:
                raise type(err)(f"{sample.source}: {err}") from None
            return {"error": f"{sample.source}: {err}", "index": index}
        return {
            "input_ids": encoded["input_ids"],
            "labels": encoded["labels"],
            "windows": encoded["audio"].windows,
            "index": index,
        }


def shift_labels(labels: list[int]) -> list[int]:
    """Next-token targets of one sample: targets[t] = labels[t + 1], -100 at the end."""
    return labels[1:] + [IGNORE_INDEX]


@dataclass
class Collator:
    processor: object
    packed: bool = True
    pad_audio_to_30s: bool = False
    # a "ctc" connector's store (aero.processing.CompressedAudio): the audio inputs were
    # computed when the ids were counted, and the batch carries them instead of log-mels
    compressed: object = None

    def __call__(self, items: list[dict]) -> dict:
        errors = [it["error"] for it in items if "error" in it]
        items = [it for it in items if "error" not in it]
        batch: dict = {"errors": errors, "n_samples": len(items)}
        if not items:
            return batch
        lens = [len(it["input_ids"]) for it in items]
        pad = self.processor.tokenizer.pad_token_id
        if self.packed:
            batch["input_ids"] = torch.tensor([sum((it["input_ids"] for it in items), [])])
            batch["position_ids"] = torch.cat([torch.arange(n) for n in lens])[None]
            batch["targets"] = torch.tensor([sum((shift_labels(it["labels"]) for it in items), [])])
            batch["sample_ids"] = torch.cat([torch.full((n,), k) for k, n in enumerate(lens)])[None]
            slots = sum(lens)
        else:
            L = max(lens)
            rows = len(items)
            batch["input_ids"] = torch.full((rows, L), pad, dtype=torch.long)
            batch["attention_mask"] = torch.zeros((rows, L), dtype=torch.long)
            batch["targets"] = torch.full((rows, L), IGNORE_INDEX, dtype=torch.long)
            batch["sample_ids"] = torch.full((rows, L), -1, dtype=torch.long)
            for r, (it, n) in enumerate(zip(items, lens)):
                batch["input_ids"][r, :n] = torch.tensor(it["input_ids"])
                batch["attention_mask"][r, :n] = 1
                batch["targets"][r, :n] = torch.tensor(shift_labels(it["labels"]))
                batch["sample_ids"][r, :n] = r
            batch["position_ids"] = torch.arange(L)[None].expand(rows, L).contiguous()
            slots = rows * L
        windows = [w for it in items for w in it["windows"]]
        if windows and self.compressed is not None:
            batch["audio_features"] = self.compressed.features(windows)
            batch["audio_frames"] = batch["audio_frame_slots"] = sum(
                mel_frames(len(w)) for w in windows
            )
        elif windows:
            values, mask = self.processor.audio_features(windows, pad_to_30s=self.pad_audio_to_30s)
            batch["audio_values"], batch["audio_attention_mask"] = values, mask
            frames = [mel_frames(len(w)) for w in windows]
            batch["audio_frames"] = sum(frames)
            # What the encoder computes: windows grouped by length (see get_audio_features), or
            # all 3000 frames of every window when emulating the reference.
            if self.pad_audio_to_30s:
                batch["pad_audio_to_30s"] = True
                batch["audio_frame_slots"] = values.shape[0] * values.shape[-1]
            else:
                batch["audio_frame_slots"] = encoder_frame_slots(frames, values.shape[-1])
        batch["n_tokens"] = sum(lens)
        batch["n_slots"] = slots
        batch["seq_lens"] = lens
        return batch
