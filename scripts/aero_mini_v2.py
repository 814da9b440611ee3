"""aero-mini v2 training that accumulates across sessions, and the replay of a shipped lineage.

    python scripts/aero_mini_v2.py session --seed 6 [--workdir W] [--recipe YAML] [--ctc-steps 400]
        [--lm-steps 150] [--ctc-minutes M] [--lm-minutes M] [--reread MANIFEST ...]
        [--eval-limit 120] [--long-limit N] [--smoke] [--ship]
    python scripts/aero_mini_v2.py replay [ADAPTER] [--workdir W] [--smoke]

A session continues the shipped model:
1. new data: `configs/data/aero-mini-v2.yaml` (or --recipe) with a seed no earlier leg used;
2. the connector stage (CTC, no LM) from the shipped connector (the fresh one the first time),
   `configs/aero-mini-v2-ctc.yaml`; with --ctc-steps 0 none: the LM leg goes on from the newest
   connector and LoRA as they are;
3. the LM stage from that connector plus the shipped LoRA (fresh LoRA the first time),
   `configs/aero-mini-v2-lm.yaml`; with --lm-steps 0 none: the new connector goes on under the
   LoRA as it was (argmax emissions are text tokens, so a better connector needs no new LoRA);
4. the held-out table (`scripts/eval_aero_mini.py`) of the new adapter, beside Whisper tiny.en;
5. with --ship, the new adapter replaces the shipped one when its held-out WER is lower than
   the shipped adapter's on both short sets (slt and espeak) and its instruction F1 and
   understanding accuracy are no lower, or lower by less than the held-out set resolves (the
   paired bootstrap interval of the difference reaches zero: `no_worse`), else it becomes the
   candidate (`checkpoints/aero-mini-v2/`) the next session goes on from when it is closer to
   shipping than the kept candidate (`verdict`); its lineage is in its metadata (steps,
   samples, tokens, data recipe and seed, the whole config).

`replay` runs every leg of an adapter's lineage again, in order, from its recorded data recipes,
seeds, configs and step counts (each leg starting from the legs before it, as the sessions did).
Finished steps are skipped on a rerun (WORKDIR/runs/.done/).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

from aero.adapter import adapter_metadata, adapter_part
from aero.models import ADAPTER_FILE, projector_settings
from aero.train.lineage import lineage_of

REPO = Path(__file__).resolve().parents[1]
# an adapter trained after the shipped one that did not ship (behind it on some figure): where
# the next session goes on
CANDIDATE = REPO / "checkpoints" / "aero-mini-v2" / "adapter.safetensors"
RECIPE = REPO / "configs" / "data" / "aero-mini-v2.yaml"
FINAL = "final/adapter.safetensors"


class Work:
    def __init__(self, root: Path, smoke: bool, limit: int = 120, long: int | None = None):
        self.root, self.smoke, self.limit, self.long = root.resolve(), smoke, limit, long
        (self.root / "runs" / ".done").mkdir(parents=True, exist_ok=True)

    def step(self, name: str, command: list[str], ok: tuple[int, ...] = (0,)) -> None:
        """Run a command once; a finished step leaves runs/.done/NAME. Exit codes in `ok` count
        as finished."""
        done = self.root / "runs" / ".done" / name
        if done.exists():
            print(f"== {name}: done earlier")
            return
        print(f"== {name}: {' '.join(command)}", flush=True)
        code = subprocess.run(command, cwd=self.root).returncode
        if code not in ok:
            raise subprocess.CalledProcessError(code, command)
        done.touch()

    def synth(self, out: str, recipe: str, seed: int, samples: int | None = None) -> None:
        extra = ["--samples", "6"] if self.smoke else ["--samples", str(samples)] if samples else []
        command = ["aero", "data", "synth", out, "--recipe", recipe, "--seed", str(seed)]
        if recipe != "heldout":  # SmolLM2's answers, shared by every seed: most questions recur
            # (seeds 12 and 13: 426 of ~470); seed 14's ~500 answers took 12 of its 27 minutes
            command += ["--answers-cache", "data/llm_answers.json"]
        # exit 1: a few clips failed (a tool crashed on them); the rest were written and the
        # failed ones are listed in <split>.failed.jsonl, so the session goes on without them
        self.step(f"data-{Path(out).name}-{seed}", command + ["--workers", "2", *extra], (0, 1))

    def train(self, name: str, base: Path, settings: dict) -> Path:
        """A training leg: the base YAML with `settings` over it; returns its final adapter."""
        config = yaml.safe_load(base.read_text()) | settings
        if self.smoke:
            config |= {"max_steps": 2, "save_every": 1, "eval_every": 1, "eval_samples": 2}
        path = self.root / "runs" / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        # this interpreter's aero (a machine with the wheels on PYTHONPATH has no `aero` script)
        self.step(name, [sys.executable, "-m", "aero.cli", "train", str(path)])
        return self.root / config["output_dir"] / FINAL


def shipped_is_v2() -> bool:
    return projector_settings(adapter_metadata(ADAPTER_FILE))["projector_type"] == "ctc"


def latest_v2() -> Path | None:
    """The adapter a session goes on from: the candidate when one is kept (a session that did not
    ship leaves it; shipping removes it), else the shipped one once it is v2."""
    if CANDIDATE.is_file():
        return CANDIDATE
    return ADAPTER_FILE if shipped_is_v2() else None


def session(args) -> None:
    work = Work(args.workdir, args.smoke, args.eval_limit, args.long_limit)
    start = latest_v2()
    legs = lineage_of(start) if start else []
    used = {d.get("seed") for leg in legs for d in leg["data"]}
    if args.seed in used:
        sys.exit(f"seed {args.seed} was used by an earlier leg ({sorted(used)}): pick a new one")
    if (args.lm_steps == 0 or args.ctc_steps == 0) and not start:
        sys.exit("--lm-steps 0 or --ctc-steps 0 goes on from an earlier session; there is none yet")
    if args.lm_steps == 0 and args.ctc_steps == 0:
        sys.exit("--ctc-steps 0 and --lm-steps 0: nothing to train")
    data = f"data/aero-mini-v2-s{args.seed}"
    work.synth(data, str(args.recipe), args.seed)
    work.synth("data/aero-mini-heldout", "heldout", 0)
    splits = list(yaml.safe_load(args.recipe.read_text())["splits"])
    manifests = [{"path": f"{data}/{name}.jsonl"} for name in splits]
    ctc = {
        "output_dir": f"runs/v2-s{args.seed}-ctc",
        "data": manifests + [{"path": p} for p in args.reread],
        "max_steps": args.ctc_steps,
        "max_minutes": args.ctc_minutes,
    }
    ctc |= {k: v for k, v in (("lr", args.ctc_lr), ("encoder_lr", args.encoder_lr)) if v}
    lm = {
        "output_dir": f"runs/v2-s{args.seed}-lm",
        "data": lm_data(data, splits),
        "max_steps": args.lm_steps,
    }
    lm["max_minutes"] = args.lm_minutes
    if args.ctc_steps == 0:  # the LM leg alone, on the newest connector and LoRA as they are
        lm["init_adapter"] = str(start)
    else:
        if start:  # go on from the newest v2 connector, and then from its LoRA
            init = work.root / "runs" / f"v2-s{args.seed}-init.safetensors"
            ctc["init_adapter"] = str(adapter_part(start, init))
        ctc_base = REPO / "configs" / "aero-mini-v2-ctc.yaml"
        ctc_out = work.train(f"v2-s{args.seed}-ctc", ctc_base, ctc)
        lm["init_adapter"] = str(ctc_out)
        if start:
            both = work.root / "runs" / f"v2-s{args.seed}-lm-init.safetensors"
            lm["init_adapter"] = str(adapter_part(ctc_out, both, lora_from=start))
    if args.lm_steps == 0:  # the new connector under the LoRA as it was (its emissions are text)
        new = Path(lm["init_adapter"])
    else:
        new = work.train(f"v2-s{args.seed}-lm", REPO / "configs" / "aero-mini-v2-lm.yaml", lm)
    evaluate(work, new, f"v2-s{args.seed}")
    if args.ship:
        ship_if_better(work, new, f"v2-s{args.seed}")


def lm_data(data: str, splits: list[str]) -> list[dict]:
    """The LM leg's mixture of one seed's data: every short transcription, the instructions and
    questions twice (from session 6: they lag the shipped adapter's, the transcripts do not), and
    a quarter of the long recordings (each a 1-3 minute batch of its own, they took half of
    session 2's LM steps). The small neural split is read as it is."""
    mixture = []
    for name in splits:
        path = f"{data}/{name}.jsonl"
        if name == "neural":
            mixture.append({"path": path})
            continue
        mixture += [
            {"path": path, "tasks": ["transcribe"]},
            {"path": path, "tasks": ["instruct", "understand"], "weight": 2.0},
            {"path": path, "tasks": ["long"], "weight": 0.25},
        ]
    return mixture


def evaluate(work: Work, adapter: Path | None, label: str) -> Path:
    out = work.root / "eval-results" / label
    limits = ["--limit", str(work.limit)] + (["--long-limit", str(work.long)] if work.long else [])
    limits = ["--limit", "2", "--long-limit", "1"] if work.smoke else limits
    command = [sys.executable, str(REPO / "scripts" / "eval_aero_mini.py")]
    command += ["data/aero-mini-heldout", "--output", str(out), *limits]
    work.step(f"eval-{label}", command + (["--adapter", str(adapter)] if adapter else []))
    return out


def held_out(results: Path, shipped: Path | None = None) -> dict[str, float]:
    """The figures a new adapter must beat: WER on the short sets (lower is better), the spoken
    instructions' token F1 and the understanding accuracy (higher is better). Given the shipped
    adapter's results, also the upper end of the paired 95% bootstrap interval of each answer
    figure's difference from the shipped one (`instruct_gap_high`, points)."""
    from aero.evaluation.report import compare_scores

    def read(name: str, key: str) -> float:
        return json.loads((results / "aero-mini" / name / "results.json").read_text())[key]

    out = {name: read(name, "wer_percent") for name in SHORT_SETS}
    out["instruct"] = read("instruct", "token_f1_percent")
    out["understanding"] = read("understanding", "accuracy_percent")
    for name in ANSWERS if shipped else ():
        paired = compare_scores(results / "aero-mini" / name, shipped / "aero-mini" / name)
        out[f"{name}_gap_high"] = round(100 * paired.ci.high, 2)
    return out


SHORT_SETS = ("slt", "espeak")  # WER, lower is better
ANSWERS = ("instruct", "understanding")  # token F1 and accuracy, higher is better


def no_worse(new: dict[str, float], shipped: dict[str, float], name: str) -> bool:
    """An answer figure at or above the shipped one, or below it by no more than the held-out
    set can tell: the paired 95% interval of the difference reaches zero (120 items cannot
    resolve a few points; session 10's candidate, 4.1 F1 points behind, was the case)."""
    return new[name] >= shipped[name] or new.get(f"{name}_gap_high", -1.0) >= 0


def conditions_met(new: dict[str, float], shipped: dict[str, float]) -> int:
    """How many of the four shipping conditions `new` meets against the shipped figures."""
    lower = sum(new[k] < shipped[k] for k in SHORT_SETS)
    return lower + sum(no_worse(new, shipped, k) for k in ANSWERS)


def verdict(
    new: dict[str, float], shipped: dict[str, float], candidate: dict[str, float] | None
) -> str:
    """ "ship" when `new` transcribes both short sets better than the shipped adapter and answers
    instructions and questions at least as well; else "candidate" when it is closer to shipping
    than the kept candidate (more conditions met; a tie goes to the lower short-set WER) or no
    candidate is kept; else "keep" (the candidate stays, the new adapter is dropped)."""
    if conditions_met(new, shipped) == len(SHORT_SETS) + len(ANSWERS):
        return "ship"
    if candidate is None:
        return "candidate"

    def rank(figures: dict[str, float]) -> tuple[int, float]:
        return conditions_met(figures, shipped), -sum(figures[k] for k in SHORT_SETS)

    return "candidate" if rank(new) > rank(candidate) else "keep"


def ship_if_better(work: Work, new: Path, label: str) -> None:
    """Ship the new adapter, keep it as the candidate, or drop it (`verdict`), all three
    evaluated in the same run on the same held-out files."""
    from aero.adapter import convert_adapter

    shipped = evaluate(work, None, "shipped")
    theirs = held_out(shipped)
    ours = held_out(work.root / "eval-results" / label, shipped)
    kept = None
    if CANDIDATE.is_file():
        kept = held_out(evaluate(work, CANDIDATE, "candidate"), shipped)
    print(f"held-out, new {ours} vs shipped {theirs} and candidate {kept}")
    outcome = verdict(ours, theirs, kept)
    if outcome == "ship":
        print(f"shipped: {convert_adapter(new, ADAPTER_FILE)}")
        CANDIDATE.unlink(missing_ok=True)
    elif outcome == "candidate":  # the next session goes on from it
        print(f"not shipped (behind on one); candidate: {convert_adapter(new, CANDIDATE)}")
    else:
        print(f"not shipped, not kept: the candidate {CANDIDATE} is closer to shipping")


def replay(args) -> None:
    """Every leg of the lineage again, in order (see the module docstring)."""
    work = Work(args.workdir, args.smoke)
    connector = lora = previous = None  # the latest ctc-leg, lm-leg and any-leg adapters
    legs = lineage_of(args.adapter or latest_v2())
    if any(leg["config"].get("eval_data") for leg in legs):  # the curves' held-out checks
        work.synth("data/aero-mini-heldout", "heldout", 0)
    for k, leg in enumerate(legs):
        for record in leg["data"]:
            recipe = REPO / "configs" / "data" / f"{record['recipe']}.yaml"
            out = str(Path(record["manifest"]).parent)
            work.synth(out, str(recipe) if recipe.exists() else record["recipe"], record["seed"])
        data = [
            {"path": d["manifest"], "tasks": d.get("tasks"), "weight": d.get("weight", 1.0)}
            for d in leg["data"]
        ]
        settings = {**leg["config"], "data": data}
        name = f"replay-{k}-{leg['run']}"
        init = work.root / "runs" / f"{name}-init.safetensors"
        if leg["objective"] == "ctc":  # from the connector of the leg before, if any
            init = adapter_part(previous, init) if previous else None
        elif k and legs[k - 1]["objective"] != "ctc":  # an LM leg after an LM leg (a session
            init = previous  # with --ctc-steps 0): from that adapter as it was
        elif lora is None:  # the first LM leg: from the connector alone
            init = connector
        else:  # the newest connector with the newest LoRA
            init = adapter_part(connector, init, lora_from=lora)
        # the steps it ran, under the cosine it ran with (a leg its clock stopped ran fewer)
        cosine = leg["config"].get("schedule_steps") or leg["config"]["max_steps"]
        if leg["config"].get("schedule_minutes"):  # a clock-scheduled leg (on a lent GPU): its
            cosine = leg["steps"]  # cosine spanned the steps it ran
        settings |= {"max_steps": leg["steps"], "schedule_steps": max(cosine, leg["steps"])}
        settings["schedule_minutes"] = None
        settings |= {"max_minutes": None, "init_adapter": str(init) if init else None}
        settings["output_dir"] = f"runs/{name}"
        base = work.root / "runs" / f"{name}-base.yaml"
        base.write_text("{}\n")
        previous = work.train(name, base, settings)
        connector, lora = (previous, lora) if leg["objective"] == "ctc" else (connector, previous)
    if lora is not None and legs[-1]["objective"] == "ctc":  # a session without an LM leg
        final = work.root / "runs" / "replay-final.safetensors"
        lora = adapter_part(connector, final, lora_from=lora)
    print(f"replayed: {lora or connector}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("session", help="one training session from the shipped adapter")
    one.add_argument("--seed", type=int, required=True, help="data seed, new for each session")
    one.add_argument("--ctc-steps", type=int, default=400, help="0: no connector leg")
    one.add_argument("--recipe", type=Path, default=RECIPE, help="the new data's synth recipe")
    one.add_argument(
        "--lm-steps", type=int, default=150, help="0: no LM leg (the new connector, the old LoRA)"
    )
    one.add_argument("--ctc-minutes", type=float, help="end the connector leg after this long")
    one.add_argument("--ctc-lr", type=float, help="the connector leg's peak lr (default: its YAML)")
    one.add_argument("--encoder-lr", type=float, help="its encoder layers' lr (default: YAML)")
    one.add_argument("--lm-minutes", type=float, help="end the LM leg after this long")
    one.add_argument(
        "--reread", nargs="*", default=[], help="earlier manifests the connector leg reads again"
    )
    one.add_argument("--eval-limit", type=int, default=120, help="held-out items per set")
    one.add_argument("--long-limit", type=int, help="long recordings (default: all 12)")
    one.add_argument("--ship", action="store_true")
    again = sub.add_parser("replay", help="run an adapter's recorded lineage again")
    again.add_argument("adapter", nargs="?", help="default: the newest v2 adapter")
    for p in (one, again):
        p.add_argument("--workdir", type=Path, default=Path("."))
        p.add_argument("--smoke", action="store_true", help="a few samples and steps per leg")
    args = parser.parse_args()
    session(args) if args.command == "session" else replay(args)


if __name__ == "__main__":
    main()
