"""Provider-path benchmark: what reading a model's stream costs, per chunk and per generation.

Run: ``python bench/providers.py`` (``make bench``); ``--help`` for sizes. Two parts, each a
ratio measured in one run:

1. **Per chunk, in this process.** ``bench/fake_upstream.py`` (another process, so its CPU
   is not counted) serves one pre-rendered stream per API. For each provider kind, three
   clients read the same bytes: the *raw floor* (``httpx`` + a line split + one
   ``msgspec`` decode per frame into a Struct of the text field), the *SDK* (its own
   streaming: ``chat.completions.create(stream=True)``, ``messages.create(stream=True)``,
   ``generate_content_stream``, iterating its objects) and the turnlog *adapter*
   (``Provider.stream``, every event it yields). CPU is this process's
   (``time.process_time``); per chunk = (CPU of an N-chunk stream - CPU of a 1-chunk
   stream) / (N - 1), so the fixed cost of a request (client, connection, headers) is apart,
   shown per step. Rounds interleave the variants; the median is shown.
2. **G generations through ``turnlog serve``**: one server (embedded PostgreSQL, as
   ``bench/load.py`` starts it) with ``OPENAI_BASE_URL`` at a fake upstream that paces each
   stream at 50 chunks/s; G conversations send at once on the demo provider (same pace and
   length), then G on ``openai:`` through the adapter and the real ``openai`` SDK; server
   CPU per generation (with and without PostgreSQL) of each, and their ratio.

Targets (issue 24): adapter <= 2x the raw floor per chunk; G = 500 openai <= 1.3x demo.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def tls() -> ssl.SSLContext:
    """One TLS context for every client here, as the adapters share one (``_tls.py``): a
    client of its own would load the CA bundle per request, which is not the stream's cost."""
    from turnlog.providers._tls import tls_context

    return tls_context()


# --------------------------------------------------------------------------- the upstream


