"""Teachers that write completions: a local HF checkpoint or an OpenAI-compatible HTTP endpoint.

Both are callable classes for Ray Data ``map_batches`` (one model / HTTP client per actor). A
batch holds prompt rows (``key, id, prompt, messages_json, kind, split``); the output has one row
per completion with ``completion, mean_logprob (NaN = unknown), n_tokens, finish_reason, sample``::

    ds.map_batches(LocalGenerator, fn_constructor_args=(teacher_dir, decoding, True, 2, "float32"),
                   compute=ActorPoolStrategy(size=1), num_cpus=0.5, batch_size=4)
"""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.error
import urllib.request
from typing import Any

from distill.config.base import DistillError
from distill.models.loader import load_causal_lm, load_tokenizer
from distill.models.stopping import stop_token_ids
from distill.seqkd.prompts import messages_of, prompt_text, render_prompt

log = logging.getLogger(__name__)

PASS_COLUMNS = ("key", "id", "prompt", "messages_json", "kind", "split")
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def _expand(batch: dict[str, Any], results: list[list[dict[str, Any]]]) -> dict[str, list]:
    """Prompt columns repeated per completion, plus the completion columns."""
    out: dict[str, list] = {c: [] for c in PASS_COLUMNS}
    for c in ("completion", "mean_logprob", "n_tokens", "finish_reason", "sample"):
        out[c] = []
    for i, comps in enumerate(results):
        for s, comp in enumerate(comps):
            for c in PASS_COLUMNS:
                out[c].append(str(batch[c][i]))
            out["completion"].append(comp["completion"])
            lp = comp.get("mean_logprob")
            out["mean_logprob"].append(float("nan") if lp is None else float(lp))
            out["n_tokens"].append(int(comp["n_tokens"]))
            out["finish_reason"].append(str(comp["finish_reason"]))
            out["sample"].append(s)
    return out


def _row(batch: dict[str, Any], i: int) -> dict[str, Any]:
    return {c: batch[c][i] for c in PASS_COLUMNS}


