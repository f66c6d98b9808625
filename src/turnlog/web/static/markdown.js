// @ts-check
/**
 * A model's answer as Markdown, rendered while it streams.
 *
 * Model output is untrusted. marked turns it into HTML with raw HTML escaped (a `<script>`
 * in an answer is shown as text), images shown as links (no request leaves for them), and
 * code highlighted by highlight.js; DOMPurify then sanitizes that HTML into a fragment (no
 * `javascript:` URL, no event handler, no style), and every link opens in a new tab with
 * `rel="noopener noreferrer"`. The page's Content-Security-Policy (no inline script, no
 * eval) stands behind all of it.
 *
 * Streaming: the text is split into top-level blocks (marked's lexer); each block is its own
 * element, kept while its source text is unchanged, so a finished paragraph or code block is
 * never re-rendered or re-laid out; only the last block (the one still growing) is. An
 * unclosed fence is a code block up to the end, an unfinished list a list: both render
 * sensibly mid-stream. Blocks before the last two are settled: later text is lexed from
 * where they end, so a long answer costs a frame what its tail costs. A code block still
 * streaming is plain text (highlighted when it is finished); one over HIGHLIGHT_MAX
 * characters is never highlighted; text the lexer cannot handle is shown as plain text.
 * @module markdown
 */
import { Marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.mjs";
import hljs from "./vendor/highlight/core.min.js";
import bash from "./vendor/highlight/bash.min.js";
import cpp from "./vendor/highlight/cpp.min.js";
import diff from "./vendor/highlight/diff.min.js";
import go from "./vendor/highlight/go.min.js";
import java from "./vendor/highlight/java.min.js";
import javascript from "./vendor/highlight/javascript.min.js";
import json from "./vendor/highlight/json.min.js";
import python from "./vendor/highlight/python.min.js";
import rust from "./vendor/highlight/rust.min.js";
import shell from "./vendor/highlight/shell.min.js";
import sql from "./vendor/highlight/sql.min.js";
import typescript from "./vendor/highlight/typescript.min.js";
import xml from "./vendor/highlight/xml.min.js";
import yaml from "./vendor/highlight/yaml.min.js";

const LANGUAGES = { bash, cpp, diff, go, java, javascript, json, python, rust, shell, sql, typescript, xml, yaml };
for (const [name, grammar] of Object.entries(LANGUAGES)) hljs.registerLanguage(name, grammar);

/** Longer code is shown without highlighting (highlight.js is linear but not free). */
export const HIGHLIGHT_MAX = 20_000;
/** Longer answers are shown as plain text: no Markdown parser pass over megabytes per frame. */
export const MARKDOWN_MAX = 200_000;

/** @param {string} s */
const escapeHtml = (s) =>
  s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c] ?? c);

