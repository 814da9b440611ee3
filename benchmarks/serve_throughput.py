"""Serving throughput: aero's own server vs vLLM (CPU build) serving the same model.

    python benchmarks/serve_throughput.py [--model aero-mini] [--levels 1 8 32] [--requests R]
                                          [--vllm-python .vllm-venv/bin/python] [--work DIR]

Both servers answer OpenAI's POST /v1/audio/transcriptions for the same checkpoint directory
(aero-mini: saved once with its LoRA merged, `aero.vllm.launch.checkpoint_dir`), one server at a
time on this machine, float32 on both (aero's engine's arithmetic; the two then give the same
greedy text unless a reply loops). Audio: 32 different real-length clips made offline with
espeak-ng (2 to 6 spoken sentences each, 16 kHz). For each level N, N requests (the first N
clips) go out at once, after one warm-up request (`--requests R`: R requests, at most N in
flight); per level:
requests/s and audio seconds per second (both over the level's wall time), p50/p95 request
latency, and the server's peak RSS (the whole process tree, sampled every 0.1 s).
Reply budget: aero's default for transcripts (32 + 8 tokens per audio second), sent to vLLM as
`max_completion_tokens` (vLLM's own default is the whole context). aero's repetition guard
stops a looping reply early; vLLM has none, so the table also counts the texts that equal
aero's.
  aero : `aero serve` (one worker thread, batches of up to --aero-batch requests, default 8);
  vllm : `aero serve --engine vllm`, i.e. vLLM's OpenAI server with the aero.vllm plugin,
         --enforce-eager (no torch.compile warm-up), a fixed 2 GiB KV cache.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from transcribe_speed import SENTENCES  # the same sentences (benchmarks/ is on sys.path)

ENGINES = ("aero", "vllm")


def make_clips(work: Path, n: int = 32) -> list[dict]:
    """n clips of 2-6 espeak-ng sentences with 0.4 s pauses, seeded, 16 kHz float wav."""
    import numpy as np
    import soundfile as sf

    from aero.audio import SAMPLE_RATE, load_audio

    work.mkdir(parents=True, exist_ok=True)
    spoken = []
    for i, text in enumerate(SENTENCES):
        raw = work / f"sentence{i}.wav"
        if not raw.exists():
            subprocess.run(["espeak-ng", "-s", "160", "-w", str(raw), text], check=True)
        spoken.append(load_audio(raw))
    rng = random.Random(0)
    pause = np.zeros(int(0.4 * SAMPLE_RATE), np.float32)
    clips = []
    for k in range(n):
        picks = rng.sample(range(len(SENTENCES)), rng.randint(2, 6))
        audio = np.concatenate([x for i in picks for x in (spoken[i], pause)])
        path = work / f"clip{k}.wav"
        sf.write(path, audio, SAMPLE_RATE, "FLOAT")
        clips.append({"path": str(path), "seconds": len(audio) / SAMPLE_RATE})
    return clips


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(engine: str, model_dir: str, port: int, args) -> subprocess.Popen:
    command = [sys.executable, "-m", "aero.cli", "serve", "--model", model_dir]
    command += ["--port", str(port)]
    if engine == "aero":
        command += ["--batch-size", str(args.aero_batch)]
    else:
        command += ["--engine", "vllm", "--vllm-python", args.vllm_python]
        command += ["--dtype", "float32", "--enforce-eager", "--max-model-len", "8192"]
        command += ["--kv-cache-memory-bytes", str(2 * 2**30), "--disable-log-stats"]
    log = open(Path(args.work) / f"{engine}-server.log", "w")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(port: int, server: subprocess.Popen, timeout: float = 900) -> float:
    import httpx

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if server.poll() is not None:
            raise RuntimeError(f"server exited ({server.returncode}); see its log")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError("server did not start")


class PeakRss:
    """The largest summed RSS of a process and its descendants, sampled in a thread."""

    def __init__(self, pid: int):
        import psutil

        self.root, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.root] + self.root.children(recursive=True)
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            self._stop.wait(0.1)

    def take(self) -> int:
        peak, self.peak = self.peak, 0
        return peak

    def stop(self) -> None:
        self._stop.set()


async def transcribe(client, url: str, clip: dict, engine: str, model: str) -> tuple[float, str]:
    budget = 32 + int(8 * clip["seconds"] + 0.999)  # aero's engine's default for transcripts
    data = {"model": model, "temperature": "0"}  # vLLM answers only its served name
    if engine == "vllm":
        data["max_completion_tokens"] = str(budget)
    with open(clip["path"], "rb") as f:
        files = {"file": (Path(clip["path"]).name, f.read(), "audio/wav")}
    start = time.perf_counter()
    response = await client.post(url, data=data, files=files, timeout=3600)
    response.raise_for_status()
    return time.perf_counter() - start, response.json()["text"]


async def run_level(
    url: str, clips: list[dict], n: int, requests: int | None, engine: str, model: str
) -> dict:
    import httpx

    requests = requests or n
    jobs = [clips[k % len(clips)] for k in range(requests)]
    latencies, texts = [0.0] * requests, [""] * requests
    gate = asyncio.Semaphore(n)
    async with httpx.AsyncClient() as client:

        async def one(k: int) -> None:
            async with gate:
                latencies[k], texts[k] = await transcribe(client, url, jobs[k], engine, model)

        start = time.perf_counter()
        await asyncio.gather(*(one(k) for k in range(requests)))
        wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return {
        "n": n,
        "wall_s": wall,
        "req_per_s": requests / wall,
        "audio_s_per_s": sum(j["seconds"] for j in jobs) / wall,
        "p50_s": statistics.median(ordered),
        "p95_s": ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))],
        "texts": texts,
    }


def bench_engine(engine: str, model_dir: str, clips: list[dict], args) -> dict:
    port = free_port()
    server = start_server(engine, model_dir, port, args)
    try:
        startup = wait_ready(port, server)
        url = f"http://127.0.0.1:{port}/v1/audio/transcriptions"
        asyncio.run(run_level(url, clips, 1, 1, engine, model_dir))  # warm-up
        rss = PeakRss(server.pid)
        levels = []
        for n in args.levels:
            rss.take()
            level = asyncio.run(run_level(url, clips, n, args.requests, engine, model_dir))
            level["peak_rss_mb"] = rss.take() / 2**20
            level["load_avg"] = os.getloadavg()[0]  # other work on the machine, for the record
            levels.append(level)
            print(f"{engine} N={n}: {level['req_per_s']:.2f} req/s", flush=True)
        rss.stop()
        result = {"engine": engine, "startup_s": startup, "levels": levels}
        (Path(args.work) / f"{engine}.json").write_text(json.dumps(result, indent=2))
        return result
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def table(results: list[dict]) -> str:
    reference = {lv["n"]: lv["texts"] for lv in results[0]["levels"]}
    lines = [
        "| engine | N | requests/s | audio s/s | p50 latency s | p95 latency s | peak RSS MB "
        "| texts = aero's | load avg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for lv in result["levels"]:
            same = sum(a == b for a, b in zip(lv["texts"], reference[lv["n"]]))
            lines.append(
                f"| {result['engine']} | {lv['n']} | {lv['req_per_s']:.2f} | "
                f"{lv['audio_s_per_s']:.1f} | {lv['p50_s']:.2f} | {lv['p95_s']:.2f} | "
                f"{lv['peak_rss_mb']:.0f} | {same}/{len(lv['texts'])} | {lv['load_avg']:.1f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="aero-mini")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--aero-batch", type=int, default=8)
    parser.add_argument("--vllm-python", default=str(Path(".vllm-venv/bin/python")))
    parser.add_argument("--work", default="/tmp/aero-serve-bench")
    args = parser.parse_args()

    from aero.vllm.launch import checkpoint_dir

    clips = make_clips(Path(args.work))
    model_dir = checkpoint_dir(args.model)
    seconds = sum(c["seconds"] for c in clips)
    print(f"{len(clips)} clips, {seconds:.0f} s of audio; model {args.model} at {model_dir}")
    for engine in args.engines:
        bench_engine(engine, model_dir, clips, args)
    # Every engine measured into this work folder so far (one run can redo one engine).
    saved = [Path(args.work) / f"{e}.json" for e in ENGINES]
    results = [json.loads(p.read_text()) for p in saved if p.is_file()]
    for result in results:
        print(f"{result['engine']}: ready {result['startup_s']:.0f} s after start")
    print(table(results))


if __name__ == "__main__":
    main()
