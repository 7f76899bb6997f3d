"""The examples in examples/ run as documented."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)


def test_credit_assignment_example() -> None:
    done = _run(str(EXAMPLES / "credit_assignment.py"))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line[:10].strip(): [float(x) for x in line[10:].split()] for line in done.stdout.splitlines()[1:6]}
    assert rows["GRPO A_t"] == [1.0] * 5
    assert rows["CEPO w_t"][1] == 1.0 < rows["RLSD w_t"][1]  # the fluent token: r- supports it as much as r+
    assert all(0.75 <= a <= 1.25 for a in rows["CEPO A_t"] + rows["RLSD A_t"])


def test_trl_example_trains(smoke_model: Path, tmp_path: Path) -> None:
    (tmp_path / "base-model").symlink_to(smoke_model)  # the example reuses a prepared tiny model (no warm start)
    done = _run(str(EXAMPLES / "train_trl_tiny.py"), str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "done: 2 steps" in done.stdout
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
