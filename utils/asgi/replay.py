"""A `receive` that gives back a body a layer has already read, for the layers behind it."""

from __future__ import annotations

from starlette.types import Message, Receive


def prepend_body(first: bytes, receive: Receive, more_body: bool = True) -> Receive:
    """A `receive` that yields `first` as one message, then the original's messages."""
    sent = False

    async def replay() -> Message:
        nonlocal sent, first
        if sent:
            return await receive()  # the rest of the body, then disconnect notices
        message = {"type": "http.request", "body": first, "more_body": more_body}
        # BentoML keeps each request's `receive` past the response: holding the body here
        # grew a worker by ~80 MB per 200 requests until this reference was dropped
        sent, first = True, b""
        return message

    return replay
