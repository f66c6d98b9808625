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
 *   model?: string | null}} Row
 * @typedef {{blocks: Iterable<Readonly<Block>>}} Overlay
 *
 * @typedef {{key: string, kind: "user", row: string, text: string, edited: boolean}} UserItem
 * @typedef {{key: string, kind: "text" | "reasoning", row: string, text: string,
 *   streaming: boolean, redacted: boolean}} TextItem
 * @typedef {{key: string, kind: "tool_call", row: string, id: string, name: string,
 *   arguments_text: string, arguments: unknown, ready: boolean, streaming: boolean,
 *   result: string | null, awaiting: boolean}} ToolItem
 * @typedef {{key: string, kind: "status", row: string, status: string,
 *   error: string | null, retry: boolean}} StatusItem
 * @typedef {{key: string, kind: "system", row: string, text: string}} SystemItem
 * @typedef {UserItem | TextItem | ToolItem | StatusItem | SystemItem} Item
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
  for (const row of ordered) {
    if (row.role === "user") {
      items.push({
        key: row.id,
        kind: "user",
        row: row.id,
        text: row.edited_content ?? row.content ?? "",
        edited: row.edited_content !== null && row.edited_content !== undefined,
      });
      continue;
    }
    if (row.role === "system") {
      items.push({ key: row.id, kind: "system", row: row.id, text: row.content ?? "" });
      continue;
    }
    if (row.role !== "assistant") continue; // tool rows are shown inside their call
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
  }
  return items;
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
