// The web chat in a real Chromium (playwright-core, Debian's /usr/bin/chromium) against a real
// `turnlog serve` on loopback: embedded PostgreSQL in a temp data dir, an ephemeral port.
// Screenshots of the main states go to test-artifacts/web/ (printed at the end).
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { after, before, describe, test } from "node:test";

import {
  ARTIFACTS, Turnlog, dropProxy, freePort, launchBrowser, newPage, screenshot, screenshots, storedText, waitFor,
} from "./support.mjs";

// Slow enough to act mid-answer on a loaded 2-core machine, short enough to finish soon.
const SLOW = { tokens_per_second: 12, length: 70 };

/** A page that is served from another origin (another port) than the API. */
async function otherOrigin() {
  const port = await freePort();
  const server = createServer((_, res) => {
    res.writeHead(200, { "Content-Type": "text/html" });
    res.end("<!doctype html><title>elsewhere</title><p>another origin</p>");
  });
  await new Promise((r) => server.listen(port, "127.0.0.1", r));
  return { server, origin: `http://127.0.0.1:${port}` };
}

describe("the web chat in Chromium", () => {
  /** @type {Turnlog} */ let turnlog;
  let browser;
  let allowed;
  let refused;
  const shots = [];

  before(async () => {
    [allowed, refused] = await Promise.all([otherOrigin(), otherOrigin()]);
    turnlog = await new Turnlog({ TURNLOG_CORS_ORIGINS: allowed.origin }).start();
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await turnlog?.stop();
    allowed?.server.close();
    refused?.server.close();
    if (shots.length) console.log(`screenshots (${ARTIFACTS}):\n  ${shots.join("\n  ")}`);
    if (turnlog) console.log(`server log: ${turnlog.logPath}`);
  });

  /** Open the printed URL on the conversation `cid`. */
  async function open(cid) {
    const page = await newPage(browser);
    await page.goto(`${turnlog.webUrl}&c=${cid}`);
    await page.waitForSelector("#conn[data-state=live]");
    return page;
  }

  async function send(page, text) {
    await page.fill("#input", text);
    await page.click("#send");
  }

  /** The last assistant text item's words, and whether it still streams. */
  async function lastText(page) {
    return page.evaluate(() => {
      const items = [...document.querySelectorAll("#timeline li.text")];
      const li = items.at(-1);
      return li ? { text: li.textContent, streaming: li.classList.contains("streaming") } : null;
    });
  }

  async function lastAssistant(cid) {
    return (await turnlog.messages(cid)).filter((m) => m.role === "assistant").at(-1);
  }

  test("the printed URL signs in, keeps the token out of the URL and of scripts, and lists the chats", async () => {
    const conv = await turnlog.conversation(SLOW, "listed chat");
    const page = await newPage(browser);
    await page.goto(turnlog.webUrl);
    await page.waitForSelector(`#conversations li[data-id="${conv.id}"]`);
    assert.equal(new URL(page.url()).hash, "");
    // The token now lives in an HttpOnly cookie: nothing a script can read holds it.
    const readable = await page.evaluate(() => JSON.stringify([document.cookie, { ...sessionStorage }, { ...localStorage }]));
    assert.ok(!readable.includes(turnlog.token.split(".")[2]), readable);
    await page.click(`#conversations li[data-id="${conv.id}"]`);
    await page.waitForSelector("#conn[data-state=live]");
    assert.equal(await page.textContent("#title"), "listed chat");
    assert.ok((await page.$$eval("#model option", (os) => os.map((o) => o.value))).includes("demo:default"));
    await page.close();
  });

  test("send, watch the stream with a caret, and end on the stored text; edit and export", async () => {
    const conv = await turnlog.conversation({ tokens_per_second: 25, length: 50, reasoning: true });
    const page = await open(conv.id);
    await send(page, "Tell me about event sourcing");
    await waitFor(async () => {
      const last = await lastText(page);
      return last?.streaming && last.text.split(" ").length > 5;
    }, { what: "streaming text" });
    shots.push(await screenshot(page, "1-streaming"));
    assert.equal(await page.isVisible("#stop"), true);
    assert.equal(await page.isDisabled("#send"), true);
    assert.equal(await page.$eval("li.reasoning details", (d) => d.open), false, "reasoning starts collapsed");
    await waitFor(async () => !(await page.isDisabled("#send")), { what: "the turn to end" });
    const row = await lastAssistant(conv.id);
    assert.equal(row.status, "completed");
    assert.deepEqual(await lastText(page), { text: storedText(row), streaming: false });
    shots.push(await screenshot(page, "2-completed"));

    // Edit sends the message again as a new version, answered; the first stays one arrow away.
    await page.click("li.user .edit");
    await page.fill("li.user textarea", "Tell me about event logs");
    await page.click("li.user .save");
    await page.waitForSelector("li.user .versions .count:text('2/2')");
    assert.equal(await page.textContent("li.user .body"), "Tell me about event logs");
    await waitFor(async () => (await lastAssistant(conv.id)).id !== row.id && !(await page.isDisabled("#send")),
      { what: "the edited message's answer" });
    const edited = await lastAssistant(conv.id);
    assert.ok(storedText(edited).includes("event logs"), storedText(edited));

    await page.click("#export");
    const markdown = await waitFor(() => page.evaluate(() => document.body.dataset.export), { what: "the export" });
    assert.ok(markdown.includes(storedText(edited).slice(0, 40)), markdown);
    await page.close();
  });

  test("a reload mid-answer shows what was generated and carries on with no duplicated text", async () => {
    const conv = await turnlog.conversation(SLOW);
    const page = await open(conv.id);
    await send(page, "Reload me");
    await waitFor(async () => ((await lastText(page))?.text.split(" ").length ?? 0) > 12, { what: "some text" });
    const before = (await lastText(page)).text;
    await page.reload();
    await page.waitForSelector("#conn[data-state=live]");
    const resumed = await waitFor(() => lastText(page), { what: "text after the reload" });
    assert.ok(resumed.streaming, "still streaming after the reload");
    assert.ok(resumed.text.startsWith(before.slice(0, before.length - 20)), `${resumed.text} / ${before}`);
    shots.push(await screenshot(page, "3-after-reload"));
    await waitFor(async () => (await lastText(page))?.streaming === false, { timeout: 60_000, what: "the end" });
    const row = await lastAssistant(conv.id);
    const shown = (await lastText(page)).text;
    assert.equal(shown, storedText(row));
    assert.equal(row.blocks.filter((b) => b.type === "text").length, 1);
    // The demo never repeats a sentence, so a replay appended to what was shown would show twice.
    assert.equal(shown.split("Demo answer to").length, 2, shown);
    await page.close();
  });

  test("Stop aborts the turn on the server and keeps the partial answer", async () => {
    const conv = await turnlog.conversation(SLOW);
    const page = await open(conv.id);
    await send(page, "Stop me");
    await waitFor(async () => ((await lastText(page))?.text.split(" ").length ?? 0) > 6, { what: "some text" });
    await page.click("#stop");
    await page.waitForSelector("li.status[data-status=aborted]");
    const row = await lastAssistant(conv.id);
    assert.equal(row.status, "aborted");
    const shown = (await lastText(page)).text;
    assert.ok(shown.split(" ").length > 6);
    assert.equal(shown, storedText(row));
    assert.equal(await page.isVisible("li.status[data-status=aborted] .retry"), true);
    shots.push(await screenshot(page, "4-aborted"));
    await page.close();
  });

  test("a provider error ends the row as error, partial text kept, with Retry", async () => {
    const conv = await turnlog.conversation({ tokens_per_second: 200, length: 40, fail_after: 6 });
    const page = await open(conv.id);
    await send(page, "Fail me");
    await page.waitForSelector("li.status[data-status=error] .retry");
    const row = await lastAssistant(conv.id);
    assert.equal(row.status, "error");
    assert.ok(storedText(row).length > 0);
    assert.equal((await lastText(page)).text, storedText(row));
    assert.ok((await page.textContent("li.status[data-status=error] .what")).startsWith("error: "));
    shots.push(await screenshot(page, "4b-error"));
    await page.close();
  });

  test("ask_user is answered inline and the answer resumes the generation", async () => {
    const conv = await turnlog.conversation({ tool: "ask_user", tokens_per_second: 200, length: 12 });
    const page = await open(conv.id);
    await send(page, "Plan my week");
    await page.waitForSelector("li.tool_call form.ask input");
    shots.push(await screenshot(page, "5-ask-user"));
    await page.fill("li.tool_call form.ask input", "Mostly sleep");
    await page.click("li.tool_call form.ask button");
    // The call folds once it has its result (the result is inside, one click away).
    await page.waitForSelector("li.tool_call .result:text('Mostly sleep')", { state: "attached" });
    await waitFor(async () => (await lastAssistant(conv.id)).status === "completed" && !(await page.isDisabled("#send")),
      { what: "the resumed turn to end" });
    const row = await lastAssistant(conv.id);
    assert.equal((await lastText(page)).text, storedText(row));
    assert.ok(storedText(row).includes("Mostly sleep"), storedText(row));
    await page.close();
  });

  test("native EventSource with a stream token follows a stream, from an allowed origin", async () => {
    const conv = await turnlog.conversation({ tokens_per_second: 40, length: 30 });
    const page = await newPage(browser);
    await page.goto(allowed.origin);
    const result = await page.evaluate(async ({ api, token, cid }) => {
      const { EMPTY, applyStreamEvent, decodeBlocks, decodeEvent } = await import(`${api}/web/reducer.js`);
      const auth = { Authorization: `Bearer ${token}`, "Content-Type": "application/json" };
      const sent = await fetch(`${api}/v1/conversations/${cid}/messages`, {
        method: "POST", headers: auth, body: JSON.stringify({ content: "From elsewhere" }),
      }).then((r) => r.json());
      const { token: streamToken } = await fetch(`${api}/v1/conversations/${cid}/stream-token`, {
        method: "POST", headers: auth,
      }).then((r) => r.json());
      const mid = sent.assistant_message.id;
      return new Promise((resolve, reject) => {
        const source = new EventSource(`${api}/v1/messages/${mid}/stream?token=${streamToken}`);
        let blocks = EMPTY;
        let deltas = 0;
        source.addEventListener("init", (e) => { blocks = decodeBlocks(JSON.parse(e.data).blocks); });
        source.addEventListener("text_delta", (e) => { deltas++; blocks = applyStreamEvent(blocks, decodeEvent(e.data)); });
        source.addEventListener("done", (e) => {
          source.close();
          resolve({ blocks: JSON.parse(JSON.stringify(blocks)), deltas, done: JSON.parse(e.data), mid });
        });
        source.onerror = () => { source.close(); reject(new Error("EventSource failed")); };
      });
    }, { api: turnlog.base, token: turnlog.token, cid: conv.id });
    assert.equal(result.done.status, "completed");
    assert.ok(result.deltas > 0);
    const row = (await turnlog.messages(conv.id)).find((m) => m.id === result.mid);
    assert.deepEqual(result.blocks, row.blocks);
    await page.close();
  });

  test("a page from an origin not in TURNLOG_CORS_ORIGINS is refused by the browser", async () => {
    const conv = await turnlog.conversation({ tokens_per_second: 400, length: 5 });
    const { token: streamToken } = await turnlog.api(`/v1/conversations/${conv.id}/stream-token`, { method: "POST" });
    const page = await newPage(browser);
    await page.goto(refused.origin);
    const outcome = await page.evaluate(async ({ api, token, cid, streamToken }) => {
      const fetched = await fetch(`${api}/v1/conversations`, { headers: { Authorization: `Bearer ${token}` } })
        .then((r) => `read ${r.status}`, (e) => `refused: ${e.name}`);
      const health = await fetch(`${api}/healthz`).then((r) => `read ${r.status}`, (e) => `refused: ${e.name}`);
      const streamed = await new Promise((resolve) => {
        const source = new EventSource(`${api}/v1/conversations/${cid}/live?token=${streamToken}`);
        source.addEventListener("snapshot", () => { source.close(); resolve("read a snapshot"); });
        source.onerror = () => { source.close(); resolve("refused"); };
      });
      return { fetched, health, streamed };
    }, { api: turnlog.base, token: turnlog.token, cid: conv.id, streamToken });
    assert.deepEqual(outcome, { fetched: "refused: TypeError", health: "refused: TypeError", streamed: "refused" });
    // …and the same requests from the allowed origin are read.
    const allowedPage = await newPage(browser);
    await allowedPage.goto(allowed.origin);
    const ok = await allowedPage.evaluate(async ({ api, token }) =>
      fetch(`${api}/v1/conversations`, { headers: { Authorization: `Bearer ${token}` } }).then((r) => r.status),
    { api: turnlog.base, token: turnlog.token });
    assert.equal(ok, 200);
    await page.close();
    await allowedPage.close();
  });

  test("a dropped connection reconnects with Last-Event-ID and shows no duplicated text", async () => {
    const conv = await turnlog.conversation(SLOW);
    const proxy = await dropProxy(turnlog.port);
    try {
      const page = await newPage(browser);
      await page.goto(`${turnlog.webUrl.replace(`:${turnlog.port}/`, `:${proxy.port}/`)}&c=${conv.id}`);
      await page.waitForSelector("#conn[data-state=live]");
      await send(page, "Drop me");
      await waitFor(async () => ((await lastText(page))?.text.split(" ").length ?? 0) > 8, { what: "some text" });
      const before = proxy.heads.length;
      proxy.drop();
      await waitFor(
        () => proxy.heads.slice(before).some((h) => h.startsWith("GET /v1/messages/") && /\r\nlast-event-id: \d+/i.test(h)),
        { what: "the stream's reconnect with Last-Event-ID" },
      );
      await waitFor(async () => (await lastText(page))?.streaming === false, { timeout: 60_000, what: "the end" });
      const row = await lastAssistant(conv.id);
      const shown = (await lastText(page)).text;
      assert.equal(shown, storedText(row));
      assert.equal(shown.split("Demo answer to").length, 2, shown);
      await page.close();
    } finally {
      proxy.close();
    }
  });

  // Last two: they kill the server (and restart it on the same port and data dir).
  test("SIGKILL mid-answer, restart: the turn is continued (recovering…) and ends as one whole answer", async () => {
    const conv = await turnlog.conversation({ tokens_per_second: 10, length: 160 });
    const page = await open(conv.id);
    await send(page, "Crash and carry on");
    await waitFor(async () => ((await lastText(page))?.text.split(" ").length ?? 0) > 8, { what: "some text" });
    // Whatever the page shows from now on, recorded (the recovering state may be brief).
    await page.evaluate(() => {
      window.__seen = new Set();
      new MutationObserver(() => {
        window.__seen.add(document.getElementById("conn").dataset.state);
        if (document.querySelector("#timeline .recovering")) window.__seen.add("recovering note");
      }).observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true });
    });
    await turnlog.kill();
    await page.waitForSelector("#conn[data-state=reconnecting]");
    await turnlog.start();
    await waitFor(() => page.evaluate(() => window.__seen.has("recovering note")), { timeout: 60_000, what: "recovering…" });
    shots.push(...(await screenshots(page, "6a-recovering")));
    await waitFor(async () => (await lastAssistant(conv.id)).status === "completed" && !(await page.isDisabled("#send")),
      { timeout: 120_000, what: "the continued turn to end" });
    const row = await lastAssistant(conv.id);
    await waitFor(async () => (await lastText(page))?.text === storedText(row), { what: "the stored text on the page" });
    assert.equal(storedText(row).split("Demo answer to").length, 2, "continued, not started again");
    assert.equal(await page.$("#timeline .recovering"), null);
    await page.close();
  });

  test("SIGKILL mid-answer, restart with TURNLOG_RECOVERY=interrupt: interrupted, and Retry completes", async () => {
    const conv = await turnlog.conversation(SLOW);
    const page = await open(conv.id);
    await send(page, "Crash me");
    await waitFor(async () => ((await lastText(page))?.text.split(" ").length ?? 0) > 8, { what: "some text" });
    await turnlog.kill();
    await page.waitForSelector("#conn[data-state=reconnecting]");
    turnlog.env.TURNLOG_RECOVERY = "interrupt";
    await turnlog.start();
    await page.waitForSelector("li.status[data-status=interrupted] .retry", { timeout: 60_000 });
    const interrupted = await lastAssistant(conv.id);
    assert.equal(interrupted.status, "interrupted");
    assert.equal((await lastText(page)).text, storedText(interrupted));
    shots.push(await screenshot(page, "6-interrupted"));
    await page.click("li.status[data-status=interrupted] .retry");
    await waitFor(async () => (await lastAssistant(conv.id)).id !== interrupted.id, { what: "the retry's row" });
    await waitFor(async () => (await lastAssistant(conv.id)).status === "completed" && !(await page.isDisabled("#send")),
      { timeout: 60_000, what: "the retried turn to end" });
    const retried = await lastAssistant(conv.id);
    assert.equal((await lastText(page)).text, storedText(retried));
    assert.equal(await page.isVisible("li.status[data-status=interrupted] .retry"), false);
    shots.push(await screenshot(page, "7-retried"));
    await page.close();
  });
});
