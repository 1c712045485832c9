"""The ONNX Runtime GenAI side of ``engine: onnxruntime-genai``: static batches stepped by id,
in a child process of the replica (``ProcessTable``) or in the caller's (``BatchTable``).

ONNX Runtime GenAI 0.18's Python bindings hold the GIL for the whole of ``append_tokens``
(prefill) and most of ``generate_next_token``: a Python thread beside them ran at 0.2% of its
speed during a prefill and 9% during decoding (2-core box). In a replica that stalls the event
loop that admits requests and streams chunks, so 16 concurrent HTTP requests reached the engine
in clusters ~300 ms apart (one per prefill) and were decoded 3.2 rows per step. The replica
therefore runs the runtime in a child process (``python -m distill.serve.engines.ort_table``)
and talks to it over two pipes, one round trip per engine cycle::

    table = ProcessTable(Path("runs/smollm2/student-int4-ort"), threads=2, spin=False)
    out = table.cycle(opens=[(7, {"prompts": [[1, 2, 3]], "max_new_tokens": 8})], closes=[],
                      step=[7])          # {7: Scored(...)}; None once batch 7 has ended
    table.shutdown()

The child also does the per-step arithmetic (log-probs, entropies, ``top_logprobs``) on the
``[batch, vocab]`` logits, so none of it runs under the replica's GIL either. After answering a
cycle it decodes the next step of every running batch (``BatchTable.step_ahead``) while the
replica delivers the last one, so the runtime does not wait for the replica (faster decode,
single and concurrent: docs/serving.md).
A step decoded for a batch the replica then closes is wasted (one step per such batch).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from distill.runtime.ort_genai import OrtGenAIModel


@dataclass
class Scored:
    """One decoding step of a batch, scored: entry ``i`` belongs to row ``i``."""

    token_ids: np.ndarray  # -1 for a row that had already finished
    logprobs: np.ndarray  # raw (temperature 1) log-prob of each token
    entropies: np.ndarray  # normalized entropy of each row's distribution, in [0, 1]
    top_ids: np.ndarray | None = None  # [B, k] most likely tokens, best first
    top_logprobs: np.ndarray | None = None


def score(step: Any, top_k: int) -> Scored:
    """Entropies and the ``top_k`` alternatives of ``step.logits`` (one exp over the vocab)."""
    y = np.asarray(step.logits, dtype=np.float32)
    y = y - y.max(-1, keepdims=True)
    e = np.exp(y)
    z = e.sum(-1)
    log_z = np.log(z)
    ent = (log_z - np.einsum("ij,ij->i", e, y) / z) / math.log(y.shape[-1])
    out = Scored(np.asarray(step.token_ids), np.asarray(step.logprobs), np.clip(ent, 0.0, 1.0))
    if top_k:
        k = min(top_k, y.shape[-1])
        part = np.argpartition(-y, k - 1, axis=-1)[:, :k]
        vals = np.take_along_axis(y, part, -1)
        order = np.argsort(-vals, axis=-1)
        out.top_ids = np.take_along_axis(part, order, -1)
        out.top_logprobs = np.take_along_axis(vals, order, -1) - log_z[:, None]
    return out


class BatchTable:
    """Open static batches of one runtime (``distill.runtime.OrtGenAIModel`` or alike)."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.batches: dict[int, tuple[Any, int]] = {}
        self.ahead: dict[int, Scored | str | None] = {}  # steps decoded before they were asked

    def info(self) -> dict[str, Any]:
        rt = self.runtime
        return {
            "eos_ids": sorted(rt.eos_ids),
            "pad_id": int(rt.pad_id),
            "context_length": int(rt.context_length),
        }

    def cycle(
        self, opens: list[tuple[int, dict]], closes: list[int], step: list[int]
    ) -> dict[int, Scored | str | None]:
        """Close ``closes``, open ``opens`` (id, ``generate_steps`` kwargs + ``top_logprobs``), then
        decode one step of each batch in ``step``: its :class:`Scored`, ``None`` once it has
        ended, or the error that ended it (a string)."""
        for bid in closes:
            self.ahead.pop(bid, None)
            gen = self.batches.pop(bid, (None, 0))[0]
            if gen is not None:
                gen.close()
        for bid, kw in opens:
            kw = dict(kw)
            top_k = int(kw.pop("top_logprobs", 0))
            # a generator starts on its first step: bad prompts fail there, as that batch's error
            self.batches[bid] = (self.runtime.generate_steps(**kw, return_logits=True), top_k)
        return {bid: self.ahead.pop(bid) if bid in self.ahead else self._step(bid) for bid in step}

    def step_ahead(self, step: list[int]) -> None:
        """Decode the next step of each batch in ``step`` (the caller passes those still
        running) before the next :meth:`cycle` asks for it, which then returns it at once. The
        child process does this while the replica delivers the previous step."""
        for bid in step:
            if bid in self.batches and bid not in self.ahead:
                self.ahead[bid] = self._step(bid)

    def _step(self, bid: int) -> Scored | str | None:
        gen, top_k = self.batches[bid]
        try:
            s = next(gen, None)
            return None if s is None else score(s, top_k)
        except Exception as e:  # this batch ends; the others go on
            return f"{type(e).__name__}: {e}"

    def shutdown(self) -> None:
        self.cycle([], list(self.batches), [])


