// @ts-check
/**
 * The web chat. The conversation feed keeps the rows current; one EventSource per generating
 * row folds its overlay with the shared reducer; the timeline is `deriveTimeline(rows,
 * overlays)`, rendered by key so a streaming item keeps its node when the stream ends; an
 * answer's text is Markdown, rendered block by block (markdown.js).
 *
 * Auth: the bearer token comes in the URL fragment (`#token=…`, which browsers never send to
 * a server) or the sign-in form, and is traded at once for an HttpOnly session cookie
 * (`POST /v1/session`; docs/web.md says why): no script on the page holds it. Every request
 * sends `X-Turnlog-CSRF: 1`, without which the server ignores the cookie. EventSource cannot
 * send headers, so each stream uses a short-lived stream token of its conversation as `?token=`.
 *
 * The URL is the truth: `#c=<id>` names the conversation on screen. Opening one, New chat,
 * Back and Forward all go through `hashchange`, and a send goes to the conversation the URL
 * names (a new one when it names none).
 *
 * Resilience: a reload or a reconnect starts from the server's snapshot (feed) or `init`
 * (stream), never by appending a replay to what is shown. EventSource reconnects by itself
 * with `Last-Event-ID`; when it gives up (an HTTP error such as an expired token), the page
 * asks for a new token and opens it again. Events are folded in EventSource handlers (not in
 * timer loops, which background tabs throttle); the DOM is updated once per animation frame.
 */
import { renderMarkdown } from "./markdown.js";
import { applyStreamEvent, decodeBlocks, decodeEvent } from "./reducer.js";
import { activePath, dateGroup, deriveTimeline, siblings, stoppableRow } from "./timeline.js";

/** @typedef {import("./timeline.js").Row} Row */
/** @typedef {import("./timeline.js").Item} Item */
/** @typedef {import("./reducer.js").Blocks} Blocks */
/**
 * @typedef {{id: string, title: string | null, model: string, state: string, version: number,
 *   options?: Record<string, unknown>, system_prompt?: string | null, agent?: string | null,
 *   tools?: string[] | null, active_leaf_id?: string | null, updated_at?: string,
 *   created_at?: string, match?: string | null}} Conversation
 * @typedef {{blocks: Blocks | ReadonlyArray<any>, source: EventSource | null, retry: number,
 *   recovering: number}} Overlay
 * @typedef {{name: string, description?: string | null, template?: string}} Prompt
 * @typedef {{name: string, description?: string, kind?: string, approval?: boolean}} Tool
 */

const STREAM_EVENTS = [
  "text_delta", "reasoning_delta", "tool_call_started", "tool_call_delta", "tool_call_ready",
  "signature", "reasoning_redacted",
];

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));
/** @param {string} id */
const input = (id) => /** @type {HTMLInputElement} */ (document.getElementById(id));

const state = {
  /** @type {string | null} */ cid: null,
  /** @type {Conversation | null} */ conversation: null,
  /** @type {Map<string, Row>} */ rows: new Map(),
  /** @type {Map<string, Overlay>} */ overlays: new Map(),
  /** @type {EventSource | null} */ feed: null,
  /** @type {{token: string, expires: number, cid: string} | null} */ streamToken: null,
  /** @type {string[]} */ models: [],
  /** @type {{name: string}[]} */ agents: [],
  /** @type {Tool[]} */ tools: [],
  /** @type {Prompt[] | null} */ prompts: null,
  /** @type {Conversation[]} */ list: [],
  generation: 0, // bumped on every conversation switch: late callbacks of the old one stop
};

// -- auth and requests -----------------------------------------------------------------------

