"""cepo plot: training curves from a real TRL run directory and from verl's own file and console loggers."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from cepo.analysis.plots import load_run
from cepo.cli import main


@pytest.fixture(scope="module")
def trl_run(smoke_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2-step CEPO run of the fixture model (``cepo smoke``'s code path)."""
    from cepo.smoke import run_smoke

    run_dir = tmp_path_factory.mktemp("plot") / "cepo-run"
    run_smoke(output_dir=run_dir, steps=2, echo=False, model_dir=smoke_model)
    return run_dir


def _verl_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Logs written by verl 0.9.1's own FileLogger and LocalLogger (console), as a verl trainer would."""
    from verl.utils.logger import LocalLogger
    from verl.utils.tracking import FileLogger

    file_log = tmp_path / "verl-file" / "cepo_geo3k.jsonl"
    file_log.parent.mkdir()
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(file_log))
    files, console = FileLogger("cepo", "cepo_geo3k"), LocalLogger(print_to_console=True)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for step in (1, 2, 3):
            metrics = {"critic/score/mean": 0.1 * step, "cepo/lambda": 0.5 - 0.02 * (step - 1),
                       "cepo/delta_pos_frac": 0.3 + 0.01 * step, "cepo/delta_neg_frac": 0.6 - 0.01 * step,
                       "cepo/clip_rate": 0.4, "cepo/teacher_time_s": 1.5,
                       "val-core/geo3k/acc/mean@1": 0.2 + 0.05 * step}
            files.log(metrics, step)
            console.log(metrics, step)
    files.finish()
    console_log = tmp_path / "train.log"
    # Ray prefixes worker output; other lines in the log are ignored
    console_log.write_text("starting\n" + "".join(f"(TaskRunner pid=42) {line}\n"
                                                 for line in printed.getvalue().splitlines()))
    return file_log, console_log


def test_plot_trl_run_and_verl_loggers_overlaid(trl_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    rows = [json.loads(line) for line in (trl_run / "metrics.jsonl").read_text().splitlines()]
    run = load_run(trl_run)
    assert run.source == "trl" and run.steps == [r["step"] for r in rows] == [1, 2]
    assert run.series("reward")[1] == [r["reward"] for r in rows]
    assert run.series("cepo/clip_rate")[1] == [r["cepo/clip_rate"] for r in rows]

    file_log, console_log = _verl_runs(tmp_path, monkeypatch)
    verl_file, verl_console = load_run(file_log.parent), load_run(console_log)
    assert verl_file.source == "verl-file" and verl_console.source == "verl-console"
    for verl in (verl_file, verl_console):
        assert verl.steps == [1, 2, 3]
        assert verl.series("critic/score/mean")[1] == pytest.approx([0.1, 0.2, 0.3])
        assert verl.resolve(("accuracy", "re:^val-core/.*/acc/mean@\\d+$")) == "val-core/geo3k/acc/mean@1"

    out = tmp_path / "curves.png"
    assert main(["plot", str(trl_run), str(file_log.parent), str(console_log), "--labels", "trl,verl,verl-console",
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "panels: reward, accuracy, lambda, delta, clip, teacher" in printed
    assert "trl: 2 steps" in printed and "verl-console: 3 steps" in printed
    image = Image.open(out)
    assert image.format == "PNG" and image.size[0] > 1000


def test_plot_bad_input_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def error() -> str:
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("cepo plot: error: ") and "Traceback" not in err, err
        return lines[0]

    empty = tmp_path / "run-without-metrics"
    (empty / "checkpoint-1").mkdir(parents=True)
    assert main(["plot", str(empty), "--output", str(tmp_path / "x.png")]) == 2
    assert "has no metrics" in error() and not (tmp_path / "x.png").exists()
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "does not exist" in error()
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.3}) + "\n")
    assert main(["plot", str(other), "--output", str(tmp_path / "y.png")]) == 2
    assert "none of the runs logged" in error()
