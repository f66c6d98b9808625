// A fake OpenAI-compatible model server on loopback for the browser suite: `POST
// /v1/chat/completions` streams a scripted answer, chosen by the first word of the last user
// message, in chunks of `chunk` characters, `delay` ms apart (per script, or the defaults).
// The demo provider cannot write Markdown or hostile text; this can, through turnlog's real
// `openai` provider.
import { createServer } from "node:http";

/**
 * @param {Record<string, string | {text?: string, chunk?: number, delay?: number,
 *   toolCall?: {name: string, arguments: unknown}}>} scripts
 *   first word of the user's message -> the answer (text, then a tool call if given)
 * @param {{chunk?: number, delay?: number}} [defaults]
 */
export async function fakeOpenAI(scripts, defaults = {}) {
  const requests = [];
  const server = createServer(async (req, res) => {
    let body = "";
    for await (const part of req) body += part;
    if (req.method !== "POST" || !req.url?.endsWith("/chat/completions")) {
      res.writeHead(404, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { message: `no ${req.method} ${req.url} here` } }));
      return;
    }
    const request = JSON.parse(body);
    requests.push(request);
    const text = (m) => (typeof m?.content === "string" ? m.content : (m?.content ?? []).map((p) => p.text ?? "").join(""));
    const lastMessage = request.messages.at(-1);
    const last = [...request.messages].reverse().find((m) => m.role === "user");
    const said = text(last);
    // After a tool's result: say what came back (no second call).
    const script = lastMessage?.role === "tool" ? `Got: ${text(lastMessage)}`
      : scripts[said.trim().split(/\s/)[0]] ?? `You said: ${said}`;
    const { text: answer = "", chunk = defaults.chunk ?? 64, delay = defaults.delay ?? 0, toolCall } =
      typeof script === "string" ? { text: script } : script;
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    const frame = (choices, extra = {}) =>
      `data: ${JSON.stringify({ id: "chatcmpl-1", object: "chat.completion.chunk", created: 0, model: request.model, choices, ...extra })}\n\n`;
    res.write(frame([{ index: 0, delta: { role: "assistant", content: "" }, finish_reason: null }]));
    for (let i = 0; i < answer.length; i += chunk) {
      const ok = res.write(frame([{ index: 0, delta: { content: answer.slice(i, i + chunk) }, finish_reason: null }]));
      if (!ok) await new Promise((r) => res.once("drain", r));
      if (delay) await new Promise((r) => setTimeout(r, delay));
    }
    if (toolCall) {
      // A call of the tool `toolCall.name` with `toolCall.arguments`, in two argument pieces.
      const args = JSON.stringify(toolCall.arguments);
      res.write(frame([{ index: 0, delta: { tool_calls: [{ index: 0, id: "call_1", type: "function",
        function: { name: toolCall.name, arguments: args.slice(0, 5) } }] }, finish_reason: null }]));
      res.write(frame([{ index: 0, delta: { tool_calls: [{ index: 0, function: { arguments: args.slice(5) } }] }, finish_reason: null }]));
    }
    res.write(frame([{ index: 0, delta: {}, finish_reason: toolCall ? "tool_calls" : "stop" }]));
    res.write(frame([], { usage: { prompt_tokens: 12, completion_tokens: Math.ceil(answer.length / 4), total_tokens: 0 } }));
    res.end("data: [DONE]\n\n");
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const { port } = /** @type {import("node:net").AddressInfo} */ (server.address());
  return { url: `http://127.0.0.1:${port}/v1`, requests, close: () => server.close() };
}
