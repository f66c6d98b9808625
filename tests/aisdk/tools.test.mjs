// Tools through the real `ai` client (AI SDK 6+): a call that needs approval arrives as an
// approval request; `addToolApprovalResponse` answers it (approved: the stored arguments run;
// denied: the model reads the reason); a client tool is answered with `addToolOutput`.
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { Client, LONG, Server, generateId, textOf } from './support.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const config = join(mkdtempSync(join(tmpdir(), 'turnlog-aisdk-tools-')), 'tools.toml');
writeFileSync(
  config,
  `[python_tools]
modules = ["tests.tools.pytools"]

[client_tools.pick_color]
description = "Ask the browser to pick a color."

[tools]
default = ["create_ticket", "pick_color", "clock"]
`,
);
const server = new Server(null, { TURNLOG_CONFIG: config, PYTHONPATH: root });
let alice;

before(async () => {
  await server.start();
  alice = new Client(server, 'alice');
});

after(async () => {
  await server.stop();
});

const ARGS = { title: 'fix the build', priority: 2 };
const TICKET = { tokens_per_second: 400, length: 8, tool: 'create_ticket', tool_arguments: ARGS };

async function approvalAsked() {
  const chat = alice.chat(generateId());
  await chat.sendMessage({ text: 'File a ticket' }, { body: { options: TICKET } });
  assert.equal(chat.status, 'ready', chat.error?.message);
  const part = chat.lastMessage.parts.find(p => p.type === 'tool-create_ticket');
  assert.equal(part.state, 'approval-requested');
  assert.deepEqual(part.input, ARGS);
  assert.equal(part.approval.id, part.toolCallId);
  return { chat, part };
}

describe('tools through useChat', { timeout: 10 * LONG }, () => {
  test('addToolApprovalResponse approves: the stored arguments run, the turn goes on', async () => {
    const { chat, part } = await approvalAsked();
    await chat.addToolApprovalResponse({ id: part.approval.id, approved: true });
    await chat.sendMessage();
    assert.equal(chat.status, 'ready', chat.error?.message);
    assert.equal(chat.messages.length, 2, 'the answer continues the same UI message');
    const done = chat.lastMessage.parts.find(p => p.type === 'tool-create_ticket');
    assert.equal(done.state, 'output-available');
    assert.match(done.output, /"title":"fix the build","priority":2/);
    assert.ok(textOf(chat.lastMessage).startsWith('create_ticket said'));
  });

  test('addToolApprovalResponse denies: tool-output-denied, the model reads the reason', async () => {
    const { chat, part } = await approvalAsked();
    await chat.addToolApprovalResponse({ id: part.approval.id, approved: false, reason: 'not now' });
    await chat.sendMessage();
    assert.equal(chat.status, 'ready', chat.error?.message);
    const denied = chat.lastMessage.parts.find(p => p.type === 'tool-create_ticket');
    assert.equal(denied.state, 'output-denied');
    assert.ok(textOf(chat.lastMessage).startsWith('create_ticket said denied: not now.'));
  });

  test('a client tool: addToolOutput answers it and the turn goes on', async () => {
    const chat = alice.chat(generateId());
    await chat.sendMessage(
      { text: 'Pick one' },
      { body: { options: { tokens_per_second: 400, length: 8, tool: 'pick_color', tool_arguments: { hint: 'warm' } } } },
    );
    assert.equal(chat.status, 'ready', chat.error?.message);
    const call = chat.lastMessage.parts.find(p => p.type === 'tool-pick_color');
    assert.equal(call.state, 'input-available');
    assert.equal(call.providerExecuted, undefined, 'the client runs it');
    await chat.addToolOutput({ tool: 'pick_color', toolCallId: call.toolCallId, output: 'teal' });
    await chat.sendMessage();
    assert.equal(chat.status, 'ready', chat.error?.message);
    assert.ok(textOf(chat.lastMessage).startsWith('pick_color said teal.'));
  });
});