class ApiError extends Error {
  /** @param {number} status @param {string} detail */
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

/**
 * A request with the session cookie and the CSRF header (or a bearer token, to sign in).
 * @param {string} path
 * @param {{method?: string, body?: unknown, text?: boolean, bearer?: string, quiet401?: boolean}} [options]
 * @returns {Promise<any>}
 */
async function api(path, options = {}) {
  /** @type {Record<string, string>} */
  const headers = { "X-Turnlog-CSRF": "1" };
  if (options.bearer) headers.Authorization = `Bearer ${options.bearer}`;
  /** @type {RequestInit} */
  const init = { method: options.method ?? "GET", headers, credentials: "same-origin" };
  if (options.body !== undefined) {
    init.body = JSON.stringify(options.body);
    headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (response.status === 401 && !options.quiet401) showSignIn();
  if (!response.ok) {
    const detail = await response.json().then((j) => j.detail, () => response.statusText);
    throw new ApiError(response.status, detail);
  }
  if (response.status === 204) return null;
  return options.text ? response.text() : response.json();
}

/** A `#token=` in the URL, removed from it (keeping `#c=`, the open chat). */
function takeToken() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (!match) return null;
  const chat = chosenChat();
  history.replaceState(null, "", location.pathname + location.search + (chat ? `#c=${chat}` : ""));
  return decodeURIComponent(match[1]);
}

/** The conversation the URL names, or null. */
function chosenChat() {
  return /(?:^#|&)c=([0-9a-f-]+)/.exec(location.hash)?.[1] ?? null;
}

/** A stream token of `cid` with at least a minute left (a new one when not). */
async function streamToken(/** @type {string} */ cid) {
  const held = state.streamToken;
  if (held && held.cid === cid && held.expires - Date.now() > 60_000) return held.token;
  const { token, expires_at } = await api(`/v1/conversations/${cid}/stream-token`, { method: "POST" });
  state.streamToken = { token, cid, expires: Date.parse(expires_at) };
  return token;
}

function showSignIn() {
  closeAll();
  $("app").hidden = true;
  $("signin").hidden = false;
}

/**
 * A short message at the top of the page (never over the composer), with an optional action.
 * @param {string} text
 * @param {{label: string, run: () => void}} [action]
 */
function notice(text, action) {
  const el = $("notice");
  el.replaceChildren(text);
  if (action) {
    const button = el.appendChild(document.createElement("button"));
    button.type = "button";
    button.textContent = action.label;
    button.onclick = () => {
      el.hidden = true;
      action.run();
    };
  }
  el.hidden = false;
  clearTimeout(Number(el.dataset.timer));
  el.dataset.timer = String(setTimeout(() => { el.hidden = true; }, action ? 6000 : 4000));
}

/** @param {() => Promise<unknown>} action */
function act(action) {
  action().catch((/** @type {Error} */ e) => notice(e.message));
}

// -- where we are: the URL -------------------------------------------------------------------

/** Go to a conversation (or the empty state): a history entry; `route` does the rest. */
function navigate(/** @type {string | null} */ cid) {
  const hash = cid ? `#c=${cid}` : "";
  if (location.hash === hash || (!cid && location.hash === "#")) return route();
  if (cid) location.hash = hash;
  else history.pushState(null, "", location.pathname + location.search);
  route();
}

/** Show what the URL names (called on hashchange and popstate too). */
function route() {
  const cid = chosenChat();
  closeSidebar();
  if (cid === state.cid) return;
  if (cid) act(() => openConversation(cid));
  else showEmpty();
}
window.addEventListener("hashchange", route);
window.addEventListener("popstate", route);

// -- the feed and the streams ---------------------------------------------------------------

function closeAll() {
  state.generation++;
  state.feed?.close();
  state.feed = null;
  for (const overlay of state.overlays.values()) overlay.source?.close();
  state.overlays.clear();
}

function clearTimeline() {
  state.rows = new Map();
  state.conversation = null;
  nodes.forEach((node) => node.el.remove());
  nodes.clear();
}

function showEmpty() {
  closeAll();
  state.cid = null;
  clearTimeline();
  $("title").textContent = "New chat";
  $("empty").hidden = false;
  $("timeline").hidden = true;
  $("settings").hidden = true;
  $("settings-button").hidden = true;
  $("export").hidden = true;
  $("stop").hidden = true;
  connection("");
  /** @type {HTMLButtonElement} */ ($("send")).disabled = false;
  markCurrent();
}

/** @param {string} cid */
async function openConversation(cid) {
  closeAll();
  state.cid = cid;
  clearTimeline();
  $("empty").hidden = true;
  $("timeline").hidden = false;
  $("settings-button").hidden = false;
  $("export").hidden = false;
  $("title").textContent = "";
  markCurrent();
  act(renderList); // titles the server wrote meanwhile for the other conversations
  await openFeed(state.generation);
}

/** @param {number} generation */
async function openFeed(generation) {
  const cid = /** @type {string} */ (state.cid);
  let token;
  try {
    token = await streamToken(cid);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404 && generation === state.generation) {
      notice("That conversation does not exist (any more).");
      navigate(null);
      return;
    }
    throw error;
  }
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
    fillSettings();
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
      act(renderList);
      navigate(null);
      return;
    }
    const before = state.conversation;
    state.conversation = data.conversation;
    sync();
    if (before?.title !== data.conversation.title || before?.updated_at !== data.conversation.updated_at) act(renderList);
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

/** Open the feed again: a fresh snapshot (after the active path moved, say). */
function reopenFeed() {
  const cid = state.cid;
  if (!cid) return;
  closeAll();
  act(() => openFeed(state.generation));
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
      /** @type {Overlay} */
      const overlay = { blocks: row.blocks, source: null, retry: 0, recovering: 0 };
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
  // A turn continued after its process died: "recovering…" until it ends.
  source.addEventListener("recovering", (e) => {
    overlay.recovering = JSON.parse(e.data).attempt ?? 1;
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
document.addEventListener("visibilitychange", () => {
  if (document.hidden) return;
  render();
  if (!$("app").hidden) act(renderList);
});

/** @type {Map<string, {el: HTMLElement, kind: string, sig: string, editing?: boolean}>} */
const nodes = new Map();

function render() {
  const conv = state.conversation;
  if (!conv) return;
  const rows = activePath(state.rows.values(), conv.active_leaf_id);
  const items = deriveTimeline(rows, state.overlays);
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
  // A conversation with no message yet says what to do, like a new chat.
  $("empty").hidden = items.length > 0;
  list.hidden = items.length === 0;

  $("title").textContent = conv.title || "Untitled";
  document.title = `${conv.title || "Untitled"} · turnlog`;
  const busy = conv.state !== "idle";
  /** @type {HTMLButtonElement} */ ($("send")).disabled = busy;
  const stop = stoppableRow(items);
  $("stop").hidden = stop === null;
  $("stop").dataset.row = stop ?? "";
  const recovering = [...state.overlays.values()].some((o) => o.recovering > 0);
  if (recovering) connection("recovering…");
  else if ($("conn").dataset.state === "recovering…") connection("live");
}

/** What the DOM of an item depends on; text only grows, so its length stands for it. */
function signature(/** @type {Item} */ item) {
  switch (item.kind) {
    case "text":
    case "reasoning":
      return `${item.text.length}|${item.streaming}|${item.redacted}|${recoveringRow(item.row)}`;
    case "tool_call":
      return `${item.arguments_text.length}|${item.ready}|${item.streaming}|${item.awaiting}|${item.result}|${awaitingApproval(item)}|${state.conversation?.state}`;
    case "status":
      return `${item.status}|${item.retry}|${item.error}`;
    case "meta":
      return JSON.stringify(item) + (state.conversation?.state ?? "");
    default:
      return JSON.stringify(item);
  }
}

/** @param {string} row */
const recoveringRow = (row) => state.overlays.get(row)?.recovering ?? 0;

/** @param {string} tag @param {string} [cls] @param {string} [text] */
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

/**
 * @param {string} text @param {string} label @param {() => void} onclick @param {string} [cls]
 * @returns {HTMLButtonElement}
 */
function button(text, label, onclick, cls = "ghost") {
  const b = /** @type {HTMLButtonElement} */ (el("button", cls, text));
  b.type = "button";
  b.setAttribute("aria-label", label);
  b.title = label;
  b.onclick = onclick;
  return b;
}

/** @param {Item} item @returns {HTMLElement} */
function create(item) {
  const li = el("li", item.kind);
  li.dataset.key = item.key;
  li.dataset.row = item.row;
  if (item.kind === "user") {
    li.setAttribute("aria-label", "You said");
    const tools = el("div", "row-tools");
    tools.append(
      el("span", "versions"),
      el("time"),
      el("small", "edited"),
      button("Copy", "Copy message", () => copy(rowText(item.row)), "ghost copy"),
      button("Edit", "Edit message", () => startEdit(item.row), "ghost edit"),
    );
    li.append(el("div", "body"), tools);
  } else if (item.kind === "text") {
    li.setAttribute("aria-label", "Answer");
  } else if (item.kind === "reasoning") {
    const details = el("details");
    details.append(el("summary", "", "Reasoning"), el("pre"));
    li.append(details);
  } else if (item.kind === "tool_call") {
    const details = /** @type {HTMLDetailsElement} */ (el("details"));
    const summary = el("summary");
    summary.append(el("span", "name"), el("span", "state"));
    details.append(summary, el("pre", "args"), el("pre", "result"));
    li.append(details);
  } else if (item.kind === "status") {
    li.append(el("span", "what"), button("Retry", "Retry this answer", () =>
      act(() => api(`/v1/messages/${item.row}/retry`, { method: "POST" })), "retry"));
  } else if (item.kind === "meta") {
    li.setAttribute("aria-label", "About this answer");
  }
  return li;
}

/** The text a row shows (a user message, or an answer's text blocks). @param {string} id */
function rowText(id) {
  const row = state.rows.get(id);
  if (!row) return "";
  if (row.role === "user") return row.edited_content ?? row.content ?? "";
  return row.blocks.filter((b) => b.type === "text").map((b) => /** @type {any} */ (b).text).join("");
}

/** @param {string} text */
function copy(text) {
  navigator.clipboard.writeText(text).then(
    () => notice("Copied"),
    () => notice("The clipboard is not available here"),
  );
  document.body.dataset.copied = text; // what was copied, for whoever wants to look
}

/** @param {string | null} iso */
function shortTime(iso) {
  if (!iso) return "";
  const when = new Date(iso);
  const sameDay = when.toDateString() === new Date().toDateString();
  return sameDay
    ? when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : when.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

/** @param {HTMLElement} timeEl @param {string | null} iso */
function setTime(timeEl, iso) {
  timeEl.textContent = shortTime(iso);
  if (iso) {
    timeEl.setAttribute("datetime", iso);
    timeEl.title = new Date(iso).toLocaleString();
  }
}

/**
 * `‹ n/m ›` for a row with versions: the arrows select the previous or next sibling.
 * @param {HTMLElement} box @param {string} rowId @param {number} version @param {number} versions
 */
function versionArrows(box, rowId, version, versions) {
  box.replaceChildren();
  if (versions <= 1) return;
  box.append(
    button("‹", "Previous version", () => act(() => selectVersion(rowId, -1)), "ghost prev"),
    el("span", "count", `${version}/${versions}`),
    button("›", "Next version", () => act(() => selectVersion(rowId, +1)), "ghost next"),
  );
  /** @type {HTMLButtonElement} */ (box.querySelector(".prev")).disabled = version <= 1;
  /** @type {HTMLButtonElement} */ (box.querySelector(".next")).disabled = version >= versions;
}

/** Make the sibling `step` away from `rowId` the active version. */
async function selectVersion(/** @type {string} */ rowId, /** @type {number} */ step) {
  const { items } = await api(`/v1/conversations/${state.cid}/messages?all=true`);
  const versions = siblings(items, rowId);
  const at = versions.findIndex((r) => r.id === rowId);
  const target = versions[at + step];
  if (!target) return;
  await api(`/v1/messages/${target.id}/select`, { method: "POST" });
  reopenFeed();
}

/** @param {{el: HTMLElement, editing?: boolean}} node @param {Item} item */
function update(node, item) {
  const li = node.el;
  const q = (/** @type {string} */ s) => /** @type {HTMLElement} */ (li.querySelector(s));
  switch (item.kind) {
    case "user":
      if (!node.editing) q(".body").textContent = item.text;
      q(".edited").textContent = item.edited ? "(edited)" : "";
      setTime(q("time"), item.created_at);
      versionArrows(q(".versions"), item.row, item.version, item.versions);
      break;
    case "system":
      li.textContent = item.text;
      break;
    case "text": {
      renderMarkdown(li, item.text, item.streaming);
      li.classList.toggle("streaming", item.streaming);
      const recovering = recoveringRow(item.row);
      li.querySelector(".recovering")?.remove();
      if (recovering) li.append(el("p", "recovering", "recovering…"));
      break;
    }
    case "reasoning":
      q("summary").textContent = item.redacted ? "Reasoning (redacted)" : item.streaming ? "Reasoning…" : "Reasoning";
      q("pre").textContent = item.text;
      li.classList.toggle("streaming", item.streaming);
      break;
    case "tool_call": {
      const approval = awaitingApproval(item);
      const clientForm = awaitingClient(item);
      q(".name").textContent = item.name;
      q(".state").textContent = item.result !== null ? "done" : approval ? "waits for your approval"
        : item.awaiting || clientForm ? "waits for your answer" : item.ready ? "running…" : "…";
      q(".args").textContent = item.ready ? JSON.stringify(item.arguments, null, 2) : item.arguments_text;
      li.classList.toggle("streaming", item.streaming);
      const result = q(".result");
      result.textContent = item.result ?? "";
      result.hidden = item.result === null;
      li.querySelector("form.ask")?.remove();
      li.querySelector(".approval")?.remove();
      if (approval) li.append(approvalButtons(item));
      else if (item.awaiting || clientForm) li.append(askForm(item));
      // Open while it needs the user; folded once it has a result.
      /** @type {HTMLDetailsElement} */ (q("details")).open = item.result === null && (approval || item.awaiting || clientForm);
      break;
    }
    case "status":
      li.dataset.status = item.status;
      q(".what").textContent =
        item.status === "error" ? `error: ${item.error ?? "the model failed"}`
          : item.status === "aborted" ? "Stopped" : item.status;
      q(".retry").hidden = !item.retry;
      break;
    case "meta":
      renderMeta(li, item);
      break;
  }
}

/** Copy, model, time, usage, feedback, versions and Regenerate under a finished answer. */
function renderMeta(/** @type {HTMLElement} */ li, /** @type {import("./timeline.js").MetaItem} */ item) {
  const row = state.rows.get(item.row);
  const versioned = row !== undefined && row.versions !== undefined;
  const idle = state.conversation?.state === "idle";
  const parts = [];
  const arrows = el("span", "versions");
  versionArrows(arrows, item.first, item.version, item.versions);
  parts.push(arrows);
  parts.push(button("Copy", "Copy answer", () => copy(item.text), "ghost copy"));
  if (row && "feedback" in row) {
    for (const [rating, label] of /** @type {const} */ ([["up", "Good answer"], ["down", "Bad answer"]])) {
      const b = button("", label, () => act(() => api(`/v1/messages/${item.row}/feedback`, {
        method: "PUT", body: { rating: item.feedback === rating ? null : rating },
      }).then((fresh) => { state.rows.set(fresh.id, fresh); schedule(); })), `ghost thumb ${rating}`);
      b.setAttribute("aria-pressed", String(item.feedback === rating));
      b.append(thumb(rating));
      parts.push(b);
    }
  }
  if (versioned && idle) {
    parts.push(button("Regenerate", "Regenerate this answer", () => regenerate(item.row, null), "ghost regenerate"));
    const others = state.models.filter((m) => m !== item.model);
    if (others.length) {
      const pick = /** @type {HTMLSelectElement} */ (el("select", "regen-model"));
      pick.setAttribute("aria-label", "Regenerate with another model");
      pick.append(new Option("with…", ""), ...others.map((m) => new Option(m, m)));
      pick.onchange = () => { if (pick.value) regenerate(item.row, pick.value); };
      parts.push(pick);
    }
  }
  const info = [];
  if (item.model) info.push(el("span", "model", item.model));
  const time = el("time");
  setTime(time, item.created_at);
  info.push(time);
  if (item.usage) {
    const u = item.usage;
    const text = `${u.input_tokens ?? 0} in · ${u.output_tokens ?? 0} out`
      + (u.cache_hit ? " · cached" : u.cache_read_input_tokens ? ` · ${u.cache_read_input_tokens} cached` : "");
    const usage = el("span", "usage", text);
    usage.title = "tokens: prompt in, answer out";
    info.push(usage);
  }
  const infoBox = el("span", "info");
  info.forEach((part, i) => {
    if (i) infoBox.append(" · ");
    infoBox.append(part);
  });
  li.replaceChildren(...parts, infoBox);
}

/** A thumb icon (drawn here: an emoji font is not everywhere). @param {"up" | "down"} way */
function thumb(way) {
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", "14");
  svg.setAttribute("height", "14");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS(NS, "path");
  path.setAttribute("d", way === "up"
    ? "M7 10v11H4a1 1 0 0 1-1-1v-9a1 1 0 0 1 1-1zm0 0 4-8a3 3 0 0 1 3 3v4h5.5a2 2 0 0 1 2 2.3l-1.3 8a2 2 0 0 1-2 1.7H7"
    : "M17 14V3h3a1 1 0 0 1 1 1v9a1 1 0 0 1-1 1zm0 0-4 8a3 3 0 0 1-3-3v-4H4.5a2 2 0 0 1-2-2.3l1.3-8a2 2 0 0 1 2-1.7H17");
  path.setAttribute("fill", "none");
  path.setAttribute("stroke", "currentColor");
  path.setAttribute("stroke-width", "2");
  path.setAttribute("stroke-linejoin", "round");
  svg.append(path);
  return svg;
}

/** A new version of the turn `row` ends (with `model`, or the conversation's). */
function regenerate(/** @type {string} */ row, /** @type {string | null} */ model) {
  act(() => api(`/v1/messages/${row}/regenerate`, { method: "POST", body: model ? { model } : {} }));
}

/** Whether a tool call waits for the user's yes or no (tool approvals). @param {import("./timeline.js").ToolItem} item */
function awaitingApproval(item) {
  if (item.result !== null || !item.ready || state.conversation?.state !== "awaiting_input") return false;
  if (item.name === "ask_user") return false;
  const tool = state.tools.find((t) => t.name === item.name);
  return tool?.approval === true && tool.kind !== "client" && isLastRow(item.row);
}

/** Whether a client tool's call waits for the result the user gives. @param {import("./timeline.js").ToolItem} item */
function awaitingClient(item) {
  if (item.result !== null || !item.ready || state.conversation?.state !== "awaiting_input") return false;
  const tool = state.tools.find((t) => t.name === item.name);
  return tool?.kind === "client" && isLastRow(item.row);
}

/** @param {string} rowId */
function isLastRow(rowId) {
  let last = null;
  for (const r of state.rows.values()) if (!last || r.seq > last.seq) last = r;
  return last?.id === rowId;
}

/** Approve / Deny for a call that waits on approval. @param {import("./timeline.js").ToolItem} item */
function approvalButtons(item) {
  const box = el("div", "approval");
  const answer = (/** @type {boolean} */ approved) => act(() => api(`/v1/messages/${item.row}/tool-approvals`, {
    method: "POST", body: { tool_call_id: item.id, approved },
  }));
  box.append(button("Approve", `Approve ${item.name}`, () => answer(true), "primary approve"),
    button("Deny", `Deny ${item.name}`, () => answer(false), "deny"));
  return box;
}

/** An inline answer to an `ask_user` question or a client tool. @param {import("./timeline.js").ToolItem} item */
function askForm(item) {
  const form = /** @type {HTMLFormElement} */ (el("form", "ask"));
  const field = /** @type {HTMLInputElement} */ (el("input"));
  const question = /** @type {any} */ (item.arguments)?.question;
  field.placeholder = typeof question === "string" ? question : "Your answer";
  field.setAttribute("aria-label", typeof question === "string" ? question : `Result of ${item.name}`);
  const submit = el("button", "primary", "Answer");
  form.append(field, submit);
  form.onsubmit = (e) => {
    e.preventDefault();
    if (!field.value.trim()) return;
    act(() => api(`/v1/messages/${item.row}/tool-results`, {
      method: "POST",
      body: { tool_call_id: item.id, content: field.value },
    }));
  };
  return form;
}

/** Edit a user message in place; with versions, Save sends it again as a new version. @param {string} mid */
function startEdit(mid) {
  const node = nodes.get(mid);
  const row = state.rows.get(mid);
  if (!node || !row || node.editing) return;
  node.editing = true;
  const versioned = row.versions !== undefined;
  const body = /** @type {HTMLElement} */ (node.el.querySelector(".body"));
  const area = /** @type {HTMLTextAreaElement} */ (el("textarea"));
  area.value = row.edited_content ?? row.content ?? "";
  area.setAttribute("aria-label", "Edit message");
  const save = button(versioned ? "Send" : "Save", versioned ? "Send the edited message" : "Save the edit", () => {}, "primary save");
  const cancel = button("Cancel", "Cancel the edit", () => {}, "cancel");
  body.replaceChildren(area, save, cancel);
  area.focus();
  area.setSelectionRange(area.value.length, area.value.length);
  const done = () => {
    node.editing = false;
    const fresh = state.rows.get(mid) ?? row;
    body.textContent = fresh.edited_content ?? fresh.content ?? "";
    /** @type {HTMLElement} */ (node.el.querySelector(".edit")).focus();
  };
  cancel.onclick = done;
  save.onclick = () => act(async () => {
    await api(`/v1/conversations/${state.cid}/messages/${mid}`, {
      method: "PUT", body: versioned ? { content: area.value, resend: true } : { content: area.value },
    });
    done();
  });
  area.onkeydown = (e) => {
    if (e.key === "Escape") {
      e.preventDefault();
      done();
    } else if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      save.click();
    }
  };
}

// -- the sidebar -----------------------------------------------------------------------------

let searchSeq = 0;
async function renderList() {
  const q = input("search").value.trim();
  const mine = ++searchSeq;
  const { items } = await api(`/v1/conversations?limit=100${q ? `&q=${encodeURIComponent(q)}` : ""}`);
  if (mine !== searchSeq) return; // a later search answered first
  state.list = items;
  const nav = $("conversations");
  if (!items.length) {
    nav.replaceChildren(el("p", "none", q ? "No conversation matches." : "No conversations yet."));
    return;
  }
  /** @type {Map<string, HTMLUListElement>} */
  const groups = new Map();
  const out = [];
  for (const c of items) {
    const group = q ? "Results" : dateGroup(c.updated_at ?? c.created_at ?? "");
    let ul = groups.get(group);
    if (!ul) {
      ul = /** @type {HTMLUListElement} */ (el("ul"));
      groups.set(group, ul);
      const heading = el("h2", "", group);
      out.push(heading, ul);
    }
    ul.append(listItem(c));
  }
  nav.replaceChildren(...out);
}

/** @param {Conversation} c */
function listItem(c) {
  const li = el("li", c.id === state.cid ? "current" : "");
  li.dataset.id = c.id;
  const link = /** @type {HTMLAnchorElement} */ (el("a", "", c.title || "Untitled"));
  link.href = `#c=${c.id}`;
  if (c.id === state.cid) link.setAttribute("aria-current", "page");
  if (c.match) link.append(el("span", "match", c.match));
  const ops = el("span", "ops");
  ops.append(
    button("✎", `Rename ${c.title || "Untitled"}`, () => startRename(li, c), "ghost rename"),
    button("✕", `Delete ${c.title || "Untitled"}`, () => confirmDelete(li, c), "ghost delete"),
  );
  li.append(link, ops);
  return li;
}

function markCurrent() {
  for (const li of $("conversations").querySelectorAll("li[data-id]")) {
    const current = /** @type {HTMLElement} */ (li).dataset.id === state.cid;
    li.classList.toggle("current", current);
    const link = li.querySelector("a");
    if (current) link?.setAttribute("aria-current", "page");
    else link?.removeAttribute("aria-current");
  }
}

/** @param {HTMLElement} li @param {Conversation} c */
function startRename(li, c) {
  const field = /** @type {HTMLInputElement} */ (el("input"));
  field.value = c.title ?? "";
  field.setAttribute("aria-label", "New title");
  li.replaceChildren(field);
  field.focus();
  field.select();
  let finished = false;
  const finish = (/** @type {boolean} */ save) => {
    if (finished) return;
    finished = true;
    const title = field.value.trim();
    if (!save || title === (c.title ?? "")) {
      li.replaceWith(listItem(c));
      return;
    }
    act(async () => {
      const fresh = await api(`/v1/conversations/${c.id}`, { method: "PATCH", body: { title: title || null } });
      if (fresh.id === state.cid) {
        state.conversation = { ...state.conversation, ...fresh };
        render();
      }
      await renderList();
      /** @type {HTMLElement | null} */ ($("conversations").querySelector(`li[data-id="${c.id}"] .rename`))?.focus();
    });
  };
  field.onkeydown = (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      finish(true);
    } else if (e.key === "Escape") {
      e.preventDefault();
      finish(false);
    }
  };
  field.onblur = () => finish(true);
}

/** Delete after a confirmation in the list itself. @param {HTMLElement} li @param {Conversation} c */
function confirmDelete(li, c) {
  li.className = "confirm";
  const yes = button("Delete", `Delete ${c.title || "Untitled"} for good`, () => act(async () => {
    await api(`/v1/conversations/${c.id}`, { method: "DELETE" });
    notice(`Deleted “${c.title || "Untitled"}”`);
    if (state.cid === c.id) navigate(null);
    await renderList();
  }), "primary confirm-delete");
  const no = button("Cancel", "Keep it", () => {
    const fresh = listItem(c);
    li.replaceWith(fresh);
    /** @type {HTMLElement} */ (fresh.querySelector(".delete")).focus();
  }, "cancel-delete");
  li.replaceChildren(el("span", "", `Delete “${c.title || "Untitled"}”?`), yes, no);
  no.focus();
}

let searchTimer = 0;
input("search").oninput = () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => act(renderList), 200);
};

function openSidebar() {
  document.body.classList.add("sidebar-open");
  $("menu").setAttribute("aria-expanded", "true");
  $("search").focus();
}
function closeSidebar() {
  if (!document.body.classList.contains("sidebar-open")) return;
  document.body.classList.remove("sidebar-open");
  $("menu").setAttribute("aria-expanded", "false");
}
$("menu").onclick = openSidebar;
$("close-sidebar").onclick = () => {
  closeSidebar();
  $("menu").focus();
};
$("scrim").onclick = closeSidebar;

// -- settings --------------------------------------------------------------------------------

async function loadChoices() {
  const list = async (/** @type {string} */ path) => {
    try {
      return (await api(path, { quiet401: true })).items;
    } catch {
      return null; // a server without this list
    }
  };
  const [models, agents, tools, prompts] = await Promise.all([
    list("/v1/models"), list("/v1/agents"), list("/v1/tools"), list("/v1/prompts"),
  ]);
  state.models = (models ?? []).map((/** @type {{id: string}} */ m) => m.id);
  state.agents = agents ?? [];
  state.tools = tools ?? [];
  state.prompts = prompts;
}

/** The settings form from the conversation (when it is not being edited). */
function fillSettings() {
  const conv = state.conversation;
  if (!conv || !$("settings").hidden) return;
  const select = /** @type {HTMLSelectElement} */ ($("model"));
  const ids = state.models.includes(conv.model) || !conv.model ? state.models : [conv.model, ...state.models];
  select.replaceChildren(...ids.map((id) => new Option(id, id)));
  select.value = conv.model;
  const agent = /** @type {HTMLSelectElement} */ ($("agent"));
  agent.replaceChildren(new Option("none", ""), ...state.agents.map((a) => new Option(a.name, a.name)));
  agent.value = conv.agent ?? "";
  const temperature = conv.options?.temperature;
  input("temperature").value = typeof temperature === "number" ? String(temperature) : "";
  /** @type {HTMLTextAreaElement} */ ($("system-prompt")).value = conv.system_prompt ?? "";
  $("agent-field").hidden = !("agent" in conv) || state.agents.length === 0;
  $("tools-field").hidden = !("tools" in conv) || state.tools.length === 0;
  delete $("tools").dataset.dirty;
  const chosen = new Set(conv.tools ?? []);
  $("tools").replaceChildren(...state.tools.map((t) => {
    const label = el("label");
    const box = /** @type {HTMLInputElement} */ (el("input"));
    box.type = "checkbox";
    box.value = t.name;
    box.checked = chosen.has(t.name);
    label.append(box, ` ${t.name}`);
    if (t.description) label.title = t.description;
    return label;
  }));
}

function toggleSettings(/** @type {boolean} */ open) {
  if (open) {
    $("settings").hidden = true;
    fillSettings();
  }
  $("settings").hidden = !open;
  $("settings-button").setAttribute("aria-expanded", String(open));
  if (open) $("model").focus();
}
$("tools").onchange = () => { $("tools").dataset.dirty = "1"; };
$("settings-button").onclick = () => toggleSettings($("settings").hidden);
$("settings-close").onclick = () => {
  toggleSettings(false);
  $("settings-button").focus();
};
$("settings").onsubmit = (e) => {
  e.preventDefault();
  const conv = state.conversation;
  if (!conv) return;
  act(async () => {
    const options = { ...(conv.options ?? {}) };
    const temperature = input("temperature").value.trim();
    if (temperature) options.temperature = Number(temperature);
    else delete options.temperature;
    /** @type {Record<string, unknown>} */
    const patch = {
      model: /** @type {HTMLSelectElement} */ ($("model")).value,
      options,
      system_prompt: /** @type {HTMLTextAreaElement} */ ($("system-prompt")).value.trim() || null,
    };
    // Agent and tools only where this server has them (a field it does not know is a 400).
    if (!$("agent-field").hidden) patch.agent = /** @type {HTMLSelectElement} */ ($("agent")).value || null;
    // Tools only when the user changed them: null (the agent's or the default tools) stays.
    if (!$("tools-field").hidden && $("tools").dataset.dirty) {
      patch.tools = [...$("tools").querySelectorAll("input:checked")].map((b) => /** @type {HTMLInputElement} */ (b).value);
    }
    const fresh = await api(`/v1/conversations/${conv.id}`, { method: "PATCH", body: patch });
    state.conversation = { ...conv, ...fresh };
    toggleSettings(false);
    notice("Settings saved");
    render();
  });
};

// -- the composer ----------------------------------------------------------------------------

/** Send to the conversation the URL names; a new one when it names none. */
async function send(/** @type {string} */ content) {
  let cid = chosenChat();
  if (!cid) {
    const conv = await api("/v1/conversations", { method: "POST", body: {} });
    cid = /** @type {string} */ (conv.id);
    navigate(cid);
    await renderList();
  } else if (cid !== state.cid) {
    route();
  }
  await api(`/v1/conversations/${cid}/messages`, {
    method: "POST",
    body: { content, client_message_id: crypto.randomUUID() },
  });
}

$("composer").onsubmit = (e) => {
  e.preventDefault();
  const box = /** @type {HTMLTextAreaElement} */ ($("input"));
  const content = box.value;
  if (!content.trim() || /** @type {HTMLButtonElement} */ ($("send")).disabled) return;
  hideCommands();
  act(async () => {
    await send(content);
    if (box.value === content) box.value = "";
  });
};

/** The prompt commands matching what follows a leading `/`. */
function matchingCommands() {
  const text = /** @type {HTMLTextAreaElement} */ ($("input")).value;
  const match = /^\/(\S*)$/.exec(text);
  if (!match || !state.prompts?.length) return [];
  return state.prompts.filter((p) => p.name.startsWith(match[1]));
}

let commandIndex = 0;
function showCommands() {
  const found = matchingCommands();
  const list = $("commands");
  if (!found.length) return hideCommands();
  commandIndex = Math.min(commandIndex, found.length - 1);
  list.replaceChildren(...found.map((p, i) => {
    const li = el("li", "", `/${p.name}`);
    li.setAttribute("role", "option");
    li.id = `command-${i}`;
    li.setAttribute("aria-selected", String(i === commandIndex));
    if (p.description) li.append(el("small", "", p.description));
    li.onmousedown = (e) => {
      e.preventDefault();
      chooseCommand(p);
    };
    return li;
  }));
  list.hidden = false;
  $("input").setAttribute("aria-activedescendant", `command-${commandIndex}`);
}
function hideCommands() {
  $("commands").hidden = true;
  commandIndex = 0;
  $("input").removeAttribute("aria-activedescendant");
}
/** @param {Prompt} p */
function chooseCommand(p) {
  /** @type {HTMLTextAreaElement} */ ($("input")).value = `/${p.name} `;
  hideCommands();
  $("input").focus();
}

$("input").setAttribute("aria-controls", "commands");
$("input").oninput = showCommands;
$("input").onkeydown = (e) => {
  const box = /** @type {HTMLTextAreaElement} */ ($("input"));
  if (!$("commands").hidden) {
    const found = matchingCommands();
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      commandIndex = (commandIndex + (e.key === "ArrowDown" ? 1 : found.length - 1)) % found.length;
      showCommands();
      return;
    }
    if ((e.key === "Enter" || e.key === "Tab") && found[commandIndex]) {
      e.preventDefault();
      chooseCommand(found[commandIndex]);
      return;
    }
    if (e.key === "Escape") {
      e.preventDefault();
      hideCommands();
      return;
    }
  }
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    /** @type {HTMLFormElement} */ ($("composer")).requestSubmit();
  } else if (e.key === "Escape" && !$("stop").hidden) {
    e.preventDefault();
    $("stop").click();
  } else if (e.key === "ArrowUp" && box.value === "") {
    // ↑ in an empty box edits the last message (as in most chat apps).
    const users = [...$("timeline").querySelectorAll("li.user")];
    const last = /** @type {HTMLElement | undefined} */ (users.at(-1));
    if (last?.dataset.row) {
      e.preventDefault();
      startEdit(last.dataset.row);
    }
  }
};
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape") {
    if (document.body.classList.contains("sidebar-open")) {
      closeSidebar();
      $("menu").focus();
    } else if (!$("settings").hidden) {
      toggleSettings(false);
      $("settings-button").focus();
    } else if (!$("stop").hidden && e.target === document.body) {
      $("stop").click();
    }
  }
});

