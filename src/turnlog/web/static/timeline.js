// @ts-check
/**
 * The timeline the page shows, as a pure function of what it knows: the stored rows plus
 * the live overlay of generating rows (docs/web.md). No DOM, no clock: tested in Node (tests/web/timeline.test.mjs).
 *
 * - `rows`: the conversation's message rows as the feed last showed them (any order; they
 *   are shown in `seq` order).
 * - `overlays`: for a row still `generating`, the blocks its live stream has folded so far.
 *   A row that is no longer generating is shown from its stored blocks, overlay or not: the
 *   stored row decides that a turn ended, never the stream.
 *
 * Item keys depend only on the row id and the block index, so an item keeps its key (and its
 * DOM node) when a stream ends and the overlay gives way to the stored blocks.
 * @module timeline
 */

/**
 * @typedef {import("./reducer.js").Block} Block
 * @typedef {{id: string, seq: number, role: "user" | "assistant" | "tool" | "system",
 *   content: string | null, blocks: ReadonlyArray<Block>, status: string, error: string | null,
 *   tool_call_id: string | null, tool_name: string | null, edited_content: string | null,
 *   model?: string | null, created_at?: string, usage?: Usage | null,
 *   feedback?: {rating: "up" | "down" | null} | null, parent_id?: string | null,
 *   version?: number, versions?: number}} Row
 * @typedef {{input_tokens?: number, output_tokens?: number, cache_hit?: boolean,
 *   cache_read_input_tokens?: number}} Usage
 * @typedef {{blocks: Iterable<Readonly<Block>>}} Overlay
 *
 * @typedef {{key: string, kind: "user", row: string, text: string, edited: boolean,
 *   created_at: string | null, version: number, versions: number}} UserItem
 * @typedef {{key: string, kind: "text" | "reasoning", row: string, text: string,
 *   streaming: boolean, redacted: boolean}} TextItem
 * @typedef {{key: string, kind: "tool_call", row: string, id: string, name: string,
 *   arguments_text: string, arguments: unknown, ready: boolean, streaming: boolean,
 *   result: string | null, awaiting: boolean}} ToolItem
 * @typedef {{key: string, kind: "status", row: string, status: string,
 *   error: string | null, retry: boolean}} StatusItem
 * @typedef {{key: string, kind: "system", row: string, text: string}} SystemItem
 * @typedef {{key: string, kind: "meta", row: string, text: string, model: string | null,
 *   created_at: string | null, usage: Usage | null, feedback: "up" | "down" | null,
 *   version: number, versions: number, first: string}} MetaItem
 *   (under the last row of an assistant turn: the turn's text, the model, when, the turn's
 *   token usage summed over its rows, its feedback and its versions)
 * @typedef {UserItem | TextItem | ToolItem | StatusItem | SystemItem | MetaItem} Item
 */

const RETRYABLE = new Set(["interrupted", "error", "aborted"]);

/**
 * @param {Iterable<Row>} rows
 * @param {ReadonlyMap<string, Overlay>} overlays  by row id
 * @returns {Item[]}
 */
export function deriveTimeline(rows, overlays) {
  const ordered = [...rows].sort((a, b) => a.seq - b.seq);
  /** @type {Map<string, string>} tool_call_id -> result */
  const results = new Map();
  for (const row of ordered) {
    if (row.role === "tool" && row.tool_call_id !== null) {
      results.set(row.tool_call_id, row.content ?? "");
    }
  }
  // Only the newest turn can be waiting for the user; a later row means it moved on.
  const lastSeq = ordered.length ? ordered[ordered.length - 1].seq : 0;
  /** @type {Item[]} */
  const items = [];
  /** @type {Row[]} the assistant rows of the turn so far */
  let turn = [];
  ordered.forEach((row, index) => {
    if (row.role === "user") {
      turn = [];
      items.push({
        key: row.id,
        kind: "user",
        row: row.id,
        text: row.edited_content ?? row.content ?? "",
        edited: row.edited_content !== null && row.edited_content !== undefined,
        created_at: row.created_at ?? null,
        version: row.version ?? 1,
        versions: row.versions ?? 1,
      });
      return;
    }
    if (row.role === "system") {
      items.push({ key: row.id, kind: "system", row: row.id, text: row.content ?? "" });
      return;
    }
    if (row.role !== "assistant") return; // tool rows are shown inside their call
    turn.push(row);
    const generating = row.status === "generating";
    const overlay = generating ? overlays.get(row.id) : undefined;
    const blocks = overlay ? [...overlay.blocks] : [...row.blocks];
    blocks.forEach((block, i) => {
      const key = `${row.id}:${i}`;
      const last = i === blocks.length - 1;
      if (block.type === "tool_call") {
        const result = results.get(block.id) ?? null;
        items.push({
          key,
          kind: "tool_call",
          row: row.id,
          id: block.id,
          name: block.name,
          arguments_text: block.arguments_text,
          arguments: block.arguments,
          ready: block.ready,
          streaming: generating && last,
          result,
          awaiting:
            block.name === "ask_user" &&
            block.ready &&
            result === null &&
            row.status === "completed" &&
            row.seq === lastSeq,
        });
      } else {
        items.push({
          key,
          kind: block.type,
          row: row.id,
          text: block.text,
          streaming: generating && last,
          redacted: block.type === "reasoning" && block.redacted === true,
        });
      }
    });
    if (generating && blocks.length === 0) {
      // Nothing streamed yet: an empty text item holds the caret, under the key the first
      // block will have.
      items.push({ key: `${row.id}:0`, kind: "text", row: row.id, text: "", streaming: true, redacted: false });
    }
    if (row.status !== "completed" && !generating) {
      items.push({
        key: `${row.id}:status`,
        kind: "status",
        row: row.id,
        status: row.status,
        error: row.error,
        retry: RETRYABLE.has(row.status) && row.seq === lastSeq,
      });
    }
    const next = ordered.slice(index + 1).find((r) => r.role !== "tool");
    if (!generating && (next === undefined || next.role !== "assistant")) items.push(meta(turn));
  });
  return items;
}

