// @ts-check
/**
 * The web chat. The conversation feed keeps the rows current; one EventSource per generating
 * row folds its overlay with the shared reducer; the timeline is `deriveTimeline(rows,
 * overlays)`, rendered by key so a streaming item keeps its node when the stream ends.
 *
 * Auth: the bearer token comes in the URL fragment (`#token=…`, which browsers never send to
 * a server) and is kept in this tab's sessionStorage. EventSource cannot send headers, so
 * each stream uses a short-lived stream token of its conversation as `?token=`.
 *
 * Resilience: a reload or a reconnect starts from the server's snapshot (feed) or `init`
 * (stream), never by appending a replay to what is shown. EventSource reconnects by itself
 * with `Last-Event-ID`; when it gives up (an HTTP error such as an expired token), the page
 * asks for a new token and opens it again. Events are folded in EventSource handlers (not in
 * timer loops, which background tabs throttle); the DOM is updated once per animation frame.
 */
import { applyStreamEvent, decodeBlocks, decodeEvent } from "./reducer.js";
import { deriveTimeline, stoppableRow } from "./timeline.js";

/** @typedef {import("./timeline.js").Row} Row */
/** @typedef {import("./timeline.js").Item} Item */
/** @typedef {import("./reducer.js").Blocks} Blocks */
/** @typedef {{id: string, title: string | null, model: string, state: string, version: number}} Conversation */
/** @typedef {{blocks: Blocks | ReadonlyArray<any>, source: EventSource | null, retry: number}} Overlay */

const TOKEN_KEY = "turnlog.token";
const STREAM_EVENTS = [
  "text_delta", "reasoning_delta", "tool_call_started", "tool_call_delta", "tool_call_ready",
  "signature", "reasoning_redacted",
];

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));

const state = {
  /** @type {string | null} */ cid: null,
  /** @type {Conversation | null} */ conversation: null,
  /** @type {Map<string, Row>} */ rows: new Map(),
  /** @type {Map<string, Overlay>} */ overlays: new Map(),
  /** @type {EventSource | null} */ feed: null,
  /** @type {{token: string, expires: number, cid: string} | null} */ streamToken: null,
  /** @type {string[]} */ models: [],
  generation: 0, // bumped on every conversation switch: late callbacks of the old one stop
};

// -- auth and requests -----------------------------------------------------------------------

/** Move a `#token=` from the URL into session storage (keeping `#c=`, the open chat). */
function takeToken() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    const chat = chosenChat();
    history.replaceState(null, "", location.pathname + location.search + (chat ? `#c=${chat}` : ""));
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function chosenChat() {
  return /(?:^#|&)c=([0-9a-f-]+)/.exec(location.hash)?.[1] ?? null;
}

class ApiError extends Error {
  /** @param {number} status @param {string} detail */
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

/**
 * @param {string} path
 * @param {{method?: string, body?: unknown, text?: boolean}} [options]
 * @returns {Promise<any>}
 */
async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY)}` };
  /** @type {RequestInit} */
  const init = { method: options.method ?? "GET", headers };
  if (options.body !== undefined) {
    init.body = JSON.stringify(options.body);
    Object.assign(headers, { "Content-Type": "application/json" });
  }
  const response = await fetch(path, init);
  if (response.status === 401) signOut();
  if (!response.ok) {
    const detail = await response.json().then((j) => j.detail, () => response.statusText);
    throw new ApiError(response.status, detail);
  }
  if (response.status === 204) return null;
  return options.text ? response.text() : response.json();
}

/** A stream token of `cid` with at least a minute left (a new one when not). */
async function streamToken(/** @type {string} */ cid) {
  const held = state.streamToken;
  if (held && held.cid === cid && held.expires - Date.now() > 60_000) return held.token;
  const { token, expires_at } = await api(`/v1/conversations/${cid}/stream-token`, { method: "POST" });
  state.streamToken = { token, cid, expires: Date.parse(expires_at) };
  return token;
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  closeAll();
  $("chat").hidden = true;
  $("signin").hidden = false;
}

/** @param {string} text */
function notice(text) {
  const el = $("notice");
  el.textContent = text;
  el.hidden = false;
  clearTimeout(Number(el.dataset.timer));
  el.dataset.timer = String(setTimeout(() => { el.hidden = true; }, 4000));
}

/** @param {() => Promise<unknown>} action */
function act(action) {
  action().catch((/** @type {Error} */ e) => notice(e.message));
}

// -- the feed and the streams ---------------------------------------------------------------

function closeAll() {
  state.generation++;
  state.feed?.close();
  state.feed = null;
  for (const overlay of state.overlays.values()) overlay.source?.close();
  state.overlays.clear();
}

/** @param {string} cid */
async function openConversation(cid) {
  closeAll();
  state.cid = cid;
  state.rows = new Map();
  state.conversation = null;
  nodes.forEach((node) => node.el.remove());
  nodes.clear();
  history.replaceState(null, "", `#c=${cid}`);
  $("chat").hidden = false;
  act(renderList);
  await openFeed(state.generation);
}

