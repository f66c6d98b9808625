// The real `ai` client (DefaultChatTransport, readUIMessageStream, AbstractChat with resume)
// against a real `turnlog serve`: every case of docs/ui-chat.md.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import {
  Client,
  LONG,
  Server,
  aiVersion,
  generateId,
  plain,
  readUIMessageStream,
  summary,
  textOf,
  waitFor,
} from './support.mjs';

const server = new Server();
let alice;

before(async () => {
  await server.start();
  alice = new Client(server, 'alice');
});

after(async () => {
  await server.stop();
});

const FAST = { tokens_per_second: 200, length: 24 };

/** Every message the client holds equals what GET …/messages stores, key for key. */
async function assertStored(chat, t) {
  const stored = await alice.messages(chat.id);
  assert.deepEqual(plain(chat.messages), stored);
  t?.diagnostic(`assembled ${summary(chat.lastMessage)}; status ${chat.status}`);
  return stored;
}

/** The text of `question` answered without a crash (the demo provider is deterministic). */
async function uncut(question, length) {
  const chat = alice.chat(generateId());
  await chat.sendMessage(
    { text: question },
    { body: { options: { tokens_per_second: 2000, length } } },
  );
  assert.equal(chat.status, 'ready', chat.error?.message);
  return textOf(chat.lastMessage);
}

/** Read a resumed stream to its end; every text seen on the way. */
async function readResumed(chatId) {
  const stream = await alice.transport().reconnectToStream({ chatId });
  assert.ok(stream, 'a generating turn answers the resume (not 204)');
  const texts = [];
  let last;
  for await (const message of readUIMessageStream({ stream })) {
    last = message;
    texts.push(textOf(message));
  }
  return { message: last, texts };
}

