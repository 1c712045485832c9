"""Token ids -> text while generating: incremental detokenization and stop strings.

Pure Python over a tokenizer's ``decode`` (no torch, no Ray), shared by every engine::

    detok = IncrementalDetokenizer(tok)
    stops = StopMatcher(["\\n\\n"])
    for token_id in generated:
        delta, stopped = stops.feed(detok.add(token_id))
        send(delta)
        if stopped:
            break
    send(stops.flush(detok.flush()))   # the held-back tail once the sequence ends

Each :meth:`IncrementalDetokenizer.add` decodes a window of a few tokens (the last emitted token
or so plus the new one), never the whole prefix, so the cost per token is constant; the deltas
join to ``tok.decode(ids, skip_special_tokens=True)``. A delta is withheld while the window ends in
an incomplete UTF-8 character (U+FFFD).
"""

from __future__ import annotations

from typing import Any


class IncrementalDetokenizer:
    """Text deltas for a growing list of token ids (the TGI / vLLM offsets scheme)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0  # start of the decode window (one emitted token of context)
        self.read_offset = 0  # ids[:read_offset] have been turned into text

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def add(self, token_id: int) -> str:
        """Append one generated id; return the new text (possibly empty)."""
        self.ids.append(int(token_id))
        return self._advance(final=False)

    def flush(self) -> str:
        """Whatever text is still withheld (an incomplete character at the very end)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self.read_offset >= len(self.ids):
            return ""
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        if not final and (len(text) <= len(prefix) or text.endswith("\ufffd")):
            return ""
        delta = text[len(prefix) :] if text.startswith(prefix) else text
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.ids)
        return delta


class StopMatcher:
    """Cuts the text at the first stop string; holds back a tail that may start one."""

    def __init__(self, stops: list[str] | tuple[str, ...] = ()) -> None:
        self.stops = [s for s in stops if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        self.text = ""  # everything received (bounded by the answer's length)
        self.emitted = 0
        self.stopped = False

    def feed(self, delta: str) -> tuple[str, bool]:
        """Add ``delta``; return (text safe to send now, whether a stop string was hit)."""
        if self.stopped or not delta:
            return "", self.stopped
        start = max(0, len(self.text) - self.longest + 1)
        self.text += delta
        if not self.stops:
            return self._emit(len(self.text)), False
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            return self._emit(min(hits)), True
        return self._emit(len(self.text) - self._held_back()), False

    def flush(self, delta: str = "") -> str:
        """At the end of the sequence: ``delta`` plus the held-back tail (unless stopped)."""
        out, stopped = self.feed(delta)
        return out if stopped else out + self._emit(len(self.text))

    def _held_back(self) -> int:
        """Length of the longest suffix of the text that is a proper prefix of a stop string."""
        for n in range(min(self.longest - 1, len(self.text)), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0

    def _emit(self, end: int) -> str:
        end = max(end, self.emitted)
        out = self.text[self.emitted : end]
        self.emitted = end
        return out
