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
export function applyStreamEvent(input: Blocks | ReadonlyArray<Block>, event: StreamEvent): Blocks;
/**
 * Apply `events` in order, starting from `blocks`; `fold(EMPTY, events)` is the state.
 * @param {Blocks | ReadonlyArray<Block>} blocks
 * @param {Iterable<StreamEvent>} events
 * @returns {Blocks}
 */
export function fold(blocks: Blocks | ReadonlyArray<Block>, events: Iterable<StreamEvent>): Blocks;
/**
 * One stream event from JSON text or an already parsed object, checked and in canonical
 * form (known fields only, `null` optionals left out). Throws `ValidationError` for an
 * unknown `type` or a field of the wrong type, `SyntaxError` for text that is not JSON.
 * @param {string | unknown} data
 * @returns {StreamEvent}
 */
export function decodeEvent(data: string | unknown): StreamEvent;
/**
 * Compact JSON of one event, fields in the contract's order, `null` optionals left out:
 * the bytes the Python `encode_event` writes.
 * @param {StreamEvent} event
 * @returns {string}
 */
export function encodeEvent(event: StreamEvent): string;
/**
 * Blocks from a JSON array (text, or already parsed as in an SSE `init` or a message row).
 * Throws `ValidationError` on a bad shape.
 * @param {string | unknown} data
 * @returns {Blocks}
 */
export function decodeBlocks(data: string | unknown): Blocks;
/**
 * The blocks as a JSON array: every field written (`"arguments": null` included), `signature`
 * and `redacted` only when set; the bytes the Python `encode_blocks` writes.
 * @param {Blocks | ReadonlyArray<Block>} blocks
 * @returns {string}
 */
export function encodeBlocks(blocks: Blocks | ReadonlyArray<Block>): string;
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
    constructor(message: string);
}
/** JSON that is not a valid event or block list: an unknown `type` or a field of the wrong
 * type (the twin of msgspec's `ValidationError`); the message says where. */
export class ValidationError extends TypeError {
    /** @param {string} message */
    constructor(message: string);
}
/** An immutable sequence of blocks: the state `applyStreamEvent` returns. */
export class Blocks {
    /**
     * Blocks holding (frozen copies of) `blocks`, which are not validated: see `decodeBlocks`.
     * @param {Iterable<Block>} blocks
     * @returns {Blocks}
     */
    static from(blocks: Iterable<Block>): Blocks;
    /**
     * Internal: use `EMPTY`, `applyStreamEvent`, `decodeBlocks` or `Blocks.from`.
     * @param {Readonly<Block>[]} items  every block but the tail and the last: `items[:n]`
     * @param {number} n
     * @param {ReadonlyArray<Readonly<Block>>} tail  up to TAIL blocks before the last
     * @param {Readonly<Block> | undefined} last
     * @param {Tools} tools
     */
    constructor(items: Readonly<Block>[], n: number, tail: ReadonlyArray<Readonly<Block>>, last: Readonly<Block> | undefined, tools: Tools);
    /** @private */ private _items;
    /** @private */ private _n;
    /** @private */ private _tail;
    /** @private */ private _last;
    /** @private */ private _tools;
    /** @returns {number} */
    get length(): number;
    /**
     * The block at `index` (negative counts from the end), or undefined.
     * @param {number} index
     * @returns {Readonly<Block> | undefined}
     */
    at(index: number): Readonly<Block> | undefined;
    /** The blocks as a plain array (what `JSON.stringify` writes). @returns {Readonly<Block>[]} */
    toArray(): Readonly<Block>[];
    /** @returns {Readonly<Block>[]} */
    toJSON(): Readonly<Block>[];
    /** @param {string} id @returns {number} @internal */
    _toolIndex(id: string): number;
    /** @returns {string[]} @internal */
    _toolIds(): string[];
    /**
     * A new version with `block` (frozen) appended as the last block.
     * @param {Readonly<Block>} block
     * @returns {Blocks}
     * @internal
     */
    _pushed(block: Readonly<Block>): Blocks;
    /**
     * A new version with the block at `index` replaced (same kind, same id).
     * @param {number} index
     * @param {Readonly<Block>} block
     * @returns {Blocks}
     * @internal
     */
    _replaced(index: number, block: Readonly<Block>): Blocks;
    /** @returns {IterableIterator<Readonly<Block>>} */
    [Symbol.iterator](): IterableIterator<Readonly<Block>>;
}
/** The empty state. */
export const EMPTY: Readonly<Blocks>;
export type TextBlock = {
    type: "text";
    text: string;
    signature?: string;
};
export type ReasoningBlock = {
    type: "reasoning";
    text: string;
    signature?: string;
    redacted?: true;
};
export type ToolCallBlock = {
    type: "tool_call";
    id: string;
    name: string;
    arguments_text: string;
    arguments: unknown;
    ready: boolean;
    signature?: string;
};
export type Block = TextBlock | ReasoningBlock | ToolCallBlock;
export type TextDelta = {
    type: "text_delta";
    text: string;
};
export type ReasoningDelta = {
    type: "reasoning_delta";
    text: string;
};
export type ToolCallStarted = {
    type: "tool_call_started";
    id: string;
    name: string;
};
export type ToolCallDelta = {
    type: "tool_call_delta";
    id: string;
    arguments_delta: string;
};
export type ToolCallReady = {
    type: "tool_call_ready";
    id: string;
    arguments: unknown;
};
export type Signature = {
    type: "signature";
    signature: string;
};
export type ReasoningRedacted = {
    type: "reasoning_redacted";
    data: string;
};
export type DoneStatus = "completed" | "interrupted" | "error" | "aborted";
export type Done = {
    type: "done";
    status: DoneStatus;
    finish_reason?: string | null;
    usage?: Record<string, unknown> | null;
    error?: string | null;
    recovered?: number | null;
};
export type StreamEvent = TextDelta | ReasoningDelta | ToolCallStarted | ToolCallDelta | ToolCallReady | Signature | ReasoningRedacted | Done;
/** The tool-call registry of one version: `pairs[:k]` are its `[id, block index]`. */
declare class Tools {
    /**
     * @param {[string, number][]} pairs
     * @param {number} k
     * @param {Map<string, number>} position id -> index into pairs; valid only below k
     */
    constructor(pairs: [string, number][], k: number, position: Map<string, number>);
    pairs: [string, number][];
    k: number;
    position: Map<string, number>;
    /** @param {string} id @returns {number} the block index of tool call `id`, or -1 */
    indexOf(id: string): number;
    /** @param {string} id @param {number} index @returns {Tools} */
    added(id: string, index: number): Tools;
    ids(): string[];
}
export {};