describe('useChat against turnlog', { timeout: 10 * LONG }, () => {
  test('the client under test is the release this lane pins', t => {
    const version = aiVersion();
    t.diagnostic(`ai ${version} on Node ${process.versions.node}`);
    const expected = process.env.TURNLOG_AISDK_EXPECT ?? '6';
    assert.equal(version.split('.')[0], expected);
    if (expected === '7') assert.ok(Number(process.versions.node.split('.')[0]) >= 22);
  });

  test('a fresh turn: the client assembles what is stored', async t => {
    const chat = alice.chat(generateId());
    await chat.sendMessage({ text: 'Hello from the AI SDK' }, { body: { options: FAST } });
    assert.equal(chat.status, 'ready', chat.error?.message);
    const [user, answer] = chat.messages;
    assert.equal(user.role, 'user');
    assert.equal(answer.role, 'assistant');
    assert.deepEqual(
      answer.parts.map(p => p.type),
      ['step-start', 'text'],
    );
    assert.match(textOf(answer), /^Demo answer to “Hello from the AI SDK”\./);
    assert.deepEqual(answer.metadata, { status: 'completed', finishReason: 'stop' });
    await assertStored(chat, t);
  });

  test('a clock tool loop is one UI message of two steps', async t => {
    const chat = alice.chat(generateId());
    await chat.sendMessage({ text: 'What time is it?' }, { body: { options: { ...FAST, tool: 'clock' } } });
    assert.equal(chat.status, 'ready', chat.error?.message);
    const answer = chat.lastMessage;
    assert.deepEqual(
      answer.parts.map(p => p.type),
      ['step-start', 'tool-clock', 'step-start', 'text'],
    );
    const call = answer.parts[1];
    assert.equal(call.state, 'output-available');
    assert.equal(call.providerExecuted, true);
    assert.deepEqual(call.input, { timezone: 'UTC' });
    assert.match(call.output, /^\d{4}-\d\d-\d\dT/);
    assert.ok(textOf(answer).startsWith(`The clock says ${call.output}.`));
    await assertStored(chat, t);
  });

  test('regenerate() makes a new version of the last turn; the client holds what is hydrated', async t => {
    const chat = alice.chat(generateId());
    await chat.sendMessage({ text: 'Answer twice' }, { body: { options: FAST } });
    assert.equal(chat.status, 'ready', chat.error?.message);
    const first = chat.lastMessage.id;
    await chat.regenerate({ body: { options: { ...FAST, length: 8 } } });
    assert.equal(chat.status, 'ready', chat.error?.message);
    assert.notEqual(chat.lastMessage.id, first, 'a new version, not the old message again');
    assert.equal(chat.messages.length, 2);
    await assertStored(chat, t);
    // A tool turn (two steps, a tool result between) is regenerated as a whole.
    const clock = { ...FAST, tool: 'clock' };
    await chat.sendMessage({ text: 'What time is it?' }, { body: { options: clock } });
    await chat.regenerate({ body: { options: clock } });
    assert.equal(chat.status, 'ready', chat.error?.message);
    assert.equal(chat.messages.length, 4);
    assert.deepEqual(
      chat.lastMessage.parts.map(p => p.type),
      ['step-start', 'tool-clock', 'step-start', 'text'],
    );
    await assertStored(chat, t);
  });

  test('reasoning arrives as a reasoning part before the text', async t => {
    const chat = alice.chat(generateId());
    await chat.sendMessage({ text: 'Think first' }, { body: { options: { ...FAST, reasoning: true } } });
    assert.equal(chat.status, 'ready', chat.error?.message);
    const answer = chat.lastMessage;
    assert.deepEqual(
      answer.parts.map(p => p.type),
      ['step-start', 'reasoning', 'text'],
    );
    assert.match(answer.parts[1].text, /^Let me think about what was asked/);
    assert.equal(answer.parts[1].state, 'done');
    await assertStored(chat, t);
  });

  test('resumes from random points each assemble the stored message, no text twice', async t => {
    const id = generateId();
    // About 4 s of answer; resumes start at random points in its first 1.5 s.
    await alice.startTurn(id, 'Tell me about resumable streams', {
      tokens_per_second: 50,
      length: 200,
      tool: 'clock',
    });
    const delays = [0, ...Array.from({ length: 4 }, () => Math.floor(Math.random() * 1500))];
    const results = await Promise.all(
      delays.map(async delay => {
        await sleep(delay);
        return { delay, ...(await readResumed(id)) };
      }),
    );
    const stored = (await alice.messages(id)).at(-1);
    assert.equal(stored.metadata.status, 'completed');
    const storedText = textOf(stored);
    for (const { delay, message, texts } of results) {
      assert.deepEqual(plain(message), stored, `resumed after ${delay} ms`);
      t.diagnostic(`resumed after ${delay} ms: ${texts.length} updates, ${summary(message)}`);
      for (const text of texts) {
        assert.ok(storedText.startsWith(text), `after ${delay} ms the client showed ${text}`);
      }
    }
  });

  test('AbstractChat hydrated mid-turn resumes the turn (resume: true)', async t => {
    const id = generateId();
    await alice.startTurn(id, 'A long answer please', { tokens_per_second: 50, length: 150 });
    await sleep(400 + Math.random() * 400);
    const hydrated = await alice.messages(id);
    assert.equal(hydrated.length, 1, 'the generating turn is left to the resume');
    const chat = alice.chat(id, { messages: hydrated });
    await chat.resumeStream();
    assert.equal(chat.status, 'ready', chat.error?.message);
    const stored = await assertStored(chat, t);
    assert.equal(stored.at(-1).metadata.status, 'completed');
  });

  test('two concurrent resumes both end with the stored message', async t => {
    const id = generateId();
    await alice.startTurn(id, 'Two readers', { tokens_per_second: 50, length: 120 });
    const hydrated = await alice.messages(id);
    const chats = [alice.chat(id, { messages: hydrated }), alice.chat(id, { messages: hydrated })];
    await Promise.all(chats.map(chat => chat.resumeStream()));
    for (const chat of chats) {
      assert.equal(chat.status, 'ready', chat.error?.message);
      await assertStored(chat, t);
    }
  });

  test('resume after the turn ended: 204, and the chat stays ready', async t => {
    const chat = alice.chat(generateId());
    await chat.sendMessage({ text: 'Short one' }, { body: { options: FAST } });
    const raw = await fetch(`${alice.api}/${chat.id}/stream`, { headers: alice.auth });
    assert.equal(raw.status, 204);
    const fresh = alice.chat(chat.id, { messages: await alice.messages(chat.id) });
    await fresh.resumeStream();
    assert.equal(fresh.status, 'ready');
    assert.deepEqual(fresh.recorded.statuses, [], 'no submitted/streaming flash');
    await assertStored(fresh, t);
  });

  test('stop during a resumed stream stops the generation: the row reads aborted', async t => {
    const id = generateId();
    await alice.startTurn(id, 'Please go on and on', { tokens_per_second: 30, length: 400 });
    const chat = alice.chat(id, { messages: await alice.messages(id) });
    const resumed = chat.resumeStream();
    await waitFor(
      () => chat.status === 'streaming' && textOf(chat.lastMessage).length > 20,
      'the resumed stream to show text',
    );
    const res = await alice.stop(id);
    assert.equal(res.status, 200, await res.clone().text());
    assert.equal((await res.json()).status, 'aborted');
    await resumed;
    assert.equal(chat.status, 'ready', chat.error?.message);
    const stored = await assertStored(chat, t);
    assert.equal(stored.at(-1).metadata.status, 'aborted');
    assert.ok(textOf(stored.at(-1)).length < 400 * 3, 'it stopped early');
    const again = await fetch(`${alice.api}/${id}/stream`, { headers: alice.auth });
    assert.equal(again.status, 204, 'nothing generates any more');
  });

  test('ask_user: a tool part waits; the client answers it and the turn goes on', async t => {
    const chat = alice.chat(generateId());
    await chat.sendMessage(
      { text: 'Plan my week' },
      { body: { options: { ...FAST, tool: 'ask_user' } } },
    );
    assert.equal(chat.status, 'ready', chat.error?.message);
    const asking = chat.lastMessage;
    const question = asking.parts.find(p => p.type === 'tool-ask_user');
    assert.equal(question.state, 'input-available');
    assert.match(question.input.question, /What should I focus on/);
    assert.equal(question.providerExecuted, undefined, 'the client must answer it');
    assert.deepEqual(asking.metadata, { status: 'completed', finishReason: 'tool-calls' });
    await assertStored(chat, t);

    await chat.addToolOutput({
      tool: 'ask_user',
      toolCallId: question.toolCallId,
      output: 'Durability, please',
    });
    await chat.sendMessage();
    assert.equal(chat.status, 'ready', chat.error?.message);
    assert.equal(chat.messages.length, 2, 'the answer continues the same UI message');
    const answer = chat.lastMessage;
    assert.deepEqual(
      answer.parts.map(p => p.type),
      ['step-start', 'tool-ask_user', 'step-start', 'text'],
    );
    assert.equal(answer.parts[1].output, 'Durability, please');
    assert.ok(textOf(answer).startsWith('You answered: Durability, please.'));
    assert.deepEqual(answer.metadata, { status: 'completed', finishReason: 'stop' });
    await assertStored(chat, t);
  });

  test('a resume served by another server process follows the turn to its end', async t => {
    const other = await new Server(server).start();
    try {
      // The client of the other server first: its token comes from a `turnlog token`
      // subprocess (1.2 s at load 10 here, more when busier), which ate the 3 s turn when it
      // ran after the start (the resume then rightly got 204). Its first request warms up
      // the other server.
      const viaOther = new Client(other, 'alice');
      assert.deepEqual(await viaOther.messages(generateId()), []);
      const id = generateId();
      await alice.startTurn(id, 'Across processes', { tokens_per_second: 50, length: 150 });
      const stream = await viaOther.transport().reconnectToStream({ chatId: id });
      assert.ok(stream);
      let last;
      let updates = 0;
      for await (const message of readUIMessageStream({ stream })) {
        last = message;
        updates += 1;
      }
      const stored = (await alice.messages(id)).at(-1);
      assert.equal(stored.metadata.status, 'completed');
      assert.deepEqual(plain(last), stored);
      // Many updates: live deltas through the owner's stream (a mirror); a few: checkpoints.
      t.diagnostic(`assembled via the other process in ${updates} updates: ${summary(last)}`);
    } finally {
      await other.stop();
    }
  });

  test('a turn whose server died is continued by the living one; the resume follows it to its end', async t => {
    const reference = await uncut('Doomed turn', 160);
    const doomed = await new Server(server).start();
    const onDoomed = new Client(doomed, 'alice');
    const id = generateId();
    await onDoomed.startTurn(id, 'Doomed turn', { tokens_per_second: 30, length: 160 });
    await sleep(1000); // a few checkpoints
    await doomed.kill();
    // This server is alive: it sees the owner's lock go and continues the row (or the
    // resume itself takes it over); the resume gets the turn from its start to its end.
    const chat = alice.chat(id, { messages: await alice.messages(id) });
    await chat.resumeStream();
    assert.equal(chat.status, 'ready', chat.error?.message);
    const stored = await assertStored(chat, t);
    assert.equal(stored.at(-1).metadata.status, 'completed');
    assert.equal(textOf(stored.at(-1)), reference, 'the continued answer is the uncut one');
  });

  test('SIGKILL of the server mid-turn, then a restart: the turn goes on by itself and the resume ends with it', async t => {
    const reference = await uncut('Survive a crash', 150);
    const chat = alice.chat(generateId());
    const sending = chat.sendMessage(
      { text: 'Survive a crash' },
      { body: { options: { tokens_per_second: 40, length: 150 } } },
    );
    await waitFor(
      () => chat.status === 'streaming' && textOf(chat.lastMessage).length > 150,
      'text to stream',
    );
    await server.kill();
    await sending;
    assert.equal(chat.status, 'error', 'the broken stream is an error, not "loading" forever');
    const seen = textOf(chat.lastMessage);

    await server.start(); // same data dir and port: the startup sweep continues the row
    await chat.resumeStream();
    assert.equal(chat.status, 'ready', chat.error?.message);
    const stored = await assertStored(chat, t);
    assert.equal(stored.at(-1).metadata.status, 'completed');
    assert.equal(textOf(stored.at(-1)), reference, 'the continued answer is the uncut one');
    t.diagnostic(
      `killed after the client saw ${seen.length} chars; the resume assembled ` +
        `${summary(chat.lastMessage)} (no retry)`,
    );
  });
});
