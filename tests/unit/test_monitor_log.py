"""The request log (rotation, retention, bad files) and the drift windows, without a server."""

import numpy as np
import pytest

from distill.config.base import DistillError
from distill.monitor.config import RequestLogConfig
from distill.monitor.drift import drift_windows
from distill.monitor.log import RequestLog, log_files, read_request_log


def _info(conf, fallback=False):
    return {
        "answered_by": "teacher" if fallback else "student",
        "confidence": conf,
        "fallback": fallback,
        "reason": "low_confidence" if fallback else "confident",
        "scoring": "mean_logprob",
        "threshold": 0.5,
        "latency_ms": {"student": 10.0, **({"teacher": 20.0} if fallback else {})},
    }


USAGE = {"prompt_tokens": 5, "completion_tokens": 3}


def _log(tmp_path, **kw):
    cfg = RequestLogConfig(path=tmp_path / "log", flush_interval_s=3600, **kw)
    return RequestLog(cfg)


def test_rotation_keeps_every_record_in_one_complete_file(tmp_path):
    log = _log(tmp_path, rows_per_file=4, max_files=100)
    for i in range(10):
        log.record("cascade", _info(i / 10, fallback=i % 3 == 0), USAGE, 12.0, {"prompt": "p"})
    assert [len(read_request_log(f)) for f in log_files(log.dir)] == [4, 4]  # 2 still buffered
    log.close()
    t = read_request_log(log.dir)
    assert t.column("confidence").to_pylist() == [i / 10 for i in range(10)]
    assert t.column("fallback").to_pylist() == [i % 3 == 0 for i in range(10)]
    assert t.column("teacher_ms").to_pylist()[:2] == [20.0, None]
    assert set(t.column("prompt").to_pylist()) == {None}  # prompts only when enabled
    assert not list(log.dir.glob(".*"))  # no temp files left


def test_retention_deletes_oldest_whole_files_and_prompts_when_enabled(tmp_path):
    log = _log(tmp_path, rows_per_file=2, max_files=3, include_prompts=True)
    for i in range(11):
        log.record("student", _info(float(i)), USAGE, 1.0, {"prompt": f"p{i}"})
    log.close()
    assert len(log_files(log.dir)) == 3
    t = read_request_log(log.dir)
    # bounded: the newest complete files survive whole (1 + 2 + 2 records)
    assert t.column("prompt").to_pylist() == ["p6", "p7", "p8", "p9", "p10"]
    chat = _log(tmp_path / "chat", include_prompts=True)
    chat.record(
        "cascade", _info(0.9), USAGE, 1.0, {"messages": [{"role": "user", "content": "hi"}]}
    )
    chat.close()
    assert "hi" in read_request_log(chat.dir).column("prompt")[0].as_py()


def test_bad_logs_are_one_clear_error(tmp_path):
    with pytest.raises(DistillError, match="does not exist"):
        read_request_log(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DistillError, match="no request log files"):
        read_request_log(tmp_path / "empty")
    log = _log(tmp_path, rows_per_file=1)
    log.record("cascade", _info(0.7), USAGE, 1.0)
    log.record("cascade", _info(0.8), USAGE, 1.0)
    log.close()
    (log.dir / ".requests-in-progress.parquet.tmp").write_bytes(b"PAR1")  # a writer's temp file
    assert len(read_request_log(log.dir)) == 2  # temp files are not complete files: ignored
    f = log_files(log.dir)[0]
    f.write_bytes(f.read_bytes()[:-20])  # truncated: half-written
    with pytest.raises(DistillError, match=f"{f.name} is corrupt or half-written"):
        read_request_log(log.dir)


def test_drift_windows_flag_a_shift_not_noise():
    rng = np.random.default_rng(0)
    ref = rng.beta(6, 3, 64)
    same = rng.beta(6, 3, 400)
    assert not any(w.drift for w in drift_windows(same, ref, window=100, step=25))
    shifted = np.concatenate([same[:200], rng.beta(3, 5, 200)])
    wins = drift_windows(shifted, ref, window=100, step=25)
    first = next(w for w in wins if w.drift)
    assert 200 < first.end <= 300 and not any(w.drift for w in wins if w.end <= 200)
    assert drift_windows(same[:50], ref, window=100) == []  # too few requests: nothing tested
