"""The llama.cpp arm of ``benchmarks/serve_load.py``: ``llama-server`` (continuous batching,
``--parallel 16``, OpenAI API on 127.0.0.1) on the same student as GGUF Q4_K_M, its waves
alternating with distill's served int4 student, and held-out perplexity of both artifacts::

    bash benchmarks/build_llamacpp.sh        # llama-server, llama-quantize, llama-perplexity
    flock /work/bench.lock .venv/bin/python benchmarks/serve_load.py \\
        --serve-config deploy/serve-int4-cpu.yaml --student runs/smollm2/student-int4-cpu \\
        --student-engine onnxruntime-genai --student-placement router \\
        --llamacpp-model runs/smollm2/student --phases student --concurrency 1,16 --rounds 3

``--llamacpp-model`` is a ``.gguf`` file, or the fp student's HF dir, exported here to Q4_K_M
(``distill export --format gguf --quant q4_k_m``). Perplexity, both on the demo's held-out rows
(the first 32 x 256 tokens, as evaluate reads them): llama.cpp's ``llama-perplexity`` over the
rows decoded to text with ``-c 256`` (one chunk per row once the text re-tokenizes to the same
ids, which is checked through the server's ``/tokenize``); it scores the second half of each
chunk, so the ORT student is scored on the same positions, and on the whole row as evaluate does.
The server runs without prompt caching (distill has none; the waves repeat their prompts).
Not a library module: ``serve_load.py`` imports it from this folder.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from serve_http import wave

ARM = "llama-server Q4_K_M"
PPL_ROWS, PPL_SEQ = 32, 256


def add_args(ap) -> None:
    ap.add_argument(
        "--llamacpp-model",
        help="GGUF file or fp HF dir (exported to Q4_K_M): adds llama-server as an arm of the "
        "student waves, and the held-out ppl of both",
    )
    ap.add_argument("--llamacpp-parallel", type=int, default=16, help="llama-server --parallel")
    ap.add_argument("--heldout", default="runs/smollm2/data/heldout.parquet")
    ap.add_argument(
        "--llamacpp-skip-ppl", action="store_true", help="tokens/s only (a rerun of the speed)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def q4_k_m(model: str, threads: int) -> Path:
    """The GGUF to serve: ``model`` itself, or its Q4_K_M export (cached beside this run)."""
    from distill.runtime.gguf_export import export_gguf

    if model.endswith(".gguf"):
        return Path(model)
    out = Path(tempfile.gettempdir()) / "distill-bench-gguf" / f"{Path(model).name}-q4_k_m.gguf"
    t0 = time.perf_counter()
    export_gguf(Path(model), out, "q4_k_m", threads=threads)
    print(f"exported {model} -> {out} ({out.stat().st_size / 1e6:.1f} MB) in "
          f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    return out


class LlamaServer:
    """``llama-server`` on a free loopback port; ``stop()`` ends the process it started."""

    def __init__(self, gguf: Path, threads: int, parallel: int, ctx_per_slot: int) -> None:
        from distill.runtime.llamacpp import find_tool

        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile("w+", prefix="llama-server-", suffix=".log")  # noqa: SIM115 (closed in stop)
        cmd = [
            str(find_tool("llama-server")), "-m", str(gguf), "--host", "127.0.0.1",
            "--port", str(self.port), "-t", str(threads), "-tb", str(threads),
            "--parallel", str(parallel), "--cont-batching", "-c", str(parallel * ctx_per_slot),
            "--no-cache-prompt", "--no-webui",
        ]  # fmt: skip
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_healthy()

    def _wait_healthy(self, timeout: float = 120) -> None:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"llama-server exited: {self.log.read()[-2000:]}")
            try:
                status, _ = self.request("GET", "/health")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError("llama-server was not healthy in time")

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            conn.request(method, path, json.dumps(body) if body else None,
                         {"content-type": "application/json"})  # fmt: skip
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, (json.loads(data) if data else {})
        finally:
            conn.close()

    def tokenize(self, text: str) -> list[int]:
        status, out = self.request("POST", "/tokenize", {"content": text, "add_special": False})
        if status != 200:
            raise RuntimeError(f"llama-server /tokenize: {status} {out}")
        return out["tokens"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# -- held-out perplexity -----------------------------------------------------------------------
def heldout(path: str):
    """The first ``PPL_ROWS`` held-out rows, ``PPL_SEQ`` tokens each (int32 array)."""
    from distill.data.packed import read_rows

    rows = read_rows(Path(path), PPL_ROWS)[:, :PPL_SEQ]
    if rows.shape != (PPL_ROWS, PPL_SEQ):
        raise SystemExit(f"{path}: need {PPL_ROWS} rows of >= {PPL_SEQ} tokens, got {rows.shape}")
    return rows


def ppl(lp) -> dict:
    """ppl over whole rows (evaluate's) and over llama-perplexity's positions (tokens
    n_ctx/2 + 1 .. n_ctx - 1 of each row) from ``[B, S-1]`` next-token log-probs."""
    half = PPL_SEQ // 2
    return {"ppl_row": math.exp(-lp.mean()), "ppl_half": math.exp(-lp[:, half:].mean())}


def ort_ppl(engine_dir: Path, rows, threads: int) -> dict:
    import numpy as np

    from distill.runtime.ort_genai import OrtGenAIModel

    m = OrtGenAIModel.load(engine_dir, threads=threads)
    return ppl(np.concatenate([m.logprobs(rows[i : i + 4]) for i in range(0, len(rows), 4)]))


def torch_ppl(model_dir: Path, rows, threads: int, gguf_file: str | None = None) -> dict:
    """An HF checkpoint's ppl, or a GGUF's through transformers (its weights dequantized to
    fp32: llama.cpp's quantized weights without its int8 activations)."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), gguf_file=gguf_file, dtype=torch.float32
    ).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(rows), 4):
            ids = torch.as_tensor(rows[i : i + 4], dtype=torch.long)
            logp = torch.log_softmax(model(input_ids=ids).logits[:, :-1].float(), -1)
            out.append(logp.gather(-1, ids[:, 1:, None])[..., 0].numpy())
    return ppl(np.concatenate(out))


