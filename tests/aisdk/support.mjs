// What the AI SDK suites share: a real `turnlog serve` subprocess on loopback (embedded
// PostgreSQL under a temp data dir, an ephemeral port), tokens, and a headless AbstractChat.
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

// The `ai` package under test: this suite's own (6.x), or another release's entry point
// named by TURNLOG_AISDK_AI (the ai 7 lane, tests/aisdk7, runs these same files with it).
const ai = await import(process.env.TURNLOG_AISDK_AI ?? 'ai');
export const { AbstractChat, DefaultChatTransport, generateId, readUIMessageStream } = ai;

/** The version of the `ai` package loaded above (from its package.json). */
export function aiVersion() {
  const entry = process.env.TURNLOG_AISDK_AI
    ? pathToFileURL(process.env.TURNLOG_AISDK_AI).href
    : import.meta.resolve('ai');
  let dir = dirname(fileURLToPath(entry));
  for (;;) {
    const file = join(dir, 'package.json');
    if (existsSync(file)) {
      const pkg = JSON.parse(readFileSync(file, 'utf8'));
      if (pkg.name === 'ai') return pkg.version;
    }
    if (dirname(dir) === dir) throw new Error(`no package.json of ai above ${entry}`);
    dir = dirname(dir);
  }
}

const here = dirname(fileURLToPath(import.meta.url));
export const TURNLOG = process.env.TURNLOG_BIN ?? resolve(here, '../../.venv/bin/turnlog');

// Generous: 2 shared cores, seven engineers, CI.
export const LONG = 60_000;

