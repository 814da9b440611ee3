"""MFU of packed training at the published 1.5B shape, on one GPU (random init).

    python benchmarks/gpu_mfu.py [--pack-length 32768] [--steps 6] [--tiny]

Builds a Whisper-large-v3-shaped encoder (frozen) + Qwen2.5-1.5B-shaped LM in bf16, packs
synthetic ASR samples (real-length audio windows + transcripts) into rows of --pack-length
tokens, and runs full fine-tuning steps (AdamW) through the same `TrainingModule` as
`aero train`: restarting position ids with flash-attention varlen (or SDPA), the fused
linear cross-entropy (Liger on CUDA when installed), Liger RMSNorm/SwiGLU/RoPE when installed.
Prints tokens/s and MFU against (a) the measured bf16 matmul peak of this device and
(b) the datasheet peak given with --peak (H100: 989e12, H200: same SXM compute).
The seed recipe reported MFU 0.34 (32k packing, 32 GPUs); the target is >= 0.40.
`--tiny` runs a small shape on CPU to check the script itself.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))


def measured_peak(device, dtype=torch.bfloat16, n=8192, reps=20) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t)


def build(tiny: bool, device, dtype):
    from aero.modeling import AeroConfig, AeroForConditionalGeneration

    if tiny:
        audio = dict(
            d_model=64,
            encoder_layers=2,
            encoder_attention_heads=2,
            encoder_ffn_dim=128,
            num_mel_bins=128,
        )
        text = dict(
            model_type="qwen2",
            vocab_size=1024,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=32768,
        )
    else:
        audio = {}  # Whisper-large-v3 shape is AeroConfig's default
        text = dict(
            model_type="qwen2",
            vocab_size=152000,
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rope_theta=1e6,
            tie_word_embeddings=True,
        )
    config = AeroConfig(
        audio_config={"model_type": "qwen2_audio_encoder", **audio},
        text_config=text,
        audio_token_index=text["vocab_size"] - 1,
    )
    attn = "sdpa"
    if device.type == "cuda":
        try:
            import flash_attn  # noqa: F401

            attn = "flash_attention_2"
        except ImportError:
            pass
    config._attn_implementation = attn
    model = AeroForConditionalGeneration(config).to(device=device, dtype=dtype)
    return model, attn


def apply_liger() -> bool:
    """Liger's Qwen2 kernels (RoPE, RMSNorm, SwiGLU) patch transformers' Qwen2 classes; the
    fused CE comes from aero.train.loss. Applied explicitly, here only, because patching is
    global to the process."""
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_qwen2
    except ImportError:
        return False
    apply_liger_kernel_to_qwen2(
        rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False
    )
    return True


def packed_batch(
    pack_length: int, vocab: int, audio_id: int, n_mels: int, rng: random.Random
) -> dict:
    """ASR-like samples (2-30 s of audio at 25 tokens/s + ~3 text tokens/s) packed to the length."""
    from aero.audio import encoder_output_lengths

    ids, pos, targets, sample_ids, frames = [], [], [], [], []
    k = 0
    while True:
        seconds = rng.uniform(2, 30)
        f = int(seconds * 100)
        n_audio = int(encoder_output_lengths(f)[1])
        n_text = int(seconds * 3) + 2
        n = 12 + n_audio + n_text
        if len(ids) + n > pack_length:
            break
        seq = (
            [1] * 10
            + [audio_id] * n_audio
            + [2, 3]
            + [rng.randrange(10, vocab - 10) for _ in range(n_text)]
        )
        lab = [-100] * (12 + n_audio) + seq[12 + n_audio :]
        ids += seq
        pos += list(range(n))
        targets += lab[1:] + [-100]
        sample_ids += [k] * n
        frames.append(f)
        k += 1
    T = max(frames) + 2
    return {
        "input_ids": torch.tensor([ids]),
        "position_ids": torch.tensor([pos]),
        "targets": torch.tensor([targets]),
        "sample_ids": torch.tensor([sample_ids]),
        "audio_values": torch.randn(len(frames), n_mels, min(T, 3000)),
        "audio_attention_mask": (
            torch.arange(min(T, 3000))[None] < torch.tensor(frames)[:, None]
        ).long(),
        "frames": frames,
        "lens": [sample_ids.count(i) for i in range(k)],
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pack-length", type=int, default=32768)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--peak", type=float, default=989e12, help="datasheet bf16 dense peak FLOP/s")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument(
        "--checkpointing",
        action="store_true",
        help="activation checkpointing in the LM (saves memory)",
    )
    args = ap.parse_args()

    from aero.audio import encoder_output_lengths
    from aero.train.flops import flop_model, reference_overcount
    from aero.train.step import TrainingModule

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    liger = apply_liger() if device.type == "cuda" else False
    model, attn = build(args.tiny, device, dtype)
    model.audio_tower.requires_grad_(False)
    if args.checkpointing:
        model.language_model.gradient_checkpointing_enable()
    flops = flop_model(model)
    module = TrainingModule(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")
    rng = random.Random(0)
    cfg = model.config
    results = []
    for step in range(args.steps):
        batch = packed_batch(
            args.pack_length,
            cfg.text_config.vocab_size,
            cfg.audio_token_index,
            cfg.audio_config.num_mel_bins,
            rng,
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        total, count = module({k: v for k, v in batch.items() if isinstance(v, torch.Tensor)})
        (total / count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        positions = encoder_output_lengths(torch.tensor(batch["frames"]))[0].tolist()
        supervised = int((batch["targets"] != -100).sum())
        f = flops.step_flops(batch["lens"], positions, supervised)
        results.append((dt, batch["input_ids"].shape[1], f, reference_overcount(batch["lens"])))
        print(
            f"step {step}: {dt:.3f} s, {batch['input_ids'].shape[1] / dt:,.0f} tok/s, "
            f"{f / dt / 1e12:.1f} TFLOP/s"
        )
    warm = results[2:] if len(results) > 3 else results
    secs = sum(r[0] for r in warm)
    tok = sum(r[1] for r in warm)
    fl = sum(r[2] for r in warm)
    print(
        f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}; "
        f"attention: {attn}; "
        f"liger: {liger}; pack length {args.pack_length}; {dtype}; full fine-tune, frozen encoder"
    )
    print(f"tokens/s: {tok / secs:,.0f}; achieved {fl / secs / 1e12:.1f} TFLOP/s")
    if device.type == "cuda":
        peak = measured_peak(device)
        print(f"MFU vs measured matmul peak ({peak / 1e12:.0f} TFLOP/s): {fl / secs / peak:.3f}")
        print(
            f"MFU vs datasheet peak ({args.peak / 1e12:.0f} TFLOP/s): {fl / secs / args.peak:.3f}"
        )
        print(f"peak memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    print(f"(a whole-row attention count would overstate attention FLOPs {warm[-1][3]:.1f}x)")


if __name__ == "__main__":
    main()