/** @param {number} generation */
async function openFeed(generation) {
  const cid = /** @type {string} */ (state.cid);
  const token = await streamToken(cid);
  if (generation !== state.generation) return;
  const feed = new EventSource(`/v1/conversations/${cid}/live?token=${encodeURIComponent(token)}`);
  state.feed = feed;
  connection("connecting");
  // "live" once the snapshot is on the page (every feed, and every reconnect, starts with
  // one), not when the headers arrive: until then the page may still show older state.
  feed.addEventListener("snapshot", (e) => {
    const data = JSON.parse(e.data);
    state.conversation = data.conversation;
    state.rows = new Map(data.messages.map((/** @type {Row} */ m) => [m.id, m]));
    sync();
    connection("live");
  });
  feed.addEventListener("message", (e) => {
    const { message } = JSON.parse(e.data);
    state.rows.set(message.id, message);
    sync();
  });
  feed.addEventListener("conversation", (e) => {
    const data = JSON.parse(e.data);
    if (data.deleted) {
      closeAll();
      state.cid = null;
      $("chat").hidden = true;
      act(renderList);
      return;
    }
    state.conversation = data.conversation;
    sync();
    act(renderList);
  });
  feed.onerror = () => {
    if (feed.readyState !== EventSource.CLOSED) {
      connection("reconnecting"); // EventSource retries by itself, with Last-Event-ID
      return;
    }
    // Refused (an expired token, a restart that lost it, …): a new token, then again.
    connection("reconnecting");
    setTimeout(() => {
      if (generation === state.generation) openFeed(generation).catch(() => feed.onerror?.(new Event("error")));
    }, 1000);
  };
}

/** @param {string} text */
function connection(text) {
  $("conn").textContent = text;
  $("conn").dataset.state = text;
}

/** Open a stream for each generating row, drop overlays of rows that ended, render. */
function sync() {
  for (const row of state.rows.values()) {
    if (row.role === "assistant" && row.status === "generating" && !state.overlays.has(row.id)) {
      const overlay = { blocks: row.blocks, source: null, retry: 0 };
      state.overlays.set(row.id, overlay);
      openStream(row.id, overlay, state.generation).catch(() => {});
    }
  }
  for (const [id, overlay] of state.overlays) {
    const row = state.rows.get(id);
    if (!row || row.status !== "generating") {
      overlay.source?.close();
      state.overlays.delete(id);
    }
  }
  schedule();
}

/**
 * @param {string} mid
 * @param {Overlay} overlay
 * @param {number} generation
 */
async function openStream(mid, overlay, generation) {
  const token = await streamToken(/** @type {string} */ (state.cid));
  if (generation !== state.generation || state.overlays.get(mid) !== overlay) return;
  const source = new EventSource(`/v1/messages/${mid}/stream?token=${encodeURIComponent(token)}`);
  overlay.source = source;
  // Every (re)connection starts with init: the state at K, which replaces ours.
  source.addEventListener("init", (e) => {
    overlay.retry = 0;
    overlay.blocks = decodeBlocks(JSON.parse(e.data).blocks);
    schedule();
  });
  for (const type of STREAM_EVENTS) {
    source.addEventListener(type, (e) => {
      try {
        overlay.blocks = applyStreamEvent(overlay.blocks, decodeEvent(e.data));
      } catch (error) {
        console.error("turnlog: bad stream event; reopening the stream", error);
        source.close();
        setTimeout(() => reopen(), 0);
        return;
      }
      schedule();
    });
  }
  // `done` is advisory: the feed's row decides that the turn ended. Close so that
  // EventSource does not reconnect to a finished stream.
  source.addEventListener("done", () => source.close());
  const reopen = () => {
    if (generation !== state.generation || state.overlays.get(mid) !== overlay) return;
    openStream(mid, overlay, generation).catch(() => {});
  };
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      overlay.retry = Math.min(overlay.retry + 1, 5);
      setTimeout(reopen, 500 * overlay.retry);
    }
  };
}

// -- rendering -------------------------------------------------------------------------------

let scheduled = false;
function schedule() {
  if (scheduled) return;
  scheduled = true;
  // rAF does not run in a background tab: the state keeps folding there, and is drawn when
  // the tab is shown again (visibilitychange).
  requestAnimationFrame(() => {
    scheduled = false;
    render();
  });
}
document.addEventListener("visibilitychange", () => { if (!document.hidden) render(); });

/** @type {Map<string, {el: HTMLElement, kind: string, sig: string, editing?: boolean}>} */
const nodes = new Map();