/** A language name fit for a class attribute, or "". @param {string | undefined} lang */
const langOf = (lang) => (/^[\w+#.-]{1,32}$/.exec((lang ?? "").trim().split(/\s/)[0] ?? "")?.[0] ?? "").toLowerCase();

const marked = new Marked({ gfm: true, breaks: false });
marked.use({
  renderer: {
    // Raw HTML from a model is text, never markup.
    html(/** @type {{text: string}} */ { text }) {
      return escapeHtml(text);
    },
    // An image would be a request to wherever the model says (and the CSP forbids it): a link.
    image(/** @type {{href: string, text: string}} */ { href, text }) {
      return `<a href="${escapeHtml(href)}">${escapeHtml(text || href)}</a>`;
    },
    code(/** @type {{text: string, lang?: string}} */ { text, lang }) {
      const language = langOf(lang);
      let body = escapeHtml(text);
      if (text.length <= HIGHLIGHT_MAX && language && hljs.getLanguage(language)) {
        body = hljs.highlight(text, { language, ignoreIllegals: true }).value;
      }
      const cls = language ? ` class="hljs language-${language}"` : ` class="hljs"`;
      return `<pre data-lang="${language}"><code${cls}>${body}</code></pre>`;
    },
  },
});

DOMPurify.addHook("afterSanitizeAttributes", (/** @type {Element} */ node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});
const PURIFY = {
  RETURN_DOM_FRAGMENT: true,
  FORBID_TAGS: ["style", "img", "form", "button", "textarea", "select", "iframe", "svg", "math"],
  FORBID_ATTR: ["style", "id", "name"],
  ALLOW_DATA_ATTR: false,
  ADD_ATTR: ["target", "data-lang"],
};

/**
 * HTML of `tokens`, sanitized, as a fragment.
 * @param {any[]} tokens
 * @param {any} links
 * @returns {DocumentFragment}
 */
function toFragment(tokens, links) {
  const list = Object.assign([...tokens], { links });
  const html = marked.parser(/** @type {any} */ (list));
  const fragment = /** @type {DocumentFragment} */ (/** @type {unknown} */ (DOMPurify.sanitize(html, PURIFY)));
  // The newlines marked puts between elements are no text of the answer's.
  for (const node of [...fragment.childNodes]) {
    if (node.nodeType === Node.TEXT_NODE && !node.textContent?.trim()) node.remove();
  }
  return fragment;
}

/** A code block's head: its language and a copy button (the page handles its clicks). */
function decorate(/** @type {ParentNode} */ root) {
  for (const pre of root.querySelectorAll("pre")) {
    const head = document.createElement("div");
    head.className = "code-head";
    const lang = document.createElement("span");
    lang.textContent = pre.dataset.lang || "text";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy-code ghost";
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", "Copy code");
    head.append(lang, copy);
    pre.prepend(head);
  }
}

/**
 * @typedef {{raw: string, el: HTMLElement, streaming: boolean}} Block
 * @typedef {{text: string, blocks: Block[], settled: number, plain: boolean}} State
 */

/** @type {WeakMap<HTMLElement, State>} */
const states = new WeakMap();

/**
 * Show `text` as Markdown in `root`, reusing what is already there for the same prefix.
 * @param {HTMLElement} root
 * @param {string} text
 * @param {boolean} streaming  the text may still grow (the last block is provisional)
 */
export function renderMarkdown(root, text, streaming) {
  let state = states.get(root);
  if (!state || !text.startsWith(state.text.slice(0, settledChars(state)))) {
    state = { text: "", blocks: [], settled: 0, plain: false };
    states.set(root, state);
    root.replaceChildren();
  }
  if (text.length > MARKDOWN_MAX || state.plain) {
    plain(root, state, text);
    return;
  }
  const from = settledChars(state);
  /** @type {any[] & {links?: unknown}} */
  let tokens;
  try {
    tokens = marked.lexer(text.slice(from));
  } catch (error) {
    console.warn("turnlog: this answer is shown as plain text:", error);
    plain(root, state, text);
    return;
  }
  const links = tokens.links;
  const keep = state.blocks.slice(0, state.settled);
  const old = state.blocks.slice(state.settled);
  /** @type {Block[]} */
  const fresh = [];
  tokens.forEach((token, i) => {
    const last = i === tokens.length - 1;
    const live = streaming && last;
    const prior = old[i];
    if (prior && prior.raw === token.raw && prior.streaming === live) {
      fresh.push(prior);
      return;
    }
    const el = document.createElement("div");
    el.className = "md";
    if (live && token.type === "code") {
      // Still growing: plain text, cheap per frame; highlighted once it is finished.
      const pre = document.createElement("pre");
      pre.dataset.lang = langOf(token.lang);
      const code = document.createElement("code");
      code.className = "hljs";
      code.textContent = token.text;
      pre.append(code);
      el.append(pre);
    } else {
      try {
        el.append(toFragment([token], links));
      } catch (error) {
        console.warn("turnlog: a block is shown as plain text:", error);
        el.textContent = token.raw;
        el.classList.add("plain");
      }
    }
    decorate(el);
    if (prior) prior.el.replaceWith(el);
    else root.append(el);
    fresh.push({ raw: token.raw, el, streaming: live });
  });
  for (const gone of old.slice(tokens.length)) gone.el.remove();
  state.blocks = [...keep, ...fresh];
  state.text = text;
  // Settle all but the last two blocks: a list or a paragraph may still take the next line.
  state.settled = streaming ? Math.max(state.settled, state.blocks.length - 2) : state.settled;
}

/** @param {State} state */
function settledChars(state) {
  let n = 0;
  for (let i = 0; i < state.settled; i++) n += state.blocks[i].raw.length;
  return n;
}

/** @param {HTMLElement} root @param {State} state @param {string} text */
function plain(root, state, text) {
  if (!state.plain) {
    root.replaceChildren();
    const pre = document.createElement("pre");
    pre.className = "plain";
    root.append(pre);
    state.plain = true;
  }
  /** @type {HTMLElement} */ (root.firstElementChild).textContent = text;
  state.text = text;
}
