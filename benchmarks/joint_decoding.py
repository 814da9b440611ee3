"""Joint CTC/LM decoding of an aero-mini v2 adapter against its LM alone, side by side in one run:
WER and seconds for each CTC weight on the first N transcriptions of a manifest.

    python benchmarks/joint_decoding.py ADAPTER MANIFEST [--limit 60] [--weights 0 0.3 0.5 0.7]
        [--beams 1] [--task transcribe]

Pick the weight on data the adapter has not trained on and that is not a held-out set (e.g. the
next session's new synthetic data before it trains), then read the held-out table once.
Prints one line per weight, and one for the connector alone (greedy CTC, no LM): corpus WER
(substitutions, deletions, insertions), seconds, and the time ratio to the first weight.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from aero.audio import load_audio
from aero.evaluation.answers import as_asr_items, chat_manifest_items
from aero.evaluation.transcriber import AeroTranscriber
from aero.evaluation.wer import corpus_score, score_texts
from aero.models import load_with_adapter
from aero.train.align import CtcTranscriber


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("adapter")
    parser.add_argument("manifest")
    parser.add_argument("--limit", type=int, default=60)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7])
    parser.add_argument("--beams", type=int, default=1)
    parser.add_argument("--task", default="transcribe", help="rows of this task only")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args()

    rows = [json.loads(line) for line in Path(args.manifest).read_text().splitlines()]
    ids = {r["id"] for r in rows if r.get("task") == args.task}
    items = [i for i in as_asr_items(chat_manifest_items(args.manifest)) if i.id in ids]
    items = items[: args.limit]
    model, processor = load_with_adapter(args.adapter)
    clips = [load_audio(i.audio) for i in items]  # decoded once for every weight
    references = [i.text for i in items]
    baseline = None
    print(f"{len(items)} items of {args.manifest}, beams {args.beams}", flush=True)
    runs = [(f"ctc_weight {w:.2f}", w) for w in args.weights] + [("connector alone", None)]
    for label, weight in runs:
        if weight is None:  # greedy CTC, no LM: what the LM reads
            transcriber = CtcTranscriber("connector", model, processor)
        else:
            transcriber = AeroTranscriber(
                label,
                model,
                processor,
                args.max_new_tokens,
                num_beams=args.beams,
                ctc_weight=weight,
            )
        start = time.perf_counter()
        hypotheses = []
        for k in range(0, len(clips), 8):
            hypotheses += transcriber.transcribe(clips[k : k + 8])
        seconds = time.perf_counter() - start
        baseline = baseline or seconds
        score = corpus_score(score_texts(references, hypotheses))
        print(
            f"{label}: WER {100 * score.error_rate:.1f}% "
            f"(S {score.substitutions} D {score.deletions} I {score.insertions} "
            f"of {score.reference_units}), {seconds:.1f} s, x{seconds / baseline:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