/**
 * The meta item of a finished turn (its assistant rows, the last one ending it).
 * @param {Row[]} turn
 * @returns {MetaItem}
 */
function meta(turn) {
  const last = turn[turn.length - 1];
  const text = turn.flatMap((r) => r.blocks.filter((b) => b.type === "text").map((b) => /** @type {any} */ (b).text)).join("\n\n");
  const used = turn.flatMap((r) => (r.usage ? [r.usage] : []));
  /** @type {Usage | null} */
  const usage = used.length === 0 ? null : {
    input_tokens: used.reduce((n, u) => n + (u.input_tokens ?? 0), 0),
    output_tokens: used.reduce((n, u) => n + (u.output_tokens ?? 0), 0),
    cache_hit: used.some((u) => u.cache_hit === true),
    cache_read_input_tokens: used.reduce((n, u) => n + (u.cache_read_input_tokens ?? 0), 0),
  };
  return {
    key: `${last.id}:meta`,
    kind: "meta",
    row: last.id,
    text,
    model: last.model ?? null,
    created_at: last.created_at ?? null,
    usage,
    feedback: last.feedback?.rating ?? null,
    version: turn[0].version ?? 1,
    versions: turn[0].versions ?? 1,
    first: turn[0].id,
  };
}

/**
 * The row a Stop button cancels: the newest assistant row still generating, or the one whose
 * question waits for an answer (cancelling it withdraws the question).
 * @param {ReadonlyArray<Item>} items
 * @returns {string | null}
 */
export function stoppableRow(items) {
  for (let i = items.length - 1; i >= 0; i--) {
    const item = items[i];
    if ((item.kind === "text" || item.kind === "reasoning" || item.kind === "tool_call") && item.streaming) {
      return item.row;
    }
    if (item.kind === "tool_call" && item.awaiting) return item.row;
  }
  return null;
}

/**
 * The rows on the conversation's active path (versions): the ancestors of `leafId` and the
 * leaf, then below it the newest child at each step (a row created after the leaf moved is
 * shown before the conversation's change says so). Rows without `parent_id` (a server
 * without versions) or no leaf: every row.
 * @param {Iterable<Row>} rows
 * @param {string | null | undefined} leafId
 * @returns {Row[]}
 */
export function activePath(rows, leafId) {
  const all = [...rows];
  if (!leafId || !all.every((r) => r.parent_id !== undefined)) return all;
  const byId = new Map(all.map((r) => [r.id, r]));
  /** @type {Map<string | null, Row>} the newest child of each row */
  const newest = new Map();
  for (const r of all) {
    const key = r.parent_id ?? null;
    const held = newest.get(key);
    if (!held || held.seq < r.seq) newest.set(key, r);
  }
  /** @type {Row[]} */
  const path = [];
  for (let at = byId.get(leafId); at; at = at.parent_id ? byId.get(at.parent_id) : undefined) path.push(at);
  if (path.length === 0) return all;
  path.reverse();
  for (let below = newest.get(leafId); below; below = newest.get(below.id)) path.push(below);
  return path;
}

/**
 * The versions of `row` (its siblings, by seq), from every row of the conversation.
 * @param {Iterable<Row>} rows
 * @param {string} rowId
 * @returns {Row[]}
 */
export function siblings(rows, rowId) {
  const all = [...rows];
  const row = all.find((r) => r.id === rowId);
  if (!row) return [];
  return all.filter((r) => (r.parent_id ?? null) === (row.parent_id ?? null)).sort((a, b) => a.seq - b.seq);
}

/**
 * The sidebar's group of a conversation last changed at `iso`: Today, Yesterday, Previous 7
 * days, Previous 30 days, then month by month (in the browser's time zone).
 * @param {string} iso
 * @param {Date} [now]
 */
export function dateGroup(iso, now = new Date()) {
  const when = new Date(iso);
  if (Number.isNaN(when.getTime())) return "Older";
  const day = (/** @type {Date} */ d) => new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime();
  const days = Math.round((day(now) - day(when)) / 86_400_000);
  if (days <= 0) return "Today";
  if (days === 1) return "Yesterday";
  if (days <= 7) return "Previous 7 days";
  if (days <= 30) return "Previous 30 days";
  return when.toLocaleDateString([], { month: "long", year: "numeric" });
}