def llamacpp_ppl(gguf: Path, rows, tokenizer_dir: Path, server: LlamaServer, threads: int) -> dict:
    """llama-perplexity on the rows as text, ``-c 256``: chunks = rows when the text
    re-tokenizes to the same ids (the share of equal ids is returned as ``token_match``)."""
    from distill.models.loader import load_tokenizer
    from distill.runtime.llamacpp import find_tool

    tok = load_tokenizer(tokenizer_dir)
    text = "".join(tok.decode(r.tolist(), skip_special_tokens=False) for r in rows)
    ids = server.tokenize(text)
    flat = rows.reshape(-1).tolist()
    same = sum(a == b for a, b in zip(ids, flat, strict=False))
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
        f.write(text)
        f.flush()
        cmd = [str(find_tool("llama-perplexity")), "-m", str(gguf), "-f", f.name,
               "-c", str(PPL_SEQ), "-b", str(PPL_SEQ), "--chunks", str(len(rows)),
               "-t", str(threads)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", proc.stdout + proc.stderr)
    if proc.returncode or not m:
        raise RuntimeError(f"llama-perplexity failed: {(proc.stderr or proc.stdout)[-1500:]}")
    return {
        "ppl_half": float(m.group(1)),
        "token_match": same / len(flat),
        "tokens": len(ids),
        "expected_tokens": len(flat),
    }


# -- the arm ---------------------------------------------------------------------------------------
class LlamaArm:
    """Started before the serving phases: the GGUF, the server, the ppl of both artifacts."""

    def __init__(self, args, student_dir: Path) -> None:
        self.gguf = q4_k_m(args.llamacpp_model, args.threads)
        fp_dir = Path(args.llamacpp_model) if not args.llamacpp_model.endswith(".gguf") else None
        ctx = 512  # per slot: a prompt of ~60 tokens + max_tokens, with room
        self.server = LlamaServer(self.gguf, args.threads, args.llamacpp_parallel, ctx)
        print(f"llama-server on 127.0.0.1:{self.server.port}: {' '.join(self.server.cmd[1:])}")
        self.max_tokens = args.max_tokens
        print(f"load average: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
        self.ppl: dict = {}
        if args.llamacpp_skip_ppl:
            return
        rows = heldout(args.heldout)
        t0 = time.perf_counter()
        self.ppl = {
            "ort": ort_ppl(student_dir, rows, args.threads),
            "llamacpp": llamacpp_ppl(
                self.gguf, rows, fp_dir or student_dir, self.server, args.threads
            ),
            "gguf_dequant": torch_ppl(self.gguf.parent, rows, args.threads, self.gguf.name),
        }
        if fp_dir:
            self.ppl["fp"] = torch_ppl(fp_dir, rows, args.threads)
        print(f"held-out ppl ({time.perf_counter() - t0:.0f} s): {json.dumps(self.ppl)}")

    def arm(self):
        port = self.server.port
        return ARM, lambda texts, c: wave(port, "gguf", texts, c, self.max_tokens)

    def stop(self) -> None:
        self.server.stop()


def summary(rows: list[dict], arm: LlamaArm) -> None:
    """The issue's goal against llama.cpp, as ratios measured in this run."""

    def get(name: str, c: int) -> dict | None:
        return next((r for r in rows if r["name"] == name and r["concurrency"] == c), None)

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nagainst llama.cpp (same run, alternating waves; load average now {load}):")
    for c, goal in ((16, 1.0), (1, 0.9)):
        d, ll = get("http student", c), get(ARM, c)
        if not (d and ll and ll["tok_s"]):
            continue
        wins = sum(x > y for x, y in zip(d["rounds_tok_s"], ll["rounds_tok_s"], strict=True))
        ratio = d["tok_s"] / ll["tok_s"]
        print(
            f"  c={c}: distill int4 ORT {d['tok_s']:.1f} tok/s (p50 {d['p50_s']:.2f} s, TTFT "
            f"{d['ttft_p50_s']:.3f} s) vs {ARM} {ll['tok_s']:.1f} (p50 {ll['p50_s']:.2f} s, "
            f"TTFT {ll['ttft_p50_s']:.3f} s): {ratio:.2f}x (goal >= {goal}x: "
            f"{'met' if ratio >= goal else 'MISSED'}); ahead in {wins} of "
            f"{len(d['rounds_tok_s'])} waves"
        )
    if not arm.ppl:
        return
    o, ll = arm.ppl["ort"], arm.ppl["llamacpp"]
    print(
        f"  held-out ppl, second half of each of {PPL_ROWS} rows x {PPL_SEQ} (llama-perplexity's "
        f"positions): distill int4 ORT {o['ppl_half']:.2f}, llama.cpp Q4_K_M {ll['ppl_half']:.2f} "
        f"(goal: distill no worse: {'met' if o['ppl_half'] <= ll['ppl_half'] else 'MISSED'}); "
        f"llama.cpp's re-tokenized text matches the rows' ids at {ll['token_match']:.3f} "
        f"({ll['tokens']} vs {ll['expected_tokens']} tokens)"
    )
    names = {"fp": "fp32 student (HF)", "ort": "distill int4 ORT",
             "gguf_dequant": "Q4_K_M weights dequantized (HF)"}  # fmt: skip
    print("  held-out ppl, whole rows (evaluate's) | second halves:")
    for key, label in names.items():
        if key in arm.ppl:
            p = arm.ppl[key]
            print(f"    {label:<34}{p['ppl_row']:>8.2f} | {p['ppl_half']:.2f}")
