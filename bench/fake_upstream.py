"""A fake model API for ``bench/providers.py``: one pre-rendered stream per provider kind.

Every POST is answered with the stream of the API its path names (Chat Completions for
``/chat/completions``, the Messages API for ``/messages``, Gemini for
``:streamGenerateContent``), rendered once at startup, so every client variant reads the
same bytes. Unpaced (``--pace 0``) the whole body goes in one write; paced, a stream's
frames go out at ``--pace`` chunks a second on an absolute schedule (frame i at start +
i / pace), every stream served by one timer tick so the fake itself stays cheap beside
the server under measurement.

Run: ``python bench/fake_upstream.py PORT --chunks N [--pace CHUNKS_PER_S]`` (loopback only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

WORDS = ["The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", "."]


def sse(event: str | None, data: Any) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def openai_frames(n: int) -> list[bytes]:
    """Chat Completions as OpenAI sends it: a role chunk, n content chunks, the finish,
    the usage chunk, ``[DONE]``."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse(
            None,
            {
                "id": "chatcmpl-BmT0ZKmwpG6EQ4yP8Wq1XcbtdLXyz",
                "object": "chat.completion.chunk",
                "created": 1760000000,
                "model": "gpt-4.1-mini-2025-04-14",
                "service_tier": "default",
                "system_fingerprint": "fp_6f2eabb9a5",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
                "obfuscation": "x7Q2",
            },
        )

    frames = [chunk({"role": "assistant", "content": "", "refusal": None})]
    frames += [chunk({"content": WORDS[i % len(WORDS)]}) for i in range(n)]
    frames.append(chunk({}, "stop"))
    frames.append(
        sse(
            None,
            {
                "id": "chatcmpl-BmT0ZKmwpG6EQ4yP8Wq1XcbtdLXyz",
                "object": "chat.completion.chunk",
                "created": 1760000000,
                "model": "gpt-4.1-mini-2025-04-14",
                "choices": [],
                "usage": {
                    "prompt_tokens": 12,
                    "completion_tokens": n,
                    "total_tokens": 12 + n,
                    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
                },
            },
        )
    )
    frames.append(b"data: [DONE]\n\n")
    return frames


def anthropic_frames(n: int) -> list[bytes]:
    """The Messages API stream: message_start, one text block of n deltas, the ends."""
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 12,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 1,
            },
        },
    }
    frames = [
        sse("message_start", start),
        sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        sse("ping", {"type": "ping"}),
    ]
    frames += [
        sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": WORDS[i % len(WORDS)]},
            },
        )
        for i in range(n)
    ]
    frames += [
        sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": n},
            },
        ),
        sse("message_stop", {"type": "message_stop"}),
    ]
    return frames


def gemini_frames(n: int) -> list[bytes]:
    """``streamGenerateContent?alt=sse``: n chunks of one text part, the last with STOP."""

    def chunk(i: int) -> bytes:
        candidate: dict[str, Any] = {
            "content": {"parts": [{"text": WORDS[i % len(WORDS)]}], "role": "model"},
            "index": 0,
        }
        if i == n - 1:
            candidate["finishReason"] = "STOP"
        return sse(
            None,
            {
                "candidates": [candidate],
                "usageMetadata": {
                    "promptTokenCount": 12,
                    "candidatesTokenCount": i + 1,
                    "totalTokenCount": 13 + i,
                    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 12}],
                },
                "modelVersion": "gemini-2.5-flash",
                "responseId": "mLZ4aJ3xKpLz7M8Pl9u5uQg",
            },
        )

    return [chunk(i) for i in range(n)]


def frames_for(path: str, n: int) -> list[bytes]:
    if path.endswith("/chat/completions"):
        return openai_frames(n)
    if path.endswith("/messages"):
        return anthropic_frames(n)
    if ":streamGenerateContent" in path:
        return gemini_frames(n)
    raise ValueError(path)


class Upstream:
    def __init__(self, chunks: int, pace: float) -> None:
        self.pace = pace
        self.rendered: dict[str, list[bytes]] = {}
        self.chunks = chunks
        # Paced streams: [writer, frames, next index, start time, finished].
        self.streams: list[list[Any]] = []

    def frames(self, path: str) -> list[bytes]:
        key = path.split("?")[0]
        kind = "openai" if key.endswith("/chat/completions") else key
        if kind not in self.rendered:
            self.rendered[kind] = frames_for(key, self.chunks)
        return self.rendered[kind]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Requests on one keep-alive connection, one after another, until the client
        hangs up (real APIs keep connections alive; a client that pools them gains)."""
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                length = 0
                for line in lines[1:]:
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                if length:
                    await reader.readexactly(length)
                frames = self.frames(path)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
                )
                if not self.pace:
                    body = b"".join(frames)
                    writer.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body))
                    await writer.drain()
                    continue
                finished = asyncio.get_running_loop().create_future()
                self.streams.append([writer, frames, 0, time.monotonic(), finished])
                await finished
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def tick(self) -> None:
        """Every stream's frames that are due, each as one HTTP chunk; 100 ticks a second."""
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            live = []
            for entry in self.streams:
                writer, frames, i, start, finished = entry
                if writer.is_closing():
                    if not finished.done():
                        finished.set_result(None)
                    continue
                due = min(len(frames), int((now - start) * self.pace) + 1)
                if due > i:
                    body = b"".join(frames[i:due])
                    writer.write(b"%x\r\n%b\r\n" % (len(body), body))
                    entry[2] = due
                if entry[2] >= len(frames):
                    writer.write(b"0\r\n\r\n")
                    if not finished.done():
                        finished.set_result(None)
                else:
                    live.append(entry)
            self.streams = live


async def run(port: int, chunks: int, pace: float) -> None:
    upstream = Upstream(chunks, pace)
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", port, backlog=4096)
    async with server:
        if pace:
            await asyncio.gather(server.serve_forever(), upstream.tick())
        else:
            await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("port", type=int)
    ap.add_argument("--chunks", type=int, default=100)
    ap.add_argument("--pace", type=float, default=0.0, help="chunks/s per stream; 0: at once")
    args = ap.parse_args()
    asyncio.run(run(args.port, args.chunks, args.pace))


if __name__ == "__main__":
    main()
