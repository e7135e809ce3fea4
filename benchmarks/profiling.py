"""Where a served request's CPU goes: py-spy samples of each server process, summarized by cost category.

py-spy (``pip install py-spy``) samples the Python stacks of a running process from outside. Its own
idle detection misses threads blocked in a lock or a pipe read here (LitServe's ``asyncio.to_thread``
readers would count as seven busy threads), so a sample whose innermost frame is a known blocking call is
counted as *waiting* instead; every other sample is *active* and attributed to the innermost frame that
matches a category below (a partition: every sample counts once). Active samples over (rate x duration)
approximate the cores of Python-visible work; C work under a Python frame (torch kernels, pickling,
socket syscalls) is attributed to that frame, and pure-C time (uvloop's loop) shows as the event loop.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# A sample whose innermost frame is one of these is a thread waiting, not working.
WAITING: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("waiting: pipe/socket read (IPC reply or next message)", ("Connection._recv (",)),
    (
        "waiting: lock, condition or queue",
        ("Condition.wait (", "Event.wait (", "_wait_for_tstate_lock", "Queue.get ("),
    ),
    ("waiting: idle thread pool, accept, select, sleep", ("_worker (", "accept (", "select (", "sleep (")),
)

# Checked innermost frame first; the first rule that matches a frame names the sample's category.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("torch forward (model)", ("torch/nn/modules/", "torch/nn/functional", "models/")),
    ("forward hooks (monitoring)", ("service/monitoring/",)),
    (
        "IPC: multiprocessing queues, pipes, pickle",
        (
            "multiprocessing/queues",
            "multiprocessing/connection",
            "multiprocessing/managers",
            "multiprocessing/reduction",
            "process_transport.py",
            "service/messages.py",
            "service/worker/inbox.py",
            "service/http/worker_client.py",
        ),
    ),
    ("response encoding (encode_predictions, json)", ("json/", "runner.py:encode", "encode_predictions")),
    ("request validation (pydantic/numpy)", ("pydantic", "schemas.py", "service/http/codec.py")),
    ("prometheus_client", ("prometheus_client/",)),
    ("HTTP parsing/framing (uvicorn, h11/httptools)", ("uvicorn/protocols", "h11/", "httptools")),
    ("ASGI framework (starlette/fastapi, middleware)", ("starlette/", "fastapi/", "service/http/")),
    ("LitServe + hookserve glue", ("litserve/", "service/")),
    ("asyncio event loop, thread-pool hops", ("asyncio/", "concurrent/", "anyio/")),
)
# Helpers every layer uses: a sample is put here only when no frame matched a category above (so a
# Condition.notify inside a multiprocessing Queue.put counts as IPC, not as "threads").
GENERIC: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("threads, locks, selectors", ("threading.py", "selectors.py")),
)


def py_spy_available() -> bool:
    return shutil.which("py-spy") is not None


def start_recording(
    pid: int, duration_s: float, output: Path, rate_hz: int = 100, gil_only: bool = False
) -> subprocess.Popen:
    """Start ``py-spy record`` on ``pid`` in raw (collapsed-stack) format; wait on the returned process.

    Blocking mode (the default): py-spy pauses the target for each sample, which gives whole stacks; at
    100 Hz the pauses cost the target well under 1 %. ``gil_only`` keeps only samples of the thread that
    holds the GIL: where Python CPU goes (torch kernels release the GIL, so they drop out).
    """
    command = [
        "py-spy",
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(int(duration_s), 1)),
        "--rate",
        str(rate_hz),
        "--format",
        "raw",
        "--output",
        str(output),
    ]
    if gil_only:
        command.append("--gil")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@dataclass(frozen=True)
class ProfileSummary:
    """One process's samples: cores of active Python-visible work, shares by category (waiting included),
    and the hottest innermost frames of active samples."""

    role: str
    pid: int
    samples: int
    busy_fraction: float
    categories: list[tuple[str, float]]
    top_leaves: list[tuple[str, float]]

    def to_dict(self) -> dict:
        return {
            "role": self.role,
            "pid": self.pid,
            "samples": self.samples,
            "busy_fraction": round(self.busy_fraction, 3),
            "categories": [{"category": c, "share": round(s, 4)} for c, s in self.categories],
            "top_leaves": [{"frame": f, "share": round(s, 4)} for f, s in self.top_leaves],
        }


def _category(frames: list[str]) -> str:
    for name, needles in WAITING:
        if any(needle in frames[-1] for needle in needles):
            return name
    for rules in (CATEGORIES, GENERIC):
        for frame in reversed(frames):
            for name, needles in rules:
                if any(needle in frame for needle in needles):
                    return name
    return "other"


def parse_collapsed(text: str) -> Counter:
    """``frame;frame;...;leaf count`` lines into a Counter of stack tuples."""
    stacks: Counter = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def summarize(
    role: str, pid: int, raw: Path, rate_hz: int, duration_s: float, top: int = 12
) -> ProfileSummary:
    stacks = parse_collapsed(raw.read_text(errors="replace")) if raw.exists() else Counter()
    total = sum(stacks.values())
    by_category: Counter = Counter()
    by_leaf: Counter = Counter()
    for frames, count in stacks.items():
        category = _category(list(frames))
        by_category[category] += count
        if not category.startswith("waiting"):
            by_leaf[frames[-1]] += count
    active = sum(by_leaf.values())
    share = (lambda n: n / total) if total else (lambda n: 0.0)
    return ProfileSummary(
        role=role,
        pid=pid,
        samples=total,
        busy_fraction=active / (rate_hz * duration_s) if duration_s > 0 else 0.0,
        categories=[(name, share(n)) for name, n in by_category.most_common()],
        top_leaves=[(frame, share(n)) for frame, n in by_leaf.most_common(top)],
    )