@contextlib.contextmanager
def upstream(chunks: int, pace: float = 0.0) -> Iterator[str]:
    """A fake upstream on loopback; its base URL."""
    port = load.free_port()
    command = [sys.executable, str(ROOT / "bench" / "fake_upstream.py"), str(port)]
    proc = subprocess.Popen(
        [*command, "--chunks", str(chunks), "--pace", str(pace)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        load.wait_port(proc, port)  # type: ignore[arg-type]
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


# --------------------------------------------------------------------------- the raw floor


class _OAIDelta(msgspec.Struct):
    content: str | None = None


class _OAIChoice(msgspec.Struct):
    delta: _OAIDelta | None = None


class _OAIChunk(msgspec.Struct):
    choices: list[_OAIChoice] | None = None


class _AntDelta(msgspec.Struct):
    text: str = ""


class _AntEvent(msgspec.Struct):
    type: str
    delta: _AntDelta | None = None


class _GemPart(msgspec.Struct):
    text: str | None = None


class _GemContent(msgspec.Struct):
    parts: list[_GemPart] | None = None


class _GemCandidate(msgspec.Struct):
    content: _GemContent | None = None


class _GemChunk(msgspec.Struct):
    candidates: list[_GemCandidate] | None = None


FLOOR: dict[str, tuple[str, Any, Callable[[Any], str | None]]] = {
    "openai": (
        "/v1/chat/completions",
        msgspec.json.Decoder(_OAIChunk).decode,
        lambda c: c.choices[0].delta.content if c.choices and c.choices[0].delta else None,
    ),
    "anthropic": (
        "/v1/messages",
        msgspec.json.Decoder(_AntEvent).decode,
        lambda e: e.delta.text if e.delta else None,
    ),
    "gemini": (
        "/v1beta/models/m:streamGenerateContent?alt=sse",
        msgspec.json.Decoder(_GemChunk).decode,
        lambda c: (
            c.candidates[0].content.parts[0].text
            if c.candidates and c.candidates[0].content and c.candidates[0].content.parts
            else None
        ),
    ),
}


async def floor(kind: str, url: str) -> int:
    """httpx + a line split + a msgspec decode per data line; the text pieces read."""
    path, decode, text_of = FLOOR[kind]
    n = 0
    async with (
        httpx.AsyncClient(verify=tls()) as client,
        client.stream("POST", url + path, json={"stream": True}) as response,
    ):
        rest = b""
        async for raw in response.aiter_bytes():
            lines = (rest + raw).split(b"\n")
            rest = lines.pop()
            for line in lines:
                if (
                    line[:6] == b"data: "
                    and line[6:12] != b"[DONE]"
                    and text_of(decode(line[6:])) is not None
                ):
                    n += 1
    return n


# --------------------------------------------------------------------------- the SDKs


async def sdk_openai(url: str) -> int:
    import openai

    client = openai.AsyncOpenAI(
        api_key="bench",
        base_url=url + "/v1",
        max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(verify=tls()),
    )
    n = 0
    try:
        stream = await client.chat.completions.create(
            model="gpt-4.1-mini",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        async for _ in stream:
            n += 1
    finally:
        await client.close()
    return n


async def sdk_anthropic(url: str) -> int:
    import anthropic

    client = anthropic.AsyncAnthropic(
        api_key="bench",
        base_url=url,
        max_retries=0,
        http_client=anthropic.DefaultAsyncHttpxClient(verify=tls()),
    )
    n = 0
    try:
        stream = await client.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=1024,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
        )
        async for _ in stream:
            n += 1
    finally:
        await client.close()
    return n


async def sdk_gemini(url: str) -> int:
    from google import genai
    from google.genai import types

    http = httpx.AsyncClient(verify=tls())
    client = genai.Client(
        api_key="bench",
        http_options=types.HttpOptions(
            base_url=url,
            httpx_async_client=http,
            httpx_client=httpx.Client(verify=tls()),
            async_client_args={"ssl": tls()},
        ),
    )
    n = 0
    try:
        chunks = await client.aio.models.generate_content_stream(
            model="gemini-2.5-flash", contents="hi"
        )
        async for _ in chunks:
            n += 1
    finally:
        await http.aclose()
    return n


SDK: dict[str, Callable[[str], Awaitable[int]]] = {
    "openai": sdk_openai,
    "anthropic": sdk_anthropic,
    "gemini": sdk_gemini,
}


# --------------------------------------------------------------------------- the adapters


def adapter_of(kind: str, url: str) -> Any:
    from turnlog.config import Settings
    from turnlog.models import ProviderSpec

    if kind == "openai":
        from turnlog.providers.openai import OpenAIProvider

        spec = ProviderSpec(name="openai", kind="openai", base_url=url + "/v1", api_key="bench")
        return OpenAIProvider(spec, Settings())
    if kind == "anthropic":
        from turnlog.providers.anthropic import AnthropicProvider

        return AnthropicProvider(api_key="bench", base_url=url)
    from turnlog.providers.gemini import GeminiProvider

    return GeminiProvider(api_key="bench", base_url=url)


async def adapter(kind: str, url: str) -> int:
    from turnlog.providers.base import ChatMessage, ModelRequest

    request = ModelRequest(
        model={"openai": "gpt-4.1-mini", "anthropic": "claude-sonnet-4-5"}.get(
            kind, "gemini-2.5-flash"
        ),
        system_prompt=None,
        messages=(ChatMessage(role="user", content="hi"),),
        options={},
        tools=(),
    )
    n = 0
    async for _ in adapter_of(kind, url).stream(request):
        n += 1
    return n


# --------------------------------------------------------------------------- part 1


def cpu_of(run: Callable[[], Awaitable[int]]) -> tuple[float, int]:
    """This process's CPU seconds for one awaited run, and what it returned."""

    async def timed() -> tuple[float, int]:
        gc.collect()
        t0 = time.process_time()
        n = await run()
        return time.process_time() - t0, n

    return asyncio.run(timed())


VARIANTS = ("raw floor", "adapter", "SDK")


def per_chunk(chunks: int, rounds: int, kinds: list[str]) -> list[tuple[str, str, float, float]]:
    """(kind, variant, CPU us per chunk, CPU us per step) for each kind and variant."""
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with upstream(chunks) as long_url, upstream(1) as short_url:
        for r in range(rounds + 1):  # round 0 warms up (imports, TLS contexts, caches)
            for kind in kinds:
                for variant in VARIANTS:

                    def make(url: str, kind: str = kind, variant: str = variant) -> Any:
                        if variant == "raw floor":
                            return lambda: floor(kind, url)
                        if variant == "SDK":
                            return lambda: SDK[kind](url)
                        return lambda: adapter(kind, url)

                    long_cpu, _ = cpu_of(make(long_url))
                    short_cpu, _ = cpu_of(make(short_url))
                    if r:
                        each = (long_cpu - short_cpu) / (chunks - 1)
                        samples.setdefault((kind, variant), []).append((each, short_cpu))
    out = []
    for (kind, variant), values in samples.items():
        out.append(
            (
                kind,
                variant,
                statistics.median(v[0] for v in values) * 1e6,
                statistics.median(v[1] for v in values) * 1e6,
            )
        )
    return out


def chunk_table(rows: list[tuple[str, str, float, float]]) -> tuple[str, list[str]]:
    floors = {kind: us for kind, variant, us, _ in rows if variant == "raw floor"}
    lines = [
        f"{'provider':<10}  {'variant':<10}  {'CPU/chunk us':>12}  {'vs floor':>8}  "
        f"{'CPU/step us':>11}  target",
    ]
    lines.append("-" * len(lines[0]))
    missed = []
    for kind, variant, us, step in rows:
        ratio = us / floors[kind] if floors.get(kind) else float("nan")
        target = ""
        if variant == "adapter":
            ok = ratio <= 2.0
            target = "met (<= 2x)" if ok else "MISSED (<= 2x)"
            if not ok:
                missed.append(f"{kind} adapter {ratio:.2f}x the raw floor")
        lines.append(
            f"{kind:<10}  {variant:<10}  {us:>12.2f}  {ratio:>7.2f}x  {step:>11.0f}  {target}"
        )
    return "\n".join(lines), missed


# --------------------------------------------------------------------------- part 2


def through_serve(g: int, chunks: int, pace: float, clients: int) -> tuple[str, list[str]]:
    """G generations on the demo provider, then G through the openai adapter, one server."""
    tmp = Path(tempfile.mkdtemp(prefix="turnlog-providers-"))
    server = None
    try:
        with upstream(chunks, pace) as url:
            server = load.start_turnlog(
                tmp / "data", {"OPENAI_BASE_URL": url + "/v1", "OPENAI_API_KEY": "bench"}
            )
            demo = load.gens(server, g, chunks, clients, tps=pace)
            print(f"  G={g} demo: done", flush=True)
            # Not strict: a row the adapter failed (an error) is counted in `folds`.
            real = load.gens(
                server,
                g,
                chunks,
                clients,
                tps=pace,
                model="openai:gpt-4.1-mini",
                options={},
                strict=False,
            )
            print(f"  G={g} openai: done", flush=True)
    finally:
        if server is not None:
            server.stop()
        from turnlog.db.embedded import EmbeddedPostgres

        with contextlib.suppress(Exception):
            EmbeddedPostgres(tmp / "data").stop()
        shutil.rmtree(tmp, ignore_errors=True)
    name = f"gens G={g}, {chunks} chunks at {pace:g}/s"
    text = load.table([(name, real, demo, ("openai", "demo"))])
    ratio = real.cpu_per_unit_us / demo.cpu_per_unit_us
    own = real.own_cpu_per_unit_us / demo.own_cpu_per_unit_us
    ok = ratio <= 1.3
    verdict = (
        f"G={g} openai adapter: {ratio:.2f}x the demo's CPU per generation "
        f"({own:.2f}x without PostgreSQL): {'met' if ok else 'MISSED'} (<= 1.3x)"
    )
    return text + "\n" + verdict, [] if ok else [verdict]


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, default=2000, help="chunks per stream, part 1")
    ap.add_argument("--rounds", type=int, default=5, help="measured rounds, part 1 (0: skip)")
    ap.add_argument("--kinds", default="openai,anthropic,gemini")
    ap.add_argument("--gens", type=int, default=500, help="G for part 2 (0: skip)")
    ap.add_argument("--gen-chunks", type=int, default=100, help="chunks per generation")
    ap.add_argument("--pace", type=float, default=50.0, help="chunks/s per generation")
    ap.add_argument("--clients", type=int, default=2, help="client processes, part 2")
    args = ap.parse_args(argv)
    print(f"machine: {load.machine()}", flush=True)
    missed: list[str] = []
    if args.rounds:
        rows = per_chunk(args.chunks, args.rounds, args.kinds.split(","))
        text, miss = chunk_table(rows)
        missed += miss
        print(f"\nper chunk: {args.chunks}-chunk streams, median of {args.rounds} rounds\n")
        print(text, flush=True)
    if args.gens:
        print()
        text, miss = through_serve(args.gens, args.gen_chunks, args.pace, args.clients)
        missed += miss
        print(text, flush=True)
    for m in missed:
        print(f"MISSED: {m}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
