// @ts-check
/**
 * turnlog-reducer: fold a model's stream events into content blocks, purely and in linear
 * time. The JavaScript twin of the Python package `turnlog_reducer` (docs/protocol.md): the
 * same events, the same block JSON, the same laws, the same conformance files.
 *
 * State: `Blocks`, an immutable sequence of frozen block objects (`length`, `at(i)`,
 * iteration, `toJSON()`; `JSON.stringify` writes the block array). `applyStreamEvent` returns
 * a new `Blocks` and never changes its input; a plain array of blocks (an SSE `init`'s, a
 * message row's) is accepted as input too.
 *
 * Why it is linear: a delta builds its block's new text with `+`, which every JavaScript
 * engine implements as a rope (V8's ConsString, SpiderMonkey's and JavaScriptCore's ropes):
 * O(1), no copy of the text so far; the text is flattened once, when it is first read. The
 * blocks before the last are shared between versions the way the Python package shares them
 * (reducer/turnlog_reducer/_blocks.py): one append-only array plus the count a version sees
 * (a version that appends where nobody appended after it appends in place; an older version,
 * a fork, copies first), then a short tail of the most recent blocks, where a parallel tool
 * call's argument delta costs O(TAIL). Tool-call ids live in a registry of the same kind.
 *
 * @module turnlog-reducer
 */

/**
 * @typedef {{type: "text", text: string, signature?: string}} TextBlock
 * @typedef {{type: "reasoning", text: string, signature?: string, redacted?: true}} ReasoningBlock
 * @typedef {{type: "tool_call", id: string, name: string, arguments_text: string,
 *   arguments: unknown, ready: boolean, signature?: string}} ToolCallBlock
 * @typedef {TextBlock | ReasoningBlock | ToolCallBlock} Block
 *
 * @typedef {{type: "text_delta", text: string}} TextDelta
 * @typedef {{type: "reasoning_delta", text: string}} ReasoningDelta
 * @typedef {{type: "tool_call_started", id: string, name: string}} ToolCallStarted
 * @typedef {{type: "tool_call_delta", id: string, arguments_delta: string}} ToolCallDelta
 * @typedef {{type: "tool_call_ready", id: string, arguments: unknown}} ToolCallReady
 * @typedef {{type: "signature", signature: string}} Signature
 * @typedef {{type: "reasoning_redacted", data: string}} ReasoningRedacted
 * @typedef {"completed" | "interrupted" | "error" | "aborted"} DoneStatus
 * @typedef {{type: "done", status: DoneStatus, finish_reason?: string | null,
 *   usage?: Record<string, unknown> | null, error?: string | null,
 *   recovered?: number | null}} Done
 * @typedef {TextDelta | ReasoningDelta | ToolCallStarted | ToolCallDelta | ToolCallReady
 *   | Signature | ReasoningRedacted | Done} StreamEvent
 */

/** An event that is invalid where it stands: it names a tool call that is not there, starts
 * a tool call whose id is already taken, or signs a block when there is none. */
export class StreamProtocolError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = "StreamProtocolError";
  }
}

/** JSON that is not a valid event or block list: an unknown `type` or a field of the wrong
 * type (the twin of msgspec's `ValidationError`); the message says where. */
export class ValidationError extends TypeError {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = "ValidationError";
  }
}

const TAIL = 8; // how many blocks before the last stay cheap to change

/**
 * `items[:m]` then `item`: in place when nobody appended after `m` (we own the tail).
 * @template T
 * @param {T[]} items
 * @param {number} m
 * @param {T} item
 * @returns {T[]}
 */
function append(items, m, item) {
  if (items.length === m) {
    items.push(item);
    return items;
  }
  const copy = items.slice(0, m);
  copy.push(item);
  return copy;
}

/** The tool-call registry of one version: `pairs[:k]` are its `[id, block index]`. */
class Tools {
  /**
   * @param {[string, number][]} pairs
   * @param {number} k
   * @param {Map<string, number>} position id -> index into pairs; valid only below k
   */
  constructor(pairs, k, position) {
    this.pairs = pairs;
    this.k = k;
    this.position = position;
  }

