"""aero-mini on its held-out sets, side by side with Whisper tiny.en (faster-whisper, int8, greedy).

    python scripts/eval_aero_mini.py data/aero-mini-heldout [--adapter PATH] [--limit N]
        [--output DIR]

ASR (corpus WER, Whisper normalizer): heldout-espeak, heldout-slt, heldout-long; aero-mini
decodes each long recording in ONE generation (all its 30 s windows in one prompt), faster-whisper
with its own sequential 30 s decoding. Also aero-mini with int8 dynamic quantization on the
short sets. A "ctc" connector is also scored alone (greedy CTC, no LM: what its LM stage reads),
and its whole model transcribes with joint CTC/LM decoding (--ctc-weight) and, on the short sets,
with the LM alone.
Spoken instructions (heldout-instruct): agreement with the text LLM's answer to the
written question. Understanding (heldout-understanding): exact-match accuracy per question kind.
Writes one results.json + samples.jsonl per (model, set) under --output and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aero.evaluation.answers import as_asr_items, chat_manifest_items, run_answer_eval
from aero.evaluation.runner import run_asr_eval

ASR_SETS = {"espeak": 256, "slt": 256, "long": 2048}  # set -> max new tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("heldout", type=Path)
    parser.add_argument("--adapter", help="adapter file (default: the shipped one)")
    parser.add_argument("--limit", type=int, default=None, help="first N items of each set")
    parser.add_argument("--long-limit", type=int, default=None, help="first N long recordings")
    parser.add_argument("--output", type=Path, default=Path("eval-results/aero-mini-heldout"))
    parser.add_argument("--prompt", help="transcription prompt (default: the model's own)")
    parser.add_argument(
        "--beams", type=int, default=1, help="aero-mini with beam search (default 1: greedy)"
    )
    parser.add_argument(
        "--fallback",
        action="store_true",
        help="aero-mini with the temperature fallback on loops "
        "(default: greedy only, like the Whisper baseline)",
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        help="parts to skip: aero (every aero-mini part: Whisper alone) whisper int8 espeak slt "
        "long instruct understanding",
    )
    parser.add_argument(
        "--ctc-weight",
        type=float,
        default=None,
        help="joint CTC/LM decoding weight for a 'ctc' connector (default: the engine's)",
    )
    args = parser.parse_args()

    from aero.decoding import FALLBACK_TEMPERATURES, GenerationOptions
    from aero.evaluation.transcriber import AeroTranscriber
    from aero.models import load, load_with_adapter

    def load_model():
        """aero-mini in full precision: the shipped adapter, or --adapter on the base."""
        if args.adapter:  # on the base with the projector the adapter was trained with
            return load_with_adapter(args.adapter)
        model, processor = load("aero-mini")
        return model.eval(), processor

    if "aero" in args.skip:
        args.skip += ["instruct", "understanding", "int8"]
    model, processor = load_model() if "aero" not in args.skip else (None, None)
    if args.prompt and processor is not None:
        processor.transcribe_prompt = args.prompt

    weight = GenerationOptions.ctc_weight if args.ctc_weight is None else args.ctc_weight

    def aero(max_new_tokens: int, label: str = "aero-mini", ctc: bool = True) -> AeroTranscriber:
        return AeroTranscriber(
            label,
            model,
            processor,
            max_new_tokens=max_new_tokens,
            num_beams=args.beams,
            fallback_temperatures=FALLBACK_TEMPERATURES if args.fallback else (),
            ctc_weight=weight if ctc else 0.0,
        )

    sets = {
        name: chat_manifest_items(args.heldout / f"heldout-{name}.jsonl")
        for name in ["espeak", "slt", "long", "instruct", "understanding"]
    }
    table: dict[str, dict[str, str]] = {}

    def asr(transcriber, label: str, name: str) -> None:
        limit = args.long_limit if name == "long" else args.limit
        r = run_asr_eval(
            transcriber,
            as_asr_items(sets[name]),
            batch_size=8 if name != "long" else 1,
            limit=limit,
            output_dir=args.output / label / name,
            task_name=f"heldout-{name}",
        )
        lo, hi = r["ci95_percent"] or (None, None)
        table.setdefault(label, {})[name] = f"{r['wer_percent']:.1f} [{lo:.1f}, {hi:.1f}]"
        print(
            label,
            name,
            json.dumps({k: r[k] for k in ("wer_percent", "ci95_percent")}),
            r["counts"],
            r["speed"]["rtfx"],
            flush=True,
        )

    asr_sets = [name for name in ASR_SETS if name not in args.skip and name != "long"]
    for name in asr_sets if "aero" not in args.skip else []:
        asr(aero(ASR_SETS[name]), "aero-mini", name)
    if model is not None and model.config.projector_type == "ctc":  # what its LM stage reads
        from aero.train.align import CtcTranscriber

        connector = CtcTranscriber("aero-mini connector (greedy CTC, no LM)", model, processor)
        for name in asr_sets + ([] if "long" in args.skip else ["long"]):
            asr(connector, "aero-mini connector alone", name)
        for name in asr_sets if weight > 0 else []:  # what joint decoding adds
            asr(aero(ASR_SETS[name], ctc=False), "aero-mini LM alone", name)
    if "whisper" not in args.skip:
        from aero.convert.whisper_ct2 import PACKAGE, package_file
        from aero.evaluation.baselines import FasterWhisperTranscriber

        whisper = FasterWhisperTranscriber(
            str(package_file(PACKAGE, "model.bin").parent), device="cpu"
        )
        whisper.name = "faster-whisper:tiny.en (int8)"
        for name in asr_sets + ([] if "long" in args.skip else ["long"]):
            asr(whisper, "whisper-tiny.en", name)
    if "instruct" not in args.skip:
        r = run_answer_eval(
            aero(128),
            sets["instruct"],
            judge="agreement",
            limit=args.limit,
            output_dir=args.output / "aero-mini" / "instruct",
            task_name="heldout-instruct",
        )
        table.setdefault("aero-mini", {})["instruct"] = (
            f"exact {r['exact_percent']:.1f} / "
            f"first sentence {r['first_sentence_percent']:.1f} / "
            f"token F1 {r['token_f1_percent']:.1f}"
        )
        print("instruct", r["counts"], table["aero-mini"]["instruct"], flush=True)
    if "understanding" not in args.skip:
        r = run_answer_eval(
            aero(16),
            sets["understanding"],
            judge="exact",
            limit=args.limit,
            output_dir=args.output / "aero-mini" / "understanding",
            task_name="heldout-understanding",
        )
        per = ", ".join(f"{k} {v['accuracy_percent']:.1f}" for k, v in r["per_category"].items())
        table.setdefault("aero-mini", {})["understanding"] = f"{r['accuracy_percent']:.1f} ({per})"
        print("understanding", r["counts"], table["aero-mini"]["understanding"], flush=True)
    if "int8" not in args.skip:
        from aero.quantize import quantize_dynamic_int8

        quantize_dynamic_int8(model)
        for name in asr_sets:
            asr(aero(ASR_SETS[name], "aero-mini int8"), "aero-mini int8", name)

    if (
        "long" not in args.skip and "aero" not in args.skip
    ):  # last: the slowest part (one generation per whole recording)
        if "int8" not in args.skip:
            model, processor = load_model()  # full precision again after the int8 part
        asr(aero(ASR_SETS["long"]), "aero-mini", "long")

    columns = sorted(
        {c for row in table.values() for c in row},
        key=["espeak", "slt", "long", "instruct", "understanding"].index,
    )
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [
        f"| {label} | " + " | ".join(row.get(c, "") for c in columns) + " |"
        for label, row in table.items()
    ]
    (args.output / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