function render() {
  const conv = state.conversation;
  if (!conv) return;
  const items = deriveTimeline(state.rows.values(), state.overlays);
  const list = $("timeline");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  /** @type {Set<string>} */
  const seen = new Set();
  /** @type {ChildNode | null} */
  let prev = null;
  for (const item of items) {
    seen.add(item.key);
    let node = nodes.get(item.key);
    if (!node || node.kind !== item.kind) {
      node?.el.remove();
      node = { el: create(item), kind: item.kind, sig: "" };
      nodes.set(item.key, node);
    }
    const sig = signature(item);
    if (sig !== node.sig) {
      update(node, item);
      node.sig = sig;
    }
    /** @type {ChildNode | null} */
    const want = prev ? prev.nextSibling : list.firstChild;
    if (want !== node.el) list.insertBefore(node.el, want);
    prev = node.el;
  }
  for (const [key, node] of nodes) {
    if (!seen.has(key)) {
      node.el.remove();
      nodes.delete(key);
    }
  }
  if (atBottom) list.scrollTop = list.scrollHeight;

  $("title").textContent = conv.title || "Untitled";
  const busy = conv.state !== "idle";
  /** @type {HTMLButtonElement} */ ($("send")).disabled = busy;
  const stop = stoppableRow(items);
  $("stop").hidden = stop === null;
  $("stop").dataset.row = stop ?? "";
  renderModels();
}

/** What the DOM of an item depends on; text only grows, so its length stands for it. */
function signature(/** @type {Item} */ item) {
  switch (item.kind) {
    case "text":
    case "reasoning":
      return `${item.text.length}|${item.streaming}|${item.redacted}`;
    case "tool_call":
      return `${item.arguments_text.length}|${item.ready}|${item.streaming}|${item.awaiting}|${item.result}`;
    case "status":
      return `${item.status}|${item.retry}|${item.error}`;
    default:
      return JSON.stringify(item);
  }
}

/** @param {string} tag @param {string} [cls] @param {string} [text] */
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

/** @param {Item} item @returns {HTMLElement} */
function create(item) {
  const li = el("li", item.kind);
  li.dataset.key = item.key;
  li.dataset.row = item.row;
  if (item.kind === "user") {
    li.append(el("span", "body"), el("small", "edited"), el("button", "edit", "Edit"));
    /** @type {HTMLElement} */ (li.querySelector(".edit")).onclick = () => startEdit(item.row);
  } else if (item.kind === "reasoning") {
    const details = el("details");
    details.append(el("summary", "", "Reasoning"), el("pre"));
    li.append(details);
  } else if (item.kind === "tool_call") {
    const head = el("div");
    head.append(el("span", "name"), el("span", "state"));
    li.append(head, el("pre", "args"), el("div", "result"));
  } else if (item.kind === "status") {
    li.append(el("span", "what"), el("button", "retry", "Retry"));
    /** @type {HTMLElement} */ (li.querySelector(".retry")).onclick = () =>
      act(() => api(`/v1/messages/${item.row}/retry`, { method: "POST" }));
  }
  return li;
}

/** @param {{el: HTMLElement, editing?: boolean}} node @param {Item} item */
function update(node, item) {
  const li = node.el;
  const q = (/** @type {string} */ s) => /** @type {HTMLElement} */ (li.querySelector(s));
  switch (item.kind) {
    case "user":
      if (!node.editing) q(".body").textContent = item.text;
      q(".edited").textContent = item.edited ? "(edited)" : "";
      break;
    case "system":
      li.textContent = item.text;
      break;
    case "text":
      li.textContent = item.text;
      li.classList.toggle("streaming", item.streaming);
      break;
    case "reasoning":
      q("summary").textContent = item.redacted ? "Reasoning (redacted)" : item.streaming ? "Reasoning…" : "Reasoning";
      q("pre").textContent = item.text;
      li.classList.toggle("streaming", item.streaming);
      break;
    case "tool_call": {
      q(".name").textContent = item.name;
      q(".state").textContent = item.result !== null ? " ✓" : item.ready ? "" : " …";
      q(".args").textContent = item.ready ? JSON.stringify(item.arguments, null, 2) : item.arguments_text;
      li.classList.toggle("streaming", item.streaming);
      const result = q(".result");
      result.textContent = item.result ?? "";
      result.hidden = item.result === null;
      li.querySelector("form.ask")?.remove();
      if (item.awaiting) li.append(askForm(item));
      break;
    }
    case "status":
      li.dataset.status = item.status;
      q(".what").textContent =
        item.status === "error" ? `error: ${item.error ?? "the model failed"}` : item.status;
      q(".retry").hidden = !item.retry;
      break;
  }
}