  /** @param {string} id @returns {number} the block index of tool call `id`, or -1 */
  indexOf(id) {
    const p = this.position.get(id);
    return p === undefined || p >= this.k ? -1 : this.pairs[p][1];
  }

  /** @param {string} id @param {number} index @returns {Tools} */
  added(id, index) {
    const k = this.k;
    const pairs = append(this.pairs, k, /** @type {[string, number]} */ ([id, index]));
    // Forked: the shared map's positions at or above k belong to another version.
    const position =
      pairs === this.pairs ? this.position : new Map(pairs.slice(0, k).map(([i], p) => [i, p]));
    position.set(id, k);
    return new Tools(pairs, k + 1, position);
  }

  ids() {
    return this.pairs.slice(0, this.k).map(([id]) => id);
  }
}

/** An immutable sequence of blocks: the state `applyStreamEvent` returns. */
export class Blocks {
  /**
   * Internal: use `EMPTY`, `applyStreamEvent`, `decodeBlocks` or `Blocks.from`.
   * @param {Readonly<Block>[]} items  every block but the tail and the last: `items[:n]`
   * @param {number} n
   * @param {ReadonlyArray<Readonly<Block>>} tail  up to TAIL blocks before the last
   * @param {Readonly<Block> | undefined} last
   * @param {Tools} tools
   */
  constructor(items, n, tail, last, tools) {
    /** @private */ this._items = items;
    /** @private */ this._n = n;
    /** @private */ this._tail = tail;
    /** @private */ this._last = last;
    /** @private */ this._tools = tools;
  }

  /**
   * Blocks holding (frozen copies of) `blocks`, which are not validated: see `decodeBlocks`.
   * @param {Iterable<Block>} blocks
   * @returns {Blocks}
   */
  static from(blocks) {
    if (blocks instanceof Blocks) return blocks;
    let state = /** @type {Blocks} */ (EMPTY);
    for (const b of blocks) state = state._pushed(/** @type {Block} */ (Object.freeze({ ...b })));
    return state;
  }

  /** @returns {number} */
  get length() {
    return this._n + this._tail.length + (this._last === undefined ? 0 : 1);
  }

  /**
   * The block at `index` (negative counts from the end), or undefined.
   * @param {number} index
   * @returns {Readonly<Block> | undefined}
   */
  at(index) {
    const size = this.length;
    const i = index < 0 ? index + size : index;
    if (i < 0 || i >= size) return undefined;
    if (i === size - 1) return this._last;
    return i < this._n ? this._items[i] : this._tail[i - this._n];
  }

  /** @returns {IterableIterator<Readonly<Block>>} */
  *[Symbol.iterator]() {
    for (let i = 0; i < this._n; i++) yield this._items[i];
    yield* this._tail;
    if (this._last !== undefined) yield this._last;
  }

  /** The blocks as a plain array (what `JSON.stringify` writes). @returns {Readonly<Block>[]} */
  toArray() {
    return [...this];
  }

  /** @returns {Readonly<Block>[]} */
  toJSON() {
    return this.toArray();
  }

  /** @param {string} id @returns {number} @internal */
  _toolIndex(id) {
    return this._tools.indexOf(id);
  }

  /** @returns {string[]} @internal */
  _toolIds() {
    return this._tools.ids();
  }

  /**
   * A new version with `block` (frozen) appended as the last block.
   * @param {Readonly<Block>} block
   * @returns {Blocks}
   * @internal
   */
  _pushed(block) {
    let items = this._items;
    let n = this._n;
    /** @type {ReadonlyArray<Readonly<Block>>} */
    let tail = this._tail;
    if (this._last === undefined) {
      // Always a fresh array from empty: one shared by every fold from EMPTY would grow.
      items = [];
    } else {
      tail = [...tail, this._last];
      if (tail.length > TAIL) {
        items = append(items, n, tail[0]);
        tail = tail.slice(1);
        n += 1;
      }
    }
    const tools =
      block.type === "tool_call" ? this._tools.added(block.id, n + tail.length) : this._tools;
    return new Blocks(items, n, tail, block, tools);
  }

