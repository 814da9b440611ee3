"""`profile_steps: N`: torch.profiler over N training steps of a run (after its first three),
its per-operator table written to OUTPUT_DIR/profile.txt, so a run on a machine one holds for
minutes (a lent GPU) says where its step time went. The loops mark their phases (`aero.data`,
`aero.forward`, `aero.loss`, `aero.backward`, `aero.optimizer`, `aero.record`), which the table
lists beside the operators."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function, schedule

WAIT_STEPS = 2  # the first steps (allocator, autotuning, the data loader's start) are not typical

__all__ = ["StepProfiler", "record_function"]


class StepProfiler:
    """`with StepProfiler(out, steps):` around the loop, `.step()` after each step; nothing is
    recorded when `steps` is 0. The table is written once the profiled steps are done, or when
    the loop ends before (a clock-stopped run)."""

    def __init__(self, out: Path, steps: int):
        self.out, self.steps = Path(out), steps
        self.cuda = torch.cuda.is_available()
        self.profiler = None
        if steps:
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
            self.profiler = profile(
                activities=activities,
                schedule=schedule(wait=WAIT_STEPS, warmup=1, active=steps, repeat=1),
                on_trace_ready=self._write,
            )

    def _write(self, prof) -> None:
        sort = "self_cuda_time_total" if self.cuda else "self_cpu_time_total"
        averages = prof.key_averages()
        header = f"{self.steps} steps profiled after {WAIT_STEPS + 1}; sorted by {sort}\n\n"
        phases = averages.table(sort_by="cpu_time_total", row_limit=12)
        (self.out / "profile.txt").write_text(
            header + averages.table(sort_by=sort, row_limit=40) + "\n\nby total time:\n" + phases
        )

    def __enter__(self) -> StepProfiler:
        if self.profiler is not None:
            self.profiler.__enter__()
        return self

    def step(self) -> None:
        if self.profiler is not None:
            self.profiler.step()

    def __exit__(self, *exc) -> None:
        if self.profiler is not None:
            self.profiler.__exit__(*exc)
