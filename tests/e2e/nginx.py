"""A real nginx (Debian's package) in front of turnlog instances, as a deployment has it.

Round-robin over the instances, with what SSE needs from a proxy (docs/deployment.md):
HTTP/1.1 upstream, ``proxy_buffering off``, a long read timeout. Started and stopped by the
tests with a config in a temp dir; `make test` installs nginx first
(scripts/ensure-debian-packages).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx

from .support import free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

CONFIG = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream turnlog {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://turnlog;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_buffering off;
            proxy_cache off;
            proxy_read_timeout 1h;
        }}
    }}
}}
"""


class Nginx:
    """``nginx`` balancing round-robin over ``ports`` on 127.0.0.1, on a free port."""

    def __init__(self, directory: Path, ports: list[int]) -> None:
        self.dir = directory
        self.port = free_port()
        servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=0;" for p in ports)
        self.config = directory / "nginx.conf"
        self.config.write_text(CONFIG.format(dir=directory, servers=servers, port=self.port))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        with (self.dir / "stderr.log").open("ab") as stderr:
            self.proc = subprocess.Popen(
                [NGINX, "-e", "stderr", "-p", str(self.dir), "-c", str(self.config)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                error_log = self.dir / "error.log"
                logged = error_log.read_text() if error_log.exists() else ""
                raise AssertionError(
                    f"nginx did not start: {(self.dir / 'stderr.log').read_text()}{logged}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