  /**
   * A new version with the block at `index` replaced (same kind, same id).
   * @param {number} index
   * @param {Readonly<Block>} block
   * @returns {Blocks}
   * @internal
   */
  _replaced(index, block) {
    const n = this._n;
    if (index === this.length - 1) return new Blocks(this._items, n, this._tail, block, this._tools);
    if (index >= n) {
      const tail = this._tail.slice();
      tail[index - n] = block;
      return new Blocks(this._items, n, tail, this._last, this._tools);
    }
    const items = this._items.slice(0, n); // an old block: O(number of blocks)
    items[index] = block;
    return new Blocks(items, n, this._tail, this._last, this._tools);
  }
}

/** The empty state. */
export const EMPTY = Object.freeze(new Blocks([], 0, [], undefined, new Tools([], 0, new Map())));

/**
 * @param {Blocks} blocks
 * @param {string} id
 * @param {string} eventType
 */
function known(blocks, id, eventType) {
  const index = blocks._toolIndex(id);
  if (index < 0) {
    const ids = blocks._toolIds().map((i) => JSON.stringify(i));
    throw new StreamProtocolError(
      `${eventType} for unknown tool call id ${JSON.stringify(id)}: expected the id of an ` +
        `earlier tool_call_started (known ids: ${ids.join(", ") || "none"})`,
    );
  }
  return index;
}

/** @param {Readonly<Block>} block */
function isRedacted(block) {
  return block.type === "reasoning" && block.redacted === true;
}

/**
 * Append `text` to the last block if it is an open (unsigned) `kind` block, else start one.
 * @param {Blocks} blocks
 * @param {"text" | "reasoning"} kind
 * @param {string} text
 * @returns {Blocks}
 */
function grow(blocks, kind, text) {
  if (!text) return blocks;
  const last = blocks.at(-1);
  // A signed (or redacted) block is sealed: a provider's proof covers exactly its text.
  if (last !== undefined && last.type === kind && last.signature === undefined && !isRedacted(last)) {
    return blocks._replaced(blocks.length - 1, Object.freeze({ type: kind, text: last.text + text }));
  }
  return blocks._pushed(Object.freeze({ type: kind, text }));
}

/**
 * Return the blocks after `event`; `blocks` itself is never changed.
 *
 * Throws `StreamProtocolError` for a `tool_call_delta` / `tool_call_ready` naming an unknown
 * id, a `tool_call_started` reusing one, or a `signature` with no block to sign.
 *
 * @param {Blocks | ReadonlyArray<Block>} input  a plain array is copied first (O(its length))
 * @param {StreamEvent} event
 * @returns {Blocks}
 */
export function applyStreamEvent(input, event) {
  const blocks = input instanceof Blocks ? input : Blocks.from(input);
  switch (event.type) {
    case "text_delta":
      return grow(blocks, "text", event.text);
    case "reasoning_delta":
      return grow(blocks, "reasoning", event.text);
    case "tool_call_started": {
      const taken = blocks._toolIndex(event.id);
      if (taken >= 0) {
        throw new StreamProtocolError(
          `tool_call_started with id ${JSON.stringify(event.id)}: expected a new id, ` +
            `but block ${taken} is already the tool call ${JSON.stringify(event.id)}`,
        );
      }
      return blocks._pushed(
        Object.freeze({
          type: "tool_call",
          id: event.id,
          name: event.name,
          arguments_text: "",
          arguments: null,
          ready: false,
        }),
      );
    }
    case "tool_call_delta": {
      const index = known(blocks, event.id, "tool_call_delta");
      if (!event.arguments_delta) return blocks;
      const old = /** @type {ToolCallBlock} */ (blocks.at(index));
      return blocks._replaced(
        index,
        Object.freeze({ ...old, arguments_text: old.arguments_text + event.arguments_delta }),
      );
    }
    case "tool_call_ready": {
      const index = known(blocks, event.id, "tool_call_ready");
      const old = /** @type {ToolCallBlock} */ (blocks.at(index));
      return blocks._replaced(index, Object.freeze({ ...old, arguments: event.arguments, ready: true }));
    }
    case "signature": {
      const index = blocks.length - 1;
      if (index < 0) {
        throw new StreamProtocolError(
          "signature with no block to sign: expected it after the block it signs",
        );
      }
      const old = /** @type {Block} */ (blocks.at(index));
      return blocks._replaced(index, Object.freeze({ ...old, signature: event.signature }));
    }
    case "reasoning_redacted":
      return blocks._pushed(
        Object.freeze({ type: "reasoning", text: "", signature: event.data, redacted: true }),
      );
    case "done":
      return blocks;
    default:
      throw new TypeError(
        `expected a stream event, got type ${JSON.stringify(/** @type {any} */ (event).type)}`,
      );
  }
}

