"""Turning a growing list of token ids into streamed text, with stop strings.

Two things make streaming text harder than decoding once at the end:
a token may end inside a multi-byte UTF-8 character (the decoder shows U+FFFD
until the next token completes it), and a stop string may arrive split over
several tokens. :class:`TextStream` therefore holds back an unfinished
character and any tail that could still become a stop string, so what it has
emitted is always a prefix of the final text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class TextStream:
    """Feed token ids one at a time; get back the new, safe-to-show text."""

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stop = [s for s in stop if s]
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._ids: list[int] = []
        self._emitted = 0
        self.text = ""
        self.stopped = False  # a stop string was found

    def push(self, token_id: int) -> str:
        """Add one token; return the text that can now be shown (maybe empty)."""
        self._ids.append(token_id)
        text = self._decode(self._ids)
        for stop in self._stop:
            at = text.find(stop, max(0, self._emitted - len(stop)))
            if at != -1:
                text = text[:at]
                self.stopped = True
        self.text = text
        if self.stopped:
            return self._take(len(text))
        safe = len(text) - self._hold
        if text.endswith("\ufffd"):
            safe = min(safe, len(text) - 1)
        return self._take(safe)

    def flush(self) -> str:
        """Generation ended: release whatever was held back, minus an unfinished character.

        A generation cut by max_new_tokens can end inside a multi-byte character; its
        U+FFFD is dropped from ``text`` too, so the final text equals the streamed pieces.
        """
        self.text = self.text.rstrip("\ufffd")
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        if upto <= self._emitted:
            return ""
        piece = self.text[self._emitted : upto]
        self._emitted = upto
        return piece
