// What the browser suite shares: a real `turnlog serve` (embedded PostgreSQL in a temp data
// dir, an ephemeral loopback port), a real Chromium via playwright-core, and small helpers.
import { spawn, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const PYTHON = process.env.TURNLOG_PYTHON ?? join(REPO, ".venv/bin/python");
export const ARTIFACTS = resolve(process.env.TURNLOG_TEST_ARTIFACTS ?? join(REPO, "test-artifacts/web"));
mkdirSync(ARTIFACTS, { recursive: true });

/** Poll `probe` until it returns something truthy; fail after `timeout` ms. */
export async function waitFor(probe, { timeout = 30_000, interval = 100, what = "a condition" } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

export async function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = /** @type {import("node:net").AddressInfo} */ (server.address());
      server.close(() => resolvePort(port));
    });
  });
}

/** One `turnlog serve` process; `restart()` keeps the data dir, the port and the secret. */
export class Turnlog {
  constructor(env = {}) {
    this.dataDir = mkdtempSync(join(tmpdir(), "turnlog-web-"));
    this.logPath = join(this.dataDir, "server.log");
    this.env = env;
    this.port = 0;
    this.proc = null;
    this.webUrl = "";
  }

  get base() {
    return `http://127.0.0.1:${this.port}`;
  }

  get token() {
    return this.webUrl.split("#token=")[1];
  }

  async start() {
    if (!this.port) this.port = await freePort();
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("TURNLOG_")));
    Object.assign(env, {
      TURNLOG_DATA_DIR: this.dataDir,
      TURNLOG_CHECKPOINT_S: "0.5",
      TURNLOG_HEARTBEAT_S: "1",
      PYTHONUNBUFFERED: "1",
      ...this.env,
    });
    const from = this.log().length;
    const out = openSync(this.logPath, "a");
    this.proc = spawn(PYTHON, ["-m", "turnlog.cli", "serve", "--host", "127.0.0.1", "--port", String(this.port)], {
      cwd: REPO, env, stdio: ["ignore", out, out],
    });
    const proc = this.proc;
    // What `serve` prints on the embedded defaults once it is ready: the page's signed-in URL.
    const match = await waitFor(() => {
      if (proc.exitCode !== null) throw new Error(`turnlog serve exited ${proc.exitCode}:\n${this.log()}`);
      return /web chat, signed in as 'demo-user': (\S+#token=\S+)/.exec(this.log().slice(from));
    }, { timeout: 90_000, what: "turnlog serve to print its URL" });
    this.webUrl = match[1];
    return this;
  }

  log() {
    try {
      return readFileSync(this.logPath, "utf8");
    } catch {
      return "";
    }
  }

  /** SIGKILL: no drain, no goodbye; the embedded PostgreSQL lives on. */
  async kill() {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((r) => proc.once("exit", r));
    proc.kill("SIGKILL");
    await exited;
  }

  async stop() {
    const proc = this.proc;
    if (proc && proc.exitCode === null && proc.signalCode === null) {
      const exited = new Promise((r) => proc.once("exit", r));
      proc.kill("SIGTERM");
      const timer = setTimeout(() => proc.kill("SIGKILL"), 15_000);
      await exited;
      clearTimeout(timer);
    }
    // The embedded cluster outlives `serve` on purpose; this suite stops it.
    const stopped = spawnSync(PYTHON, ["-m", "turnlog.cli", "db", "stop"], {
      cwd: REPO, env: { ...process.env, TURNLOG_DATA_DIR: this.dataDir }, stdio: "ignore", timeout: 60_000,
    });
    // Keep the server's log; drop the cluster's files once it is stopped.
    if (stopped.status === 0) rmSync(join(this.dataDir, "pg"), { recursive: true, force: true });
  }

  /** A JSON request with the demo user's bearer token. */
  async api(path, { method = "GET", body } = {}) {
    const response = await fetch(this.base + path, {
      method,
      headers: { Authorization: `Bearer ${this.token}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
    return text ? JSON.parse(text) : null;
  }

  async conversation(options, title = "web test") {
    return this.api("/v1/conversations", { method: "POST", body: { title, options } });
  }

  async messages(cid) {
    return (await this.api(`/v1/conversations/${cid}/messages`)).items;
  }
}

export async function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.TURNLOG_CHROMIUM ?? "/usr/bin/chromium",
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
    ],
  });
}

/** A new page that reports its errors to the test's output. */
export async function newPage(browser) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => console.log(`[page error] ${e.message}`));
  return page;
}

/** Text of a stored assistant row's blocks, as the page shows text blocks. */
export function storedText(row) {
  return row.blocks.filter((b) => b.type === "text").map((b) => b.text).join("");
}

/** Screenshots at 390 and 1280 px wide, light and dark; the page is left as it was. */
export async function screenshots(page, name) {
  const viewport = page.viewportSize();
  const paths = [];
  for (const width of [390, 1280]) {
    for (const scheme of ["light", "dark"]) {
      await page.setViewportSize({ width, height: width === 390 ? 844 : 800 });
      await page.emulateMedia({ colorScheme: scheme });
      const path = join(ARTIFACTS, `${name}-${width}-${scheme}.png`);
      await page.screenshot({ path });
      paths.push(path);
    }
  }
  await page.emulateMedia({ colorScheme: "light" });
  await page.setViewportSize(viewport);
  return paths;
}

export async function screenshot(page, name) {
  const path = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path });
  return path;
}

/** A TCP proxy on loopback in front of `port` that can drop every open connection and
 * records what each connection sent first (the request head). */
export async function dropProxy(port) {
  const sockets = new Set();
  const heads = [];
  const server = createServer((client) => {
    const upstream = connect(port, "127.0.0.1");
    sockets.add(client).add(upstream);
    client.once("data", (chunk) => heads.push(chunk.toString("latin1")));
    client.pipe(upstream).pipe(client);
    for (const s of [client, upstream]) {
      s.on("error", () => {});
      s.on("close", () => {
        sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const proxyPort = /** @type {import("node:net").AddressInfo} */ (server.address()).port;
  return {
    port: proxyPort,
    heads,
    drop() {
      for (const s of sockets) s.destroy();
    },
    close() {
      this.drop();
      server.close();
    },
  };
}