/**
 * Apply `events` in order, starting from `blocks`; `fold(EMPTY, events)` is the state.
 * @param {Blocks | ReadonlyArray<Block>} blocks
 * @param {Iterable<StreamEvent>} events
 * @returns {Blocks}
 */
export function fold(blocks, events) {
  let state = blocks instanceof Blocks ? blocks : Blocks.from(blocks);
  for (const event of events) state = applyStreamEvent(state, event);
  return state;
}

// -- JSON ------------------------------------------------------------------------------------

const STATUSES = ["completed", "interrupted", "error", "aborted"];

/** @param {unknown} v */
function kindOf(v) {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  if (typeof v === "number") return Number.isInteger(v) ? "int" : "float";
  if (typeof v === "boolean") return "bool";
  if (typeof v === "string") return "str";
  return typeof v === "object" ? "object" : typeof v;
}

/**
 * @param {Record<string, unknown>} obj
 * @param {string} field
 * @param {string} where
 * @returns {string}
 */
function str(obj, field, where) {
  if (!(field in obj)) throw new ValidationError(`Object missing required field \`${field}\` - at \`${where}\``);
  const v = obj[field];
  if (typeof v !== "string") {
    throw new ValidationError(`Expected \`str\`, got \`${kindOf(v)}\` - at \`${where}.${field}\``);
  }
  return v;
}

/**
 * @param {Record<string, unknown>} obj
 * @param {string} field
 * @param {string} where
 * @param {"str" | "object" | "int"} expected
 */
function optional(obj, field, where, expected) {
  const v = obj[field];
  if (v === undefined || v === null) return undefined;
  if (kindOf(v) !== expected) {
    const want = `${expected} | null`;
    throw new ValidationError(`Expected \`${want}\`, got \`${kindOf(v)}\` - at \`${where}.${field}\``);
  }
  return v;
}

/**
 * @param {unknown} value
 * @param {string} where
 * @returns {Record<string, unknown>}
 */
function object(value, where) {
  if (kindOf(value) !== "object") {
    throw new ValidationError(`Expected \`object\`, got \`${kindOf(value)}\` - at \`${where}\``);
  }
  return /** @type {Record<string, unknown>} */ (value);
}

/**
 * One stream event from JSON text or an already parsed object, checked and in canonical
 * form (known fields only, `null` optionals left out). Throws `ValidationError` for an
 * unknown `type` or a field of the wrong type, `SyntaxError` for text that is not JSON.
 * @param {string | unknown} data
 * @returns {StreamEvent}
 */
export function decodeEvent(data) {
  return toEvent(typeof data === "string" ? JSON.parse(data) : data, "$");
}

/**
 * @param {unknown} value
 * @param {string} where
 * @returns {StreamEvent}
 */
