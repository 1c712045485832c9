"""The run console: third-party output goes to the log, distill's lines and bars to the
terminal; plain progress lines off a terminal; progress polled from what workers write."""

import io
import logging
import os
import sys
import warnings

import distill.console as console_mod
from distill.console import Console, Progress, polling, quiet_output


def test_quiet_output_sends_everything_but_distill_to_the_log(tmp_path, capfd):
    log = tmp_path / "logs" / "distill.log"
    with quiet_output(log) as console:
        os.write(1, b"a C++ line on stdout\n")
        os.write(2, b"a C++ line on stderr\n")
        print("a library's print")
        print("a library's warning print", file=sys.stderr)
        warnings.warn("a library warning", UserWarning, stacklevel=1)
        logging.getLogger("gptqmodel").warning("a library log record")
        console.say("[distill] stage x: running")
    out, err = capfd.readouterr()
    assert out == "[distill] stage x: running\n" and err == ""
    text = log.read_text()
    for line in ("C++ line on stdout", "C++ line on stderr", "library's print", "warning print"):
        assert line in text
    with quiet_output(log, verbose=True) as console:
        console.say("[distill] verbose")
        print("shown")
    out, _ = capfd.readouterr()
    assert "[distill] verbose" in out and "shown" in out


def test_plain_progress_lines_off_a_terminal(monkeypatch):
    monkeypatch.setattr(console_mod, "PLAIN_EVERY_S", 0.0)
    stream = io.StringIO()
    with Progress(stream).task("distill", total=4, unit="steps") as bar:
        bar.update(1, loss=2.5)
        bar.advance(1)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[distill]   distill: 1/4 steps, loss 2.5")
    assert "ETA" in lines[0] and lines[-1].startswith("[distill]   distill: 2/4 steps")
    with Progress(None).task("nothing", total=1) as bar:  # no console: draws nothing
        bar.advance()


def test_polling_reads_until_the_work_ends_and_once_after():
    stream = io.StringIO()
    seen = iter([None, (3, {"tok_s": 10.0}), (5, {"tok_s": 12.0})] + [(5, {})] * 100)
    with (
        Progress(stream).task("labels", total=5, unit="rows") as bar,
        polling(bar, lambda: next(seen), every_s=0.01),
    ):
        import time

        time.sleep(0.1)
    assert bar.completed == 5
    assert Console(None).progress.stream is None


def test_train_progress_reads_the_workers_last_step_from_mlflow(tmp_path):
    """What the distill / sft bars show: rank 0's latest step, loss and tokens/s in MLflow."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from distill.train.launch import progress_reader

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("t")).info.run_id
    read = progress_reader({"tracking_uri": uri, "run_id": run_id})
    assert read() is None and progress_reader(None)() is None  # before the first step
    for step, loss in ((1, 3.0), (2, 2.5)):
        metrics = [
            Metric("train/loss", loss, step, step),
            Metric("tokens_per_s", 100.0, step, step),
        ]
        client.log_batch(run_id, metrics=metrics)
    assert read() == (2.0, {"loss": 2.5, "tok_s": 100.0})