function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.once('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}

/** Resolves once `check()` is truthy (polling), or fails after `timeout` ms saying `what`. */
export async function waitFor(check, what, timeout = LONG) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

/** One `turnlog serve` with its own data dir; `kill()` is SIGKILL, `start()` again restarts. */
export class Server {
  /** `sharing`: another Server whose database and secret this one shares: a second
   * server process of the same deployment. */
  constructor(sharing = null, extraEnv = {}) {
    this.sharing = sharing;
    if (sharing !== null) {
      // One server per data dir on the embedded database: this one gets its own data dir
      // and reaches the first one's database as an external one (same secret, same rows).
      const url = execFileSync(TURNLOG, ['db', 'url'], { env: sharing.env })
        .toString()
        .trim()
        .split('\n')
        .at(-1);
      this.dataDir = mkdtempSync(join(tmpdir(), 'turnlog-aisdk-'));
      this.env = { ...sharing.env, TURNLOG_DATA_DIR: this.dataDir, TURNLOG_DATABASE_URL: url };
      this.proc = null;
      this.log = '';
      return;
    }
    this.dataDir = mkdtempSync(join(tmpdir(), 'turnlog-aisdk-'));
    this.env = {
      ...Object.fromEntries(
        Object.entries(process.env).filter(([k]) => !k.startsWith('TURNLOG_')),
      ),
      TURNLOG_DATA_DIR: this.dataDir,
      TURNLOG_JWT_SECRET: 'aisdk-suite-secret-0123456789abcdef0123456789',
      TURNLOG_CHECKPOINT_S: '0.3',
      TURNLOG_HEARTBEAT_S: '1',
      TURNLOG_SHUTDOWN_GRACE_S: '1',
      ...extraEnv,
    };
    this.proc = null;
    this.log = '';
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  async start() {
    this.port ??= await freePort();
    this.proc = spawn(TURNLOG, ['serve', '--host', '127.0.0.1', '--port', String(this.port)], {
      env: this.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const keep = chunk => {
      this.log = (this.log + chunk.toString()).slice(-40_000);
    };
    this.proc.stdout.on('data', keep);
    this.proc.stderr.on('data', keep);
    const proc = this.proc;
    await waitFor(async () => {
      if (proc.exitCode !== null) {
        throw new Error(`turnlog serve exited (${proc.exitCode}):\n${this.log}`);
      }
      try {
        return (await fetch(`${this.url}/readyz`)).ok;
      } catch {
        return false;
      }
    }, 'turnlog serve to be ready', 120_000);
    return this;
  }

  token(user) {
    return execFileSync(TURNLOG, ['token', '--user', user], { env: this.env })
      .toString()
      .trim()
      .split('\n')
      .at(-1);
  }

  /** SIGKILL, and wait until the process is gone. */
  async kill() {
    const proc = this.proc;
    if (proc === null || proc.exitCode !== null || proc.signalCode !== null) return;
    const gone = new Promise(ok => proc.once('exit', ok));
    proc.kill('SIGKILL');
    await gone;
  }

  async stop() {
    const proc = this.proc;
    if (proc !== null && proc.exitCode === null && proc.signalCode === null) {
      const gone = new Promise(ok => proc.once('exit', ok));
      proc.kill('SIGTERM');
      await Promise.race([gone, sleep(30_000).then(() => proc.kill('SIGKILL'))]);
    }
    if (this.sharing !== null) {
      // Its database is the first server's, which stops it.
      rmSync(this.dataDir, { recursive: true, force: true });
      return;
    }
    try {
      execFileSync(TURNLOG, ['db', 'stop'], { env: this.env, stdio: 'ignore' });
    } catch {
      // nothing was running
    }
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/** A user of one server: bearer token, transport, raw requests. */
export class Client {
  constructor(server, user = 'alice') {
    this.server = server;
    this.auth = { Authorization: `Bearer ${server.token(user)}` };
  }

  get api() {
    return `${this.server.url}/v1/ui/chat`;
  }

  transport() {
    return new DefaultChatTransport({ api: this.api, headers: this.auth });
  }

  async messages(chatId) {
    const res = await fetch(`${this.api}/${encodeURIComponent(chatId)}/messages`, {
      headers: this.auth,
    });
    if (!res.ok) throw new Error(`GET messages: ${res.status} ${await res.text()}`);
    return res.json();
  }

  async stop(chatId) {
    return fetch(`${this.api}/${encodeURIComponent(chatId)}/stop`, {
      method: 'POST',
      headers: this.auth,
    });
  }

  /** Send a user message with a raw POST and drop the answer at once: the turn goes on. */
  async startTurn(chatId, text, options) {
    const controller = new AbortController();
    const res = await fetch(this.api, {
      method: 'POST',
      headers: { ...this.auth, 'content-type': 'application/json' },
      body: JSON.stringify({
        id: chatId,
        trigger: 'submit-message',
        messages: [{ id: `u-${Math.random().toString(36).slice(2)}`, role: 'user', parts: [{ type: 'text', text }] }],
        options,
      }),
      signal: controller.signal,
    });
    if (!res.ok) throw new Error(`POST: ${res.status} ${await res.text()}`);
    controller.abort();
    return res;
  }

  chat(id, { messages = [] } = {}) {
    return new TestChat({ id, messages, transport: this.transport() });
  }
}

/** Plain state for AbstractChat (what `useChat` keeps in React), recording every status. */
class State {
  constructor(messages) {
    this.status = 'ready';
    this.error = undefined;
    this.messages = messages;
    this.statuses = [];
  }
  pushMessage = message => {
    this.messages = this.messages.concat(message);
  };
  popMessage = () => {
    this.messages = this.messages.slice(0, -1);
  };
  replaceMessage = (index, message) => {
    this.messages = [...this.messages.slice(0, index), message, ...this.messages.slice(index + 1)];
  };
  snapshot = value => structuredClone(value);
}

export class TestChat extends AbstractChat {
  constructor({ messages, ...init }) {
    const state = new State(messages);
    super({ ...init, state });
    this.recorded = state;
    // Record status changes (useChat re-renders on these).
    let status = state.status;
    Object.defineProperty(state, 'status', {
      get: () => status,
      set: value => {
        status = value;
        state.statuses.push(value);
      },
    });
  }
}

/** As JSON sees it (undefined keys dropped): what a client would store or compare. */
export const plain = value => JSON.parse(JSON.stringify(value));

export const textOf = message =>
  message.parts
    .filter(p => p.type === 'text')
    .map(p => p.text)
    .join('');

/** One line saying what a client assembled (for the suite's diagnostics). */
export function summary(message) {
  const parts = message.parts.map(p => {
    if (p.type === 'text' || p.type === 'reasoning') {
      return `${p.type}(${p.text.length} chars, ${p.state})`;
    }
    return p.type.startsWith('tool-') ? `${p.type}(${p.state})` : p.type;
  });
  return `${message.role}: [${parts.join(', ')}] metadata ${JSON.stringify(message.metadata)}`;
}