class ProcessTable:
    """A :class:`BatchTable` over an ``OrtGenAIModel`` in a child process."""

    def __init__(
        self,
        path: Path,
        threads: int | None,
        spin: bool,
        lookahead: bool = True,
        timeout_s: float = 300,
    ) -> None:
        to_child, child_in = os.pipe()
        child_out, from_child = os.pipe()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        cmd = [sys.executable, "-m", "distill.serve.engines.ort_table", str(to_child)]
        cmd += [str(from_child), str(path), str(threads or 0), "1" if spin else "0"]
        cmd += ["1" if lookahead else "0"]
        self.proc = subprocess.Popen(cmd, pass_fds=(to_child, from_child), env=env)
        os.close(to_child)
        os.close(from_child)
        self._tx = Connection(child_in, readable=False)
        self._rx = Connection(child_out, writable=False)
        self._meta = self._reply(timeout_s)

    def info(self) -> dict[str, Any]:
        return self._meta

    def cycle(
        self, opens: list[tuple[int, dict]], closes: list[int], step: list[int]
    ) -> dict[int, Scored | str | None]:
        try:
            self._tx.send((opens, closes, step))
        except OSError:  # a broken pipe: the child is gone
            self._exited()
            raise
        return self._reply(None)

    def _exited(self) -> None:
        """Raise if the child has exited (waiting a moment for a dying one)."""
        try:
            code = self.proc.wait(1.0)
        except subprocess.TimeoutExpired:
            return
        raise RuntimeError(f"the ONNX Runtime worker process exited (code {code})")

    def _reply(self, timeout_s: float | None) -> Any:
        waited = 0.0
        while not self._rx.poll(1.0):
            waited += 1.0
            if self.proc.poll() is not None:
                self._exited()
            if timeout_s is not None and waited >= timeout_s:
                raise RuntimeError(
                    f"the ONNX Runtime worker process gave no answer in {waited:g} s"
                )
        try:
            kind, payload = self._rx.recv()
        except EOFError:
            self._exited()
            raise
        if kind == "error":
            raise RuntimeError(f"ONNX Runtime worker process: {payload}")
        return payload

    def shutdown(self) -> None:
        """Stop the child (its batches go with it)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._tx.close()
        self._rx.close()


def _child(
    rx: Connection, tx: Connection, path: str, threads: int, spin: bool, lookahead: bool
) -> None:
    try:
        table = BatchTable(OrtGenAIModel.load(Path(path), threads=threads or None, spin=spin))
    except Exception as e:  # the replica's constructor fails with this message
        tx.send(("error", f"loading {path}: {type(e).__name__}: {e}"))
        return
    tx.send(("ok", table.info()))
    while True:
        try:
            opens, closes, step = rx.recv()
        except (EOFError, OSError):  # the replica is gone
            return
        out = table.cycle(opens, closes, step)
        try:
            tx.send(("ok", out))
        except (BrokenPipeError, OSError):
            return
        if lookahead:  # the next step of every running batch, while the replica delivers this one
            table.step_ahead([bid for bid, res in out.items() if isinstance(res, Scored)])


if __name__ == "__main__":
    # run the module's own copy, so that results pickle as distill...ort_table.Scored
    from distill.serve.engines import ort_table

    rfd, wfd, model_path, n_threads, spinning, ahead = sys.argv[1:7]
    ort_table._child(
        Connection(int(rfd), writable=False),
        Connection(int(wfd), readable=False),
        model_path,
        int(n_threads),
        spinning == "1",
        ahead == "1",
    )