class LocalGenerator:
    """Samples ``decoding['n']`` completions per prompt from an HF checkpoint (left-padded)."""

    def __init__(
        self,
        model_dir: str,
        decoding: dict[str, Any],
        chat_template: bool,
        torch_threads: int | None,
        dtype: str,
    ) -> None:
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.tok = load_tokenizer(model_dir)
        self.tok.padding_side = "left"
        self.model = load_causal_lm(model_dir, dtype=dtype)
        self.dec = decoding
        self.chat = chat_template
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        model_eos = (self.model.generation_config.eos_token_id, self.model.config.eos_token_id)
        self.stop = stop_token_ids(self.tok, *model_eos)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        import torch

        rows = [_row(batch, i) for i in range(len(batch["key"]))]
        texts = [render_prompt(self.tok, r, self.chat) for r in rows]
        special = not (self.chat and getattr(self.tok, "chat_template", None))
        enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=special)
        d = self.dec
        torch.manual_seed(d["seed"] + int(str(rows[0]["key"])[:8], 16))
        sample = d["temperature"] > 0
        with torch.no_grad():
            gen = self.model.generate(
                **enc,
                do_sample=sample,
                temperature=d["temperature"] if sample else None,
                top_p=d["top_p"] if sample else None,
                top_k=None,
                max_new_tokens=d["max_new_tokens"],
                num_return_sequences=d["n"],
                pad_token_id=self.pad,
                eos_token_id=self.stop,
                return_dict_in_generate=True,
                output_logits=True,
            )
        new = gen.sequences[:, enc["input_ids"].shape[1] :]
        logits = torch.stack(gen.logits, dim=1).float()  # raw logits: log-probs at T=1
        logp = torch.log_softmax(logits, -1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        results: list[list[dict[str, Any]]] = [[] for _ in rows]
        is_stop = torch.isin(new, torch.tensor(self.stop))
        for j in range(new.shape[0]):
            hits = is_stop[j].nonzero()
            end = int(hits[0]) if len(hits) else new.shape[1]
            scored = end + 1 if len(hits) else end  # the stop token is part of the answer
            results[j // d["n"]].append(
                {
                    "completion": self.tok.decode(new[j, :end], skip_special_tokens=True),
                    "mean_logprob": float(logp[j, :scored].mean()) if scored else None,
                    "n_tokens": end,
                    "finish_reason": "stop" if len(hits) else "length",
                }
            )
        return _expand(batch, results)


class HTTPClient:
    """A minimal OpenAI-compatible client: retries with exponential backoff, timeouts, rate limit.

    ``cfg`` is an ``HTTPTeacher`` dump; ``api_key`` is read by the caller from its env var.
    """

    def __init__(
        self, cfg: dict[str, Any], decoding: dict[str, Any], api_key: str | None, rate: float
    ) -> None:
        self.cfg = cfg
        self.dec = decoding
        self.api_key = api_key
        self.min_interval = 1.0 / rate
        self.last = 0.0
        self.logprobs = bool(cfg["request_logprobs"])
        self.notes: list[str] = []

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.cfg["endpoint"] == "chat" else "/v1/completions"

    def _wait(self) -> None:
        delay = self.last + self.min_interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self.last = time.monotonic()

    def post(self, payload: dict[str, Any]) -> dict[str, Any]:
        url = self.cfg["base_url"].rstrip("/") + self.path
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        attempts = self.cfg["max_retries"] + 1
        last = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.cfg["backoff_s"] * 2 ** (attempt - 1))
            self._wait()
            req = urllib.request.Request(url, json.dumps(payload).encode(), headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.cfg["timeout_s"]) as resp:
                    return json.loads(resp.read().decode())
            except urllib.error.HTTPError as e:
                body = e.read().decode(errors="replace")[:300]
                last = f"HTTP {e.code}: {body}"
                if e.code not in RETRY_STATUS:
                    raise DistillError(f"HTTP teacher {url} refused the request ({last})") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            except json.JSONDecodeError as e:
                last = f"response is not JSON ({e.msg})"
            log.warning(
                "HTTP teacher %s attempt %d/%d failed: %s", url, attempt + 1, attempts, last
            )
        raise DistillError(
            f"HTTP teacher {url} unreachable after {attempts} attempt(s) "
            f"(timeout {self.cfg['timeout_s']}s, backoff from {self.cfg['backoff_s']}s): {last}"
        )

    def _payload(self, row: dict[str, Any], n: int) -> dict[str, Any]:
        d = self.dec
        p: dict[str, Any] = {
            "model": self.cfg["model"],
            "n": n,
            "temperature": d["temperature"],
            "top_p": d["top_p"],
            "max_tokens": d["max_new_tokens"],
            "seed": d["seed"],
        }
        if self.cfg["endpoint"] == "chat":
            p["messages"] = messages_of(row)
            if self.logprobs:
                p["logprobs"] = True
        else:
            p["prompt"] = prompt_text(row)
            if self.logprobs:
                p["logprobs"] = 1
        return p

    def _parse(self, choice: dict[str, Any]) -> dict[str, Any]:
        if self.cfg["endpoint"] == "chat":
            text = (choice.get("message") or {}).get("content") or ""
            lps = [t.get("logprob") for t in ((choice.get("logprobs") or {}).get("content") or [])]
        else:
            text = choice.get("text") or ""
            lps = (choice.get("logprobs") or {}).get("token_logprobs") or []
        lps = [float(v) for v in lps if v is not None and math.isfinite(float(v))]
        return {
            "completion": text,
            "mean_logprob": sum(lps) / len(lps) if lps else None,
            "n_tokens": len(lps) if lps else -1,  # -1: counted later with the local tokenizer
            "finish_reason": choice.get("finish_reason") or "stop",
        }

    def complete(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while len(out) < self.dec["n"]:
            try:
                resp = self.post(self._payload(row, self.dec["n"] - len(out)))
            except DistillError as e:
                msg = str(e)
                rejected = any(f"HTTP {c}" in msg for c in (400, 422)) and "logprob" in msg.lower()
                if not (self.logprobs and rejected):
                    raise
                self.logprobs = False  # some servers reject logprobs: retry without, note it
                self.notes.append("server refused logprobs: mean log-prob recorded as null")
                log.warning("%s; retrying without logprobs", e)
                continue
            choices = resp.get("choices") or []
            if not choices:
                raise DistillError(f"HTTP teacher returned no choices: {str(resp)[:300]}")
            out.extend(self._parse(c) for c in choices)
        return out[: self.dec["n"]]


class HTTPGenerator:
    """``map_batches`` wrapper of ``HTTPClient`` (rate limit split across the actor pool)."""

    def __init__(
        self, cfg: dict[str, Any], decoding: dict[str, Any], api_key: str | None, tokenizer_dir: str
    ) -> None:
        self.client = HTTPClient(cfg, decoding, api_key, cfg["requests_per_s"] / cfg["actors"])
        self.tok = load_tokenizer(tokenizer_dir)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        results = []
        for i in range(len(batch["key"])):
            comps = self.client.complete(_row(batch, i))
            for c in comps:
                if c["n_tokens"] < 0:
                    c["n_tokens"] = len(
                        self.tok(c["completion"], add_special_tokens=False)["input_ids"]
                    )
            results.append(comps)
        return _expand(batch, results)