function toEvent(value, where) {
  const o = object(value, where);
  const type = str(o, "type", where);
  switch (type) {
    case "text_delta":
    case "reasoning_delta":
      return { type, text: str(o, "text", where) };
    case "tool_call_started":
      return { type, id: str(o, "id", where), name: str(o, "name", where) };
    case "tool_call_delta":
      return { type, id: str(o, "id", where), arguments_delta: str(o, "arguments_delta", where) };
    case "tool_call_ready":
      if (!("arguments" in o)) {
        throw new ValidationError(`Object missing required field \`arguments\` - at \`${where}\``);
      }
      return { type, id: str(o, "id", where), arguments: o.arguments };
    case "signature":
      return { type, signature: str(o, "signature", where) };
    case "reasoning_redacted":
      return { type, data: str(o, "data", where) };
    case "done": {
      const status = o.status;
      if (typeof status !== "string" || !STATUSES.includes(status)) {
        throw new ValidationError(
          `Expected one of ${STATUSES.map((s) => `'${s}'`).join(", ")}, got ` +
            `${JSON.stringify(status) ?? "nothing"} - at \`${where}.status\``,
        );
      }
      /** @type {Done} */
      const done = { type, status: /** @type {DoneStatus} */ (status) };
      const finish = optional(o, "finish_reason", where, "str");
      const usage = optional(o, "usage", where, "object");
      const error = optional(o, "error", where, "str");
      const recovered = optional(o, "recovered", where, "int");
      if (finish !== undefined) done.finish_reason = /** @type {string} */ (finish);
      if (usage !== undefined) done.usage = /** @type {Record<string, unknown>} */ (usage);
      if (error !== undefined) done.error = /** @type {string} */ (error);
      if (recovered !== undefined) done.recovered = /** @type {number} */ (recovered);
      return done;
    }
    default:
      throw new ValidationError(`Invalid value ${JSON.stringify(type)} - at \`${where}.type\``);
  }
}

/**
 * Compact JSON of one event, fields in the contract's order, `null` optionals left out:
 * the bytes the Python `encode_event` writes.
 * @param {StreamEvent} event
 * @returns {string}
 */
export function encodeEvent(event) {
  return JSON.stringify(toEvent(event, "$"));
}

/**
 * @param {unknown} value
 * @param {string} where
 * @returns {Block}
 */
function toBlock(value, where) {
  const o = object(value, where);
  const type = str(o, "type", where);
  /** @type {Block} */
  let block;
  switch (type) {
    case "text":
      block = { type, text: str(o, "text", where) };
      break;
    case "reasoning":
      block = { type, text: str(o, "text", where) };
      break;
    case "tool_call": {
      const argsText = o.arguments_text === undefined ? "" : str(o, "arguments_text", where);
      const ready = o.ready === undefined ? false : o.ready;
      if (typeof ready !== "boolean") {
        throw new ValidationError(`Expected \`bool\`, got \`${kindOf(ready)}\` - at \`${where}.ready\``);
      }
      block = {
        type,
        id: str(o, "id", where),
        name: str(o, "name", where),
        arguments_text: argsText,
        arguments: o.arguments === undefined ? null : o.arguments,
        ready,
      };
      break;
    }
    default:
      throw new ValidationError(`Invalid value ${JSON.stringify(type)} - at \`${where}.type\``);
  }
  const signature = optional(o, "signature", where, "str");
  if (signature !== undefined) block.signature = /** @type {string} */ (signature);
  if (o.redacted !== undefined && o.redacted !== null && o.redacted !== false) {
    if (o.redacted !== true || block.type !== "reasoning") {
      throw new ValidationError(`Expected \`false\` or (on a reasoning block) \`true\` - at \`${where}.redacted\``);
    }
    block.redacted = true;
  }
  return Object.freeze(block);
}

/**
 * Blocks from a JSON array (text, or already parsed as in an SSE `init` or a message row).
 * Throws `ValidationError` on a bad shape.
 * @param {string | unknown} data
 * @returns {Blocks}
 */
export function decodeBlocks(data) {
  const value = typeof data === "string" ? JSON.parse(data) : data;
  if (!Array.isArray(value)) {
    throw new ValidationError(`Expected \`array\`, got \`${kindOf(value)}\` - at \`$\``);
  }
  return Blocks.from(value.map((b, i) => toBlock(b, `$[${i}]`)));
}

/**
 * The blocks as a JSON array: every field written (`"arguments": null` included), `signature`
 * and `redacted` only when set; the bytes the Python `encode_blocks` writes.
 * @param {Blocks | ReadonlyArray<Block>} blocks
 * @returns {string}
 */
export function encodeBlocks(blocks) {
  return JSON.stringify(Array.from(blocks, (b, i) => toBlock(b, `$[${i}]`)));
}