// Stop cancels the generation on the server; closing the tab only closes its streams.
$("stop").onclick = () => act(() => api(`/v1/messages/${$("stop").dataset.row}/cancel`, { method: "POST" }));
$("new-chat").onclick = () => {
  navigate(null);
  $("input").focus();
};
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
// A code block's Copy button (markdown.js draws them; one listener for all).
$("timeline").addEventListener("click", (e) => {
  const target = /** @type {HTMLElement} */ (e.target);
  if (!target.classList.contains("copy-code")) return;
  const code = target.closest("pre")?.querySelector("code");
  if (code) copy(code.textContent ?? "");
});
$("sign-out").onclick = () => act(async () => {
  await api("/v1/session", { method: "DELETE", quiet401: true });
  showSignIn();
});
$("signin-form").onsubmit = (e) => {
  e.preventDefault();
  act(async () => {
    await signIn(input("token").value.trim());
    input("token").value = "";
    await start();
  });
};

/** Trade a bearer token for the session cookie. @param {string} token */
async function signIn(token) {
  await api("/v1/session", { method: "POST", bearer: token, quiet401: true });
}

async function start() {
  const token = takeToken();
  if (token) {
    try {
      await signIn(token);
    } catch (error) {
      notice(`Signing in failed: ${/** @type {Error} */ (error).message}`);
    }
  }
  let who;
  try {
    who = await api("/v1/session", { quiet401: true });
  } catch {
    showSignIn();
    return;
  }
  $("signin").hidden = true;
  $("app").hidden = false;
  $("who").textContent = who.user;
  await loadChoices();
  await renderList();
  const chosen = chosenChat();
  if (chosen) await openConversation(chosen);
  else showEmpty();
  $("input").focus();
}

act(start);