/** An inline answer to an `ask_user` question. @param {import("./timeline.js").ToolItem} item */
function askForm(item) {
  const form = /** @type {HTMLFormElement} */ (el("form", "ask"));
  const input = /** @type {HTMLInputElement} */ (el("input"));
  const question = /** @type {any} */ (item.arguments)?.question;
  input.placeholder = typeof question === "string" ? question : "Your answer";
  input.setAttribute("aria-label", "Answer");
  form.append(input, el("button", "", "Answer"));
  form.onsubmit = (e) => {
    e.preventDefault();
    if (!input.value.trim()) return;
    act(() => api(`/v1/messages/${item.row}/tool-results`, {
      method: "POST",
      body: { tool_call_id: item.id, content: input.value },
    }));
  };
  return form;
}

/** @param {string} mid */
function startEdit(mid) {
  const node = nodes.get(mid);
  const row = state.rows.get(mid);
  if (!node || !row || node.editing) return;
  node.editing = true;
  const body = /** @type {HTMLElement} */ (node.el.querySelector(".body"));
  const area = /** @type {HTMLTextAreaElement} */ (el("textarea"));
  area.value = row.edited_content ?? row.content ?? "";
  const save = el("button", "save", "Save");
  const cancel = el("button", "cancel", "Cancel");
  body.replaceChildren(area, save, cancel);
  const done = () => {
    node.editing = false;
    body.textContent = row.edited_content ?? row.content ?? "";
    const fresh = state.rows.get(mid);
    if (fresh) body.textContent = fresh.edited_content ?? fresh.content ?? "";
  };
  cancel.onclick = done;
  save.onclick = () => act(async () => {
    await api(`/v1/conversations/${state.cid}/messages/${mid}`, { method: "PUT", body: { content: area.value } });
    done();
  });
}

// -- the sidebar, the header, the composer ---------------------------------------------------

async function renderList() {
  const { items } = await api("/v1/conversations?limit=100");
  const ul = $("conversations");
  ul.replaceChildren(...items.map((/** @type {Conversation} */ c) => {
    const li = el("li", c.id === state.cid ? "current" : "", c.title || "Untitled");
    li.dataset.id = c.id;
    li.onclick = () => act(() => openConversation(c.id));
    return li;
  }));
}

async function loadModels() {
  try {
    const { items } = await api("/v1/models");
    state.models = items.map((/** @type {{id: string}} */ m) => m.id);
  } catch {
    state.models = []; // a server without the models list: the conversation's model only
  }
}

function renderModels() {
  const select = /** @type {HTMLSelectElement} */ ($("model"));
  const current = state.conversation?.model ?? "";
  const ids = state.models.includes(current) || !current ? state.models : [current, ...state.models];
  if (select.dataset.ids !== ids.join()) {
    select.replaceChildren(...ids.map((id) => new Option(id, id)));
    select.dataset.ids = ids.join();
  }
  select.value = current;
}

/** @type {HTMLSelectElement} */ ($("model")).onchange = (e) => act(async () => {
  const model = /** @type {HTMLSelectElement} */ (e.target).value;
  state.conversation = await api(`/v1/conversations/${state.cid}`, { method: "PATCH", body: { model } });
  render();
});

$("composer").onsubmit = (e) => {
  e.preventDefault();
  const input = /** @type {HTMLTextAreaElement} */ ($("input"));
  const content = input.value;
  if (!content.trim() || !state.cid) return;
  act(async () => {
    await api(`/v1/conversations/${state.cid}/messages`, {
      method: "POST",
      body: { content, client_message_id: crypto.randomUUID() },
    });
    input.value = "";
  });
};
$("input").onkeydown = (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    /** @type {HTMLFormElement} */ ($("composer")).requestSubmit();
  }
};
// Stop cancels the generation on the server; closing the tab only closes its streams.
$("stop").onclick = () => act(() => api(`/v1/messages/${$("stop").dataset.row}/cancel`, { method: "POST" }));
$("new-chat").onclick = () => act(async () => {
  const conv = await api("/v1/conversations", { method: "POST", body: {} });
  await openConversation(conv.id);
});
$("export").onclick = () => act(async () => {
  const lang = encodeURIComponent(navigator.language || "en");
  const markdown = await api(`/v1/conversations/${state.cid}/export?format=markdown&lang=${lang}`, { text: true });
  document.body.dataset.export = markdown; // what was copied, for whoever wants to look
  try {
    await navigator.clipboard.writeText(markdown);
    notice(`Copied the conversation as Markdown (${markdown.length} characters)`);
  } catch {
    notice("The clipboard is not available here; the Markdown was not copied");
  }
});
$("signin-form").onsubmit = (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, /** @type {HTMLInputElement} */ ($("token")).value.trim());
  start();
};

async function start() {
  if (!takeToken()) {
    $("signin").hidden = false;
    return;
  }
  $("signin").hidden = true;
  await loadModels();
  await renderList();
  const chosen = chosenChat();
  if (chosen) await openConversation(chosen);
}

act(start);
