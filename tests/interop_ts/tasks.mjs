// The official MCP TypeScript SDK v2 client (@modelcontextprotocol/client) driving datapulse
// durable tasks, for tests/e2e/test_interop_ts_tasks.py (the app of tests/e2e/test_tasks_wire.py).
//
//   node tasks.mjs URL TOKEN [REVISION]
//
// URL is the /mcp endpoint, TOKEN the bearer token. REVISION is "2025-11-25" (the default: the
// `initialize` handshake) or "2026-07-28" (versionNegotiation pinned; the client declares the
// io.modelcontextprotocol/tasks extension in its capabilities, so every request's _meta does).
//
// The SDK (2.4.0) has no task runtime: its typed surface leaves the task methods out ("Task
// methods are 2025-11-25 wire vocabulary with no SDK runtime", index.d.mts), callTool refuses a
// CreateTaskResult at 2025-11-25 (INVALID_RESULT) and `resultType: "task"` at 2026-07-28
// (UNSUPPORTED_RESULT_TYPE). So the tasks are driven through its raw request API,
// client.request({method, params}, resultSchema): at 2025-11-25 with the SDK's own task schemas
// (specTypeSchemas.CreateTaskResult, GetTaskResult, ...); at 2026-07-28 tasks/get and
// tasks/cancel (which the SDK lets through as SEP-2663 extension methods, with Mcp-Name set from
// params.taskId) with a pass-through schema. At 2026-07-28 a task is started by callTool itself;
// its taskId is read from the answer the SDK refused, through the transport's `fetch` option.
//
// Stdout carries JSON lines only:
//   {"event":"ready","waiting":"cancel","corpus":C}  a long task runs: the script waits for one
//       line on stdin (the host answers once the tool is seen running), then cancels it
//   {"event":"result",...}  last line: what every step saw. A step that throws is recorded as
//       {"error": {...}} and the script goes on.
// INTEROP_TIMEOUT_MS bounds each request and each wait. INTEROP_WIRE=1 logs HTTP to stderr.

import { createInterface } from 'node:readline';
import { Client, specTypeSchemas } from '@modelcontextprotocol/client';
import { MODERN, TIMEOUT_MS, bounded, describe, emit, emitResult, negotiation, opts, results, step, transport, wire } from './common.mjs';

const TASKS = 'io.modelcontextprotocol/tasks';
const TERMINAL = ['completed', 'failed', 'cancelled'];
const LONG = { steps: 2000, step_s: 0.02 };

// The host's go-ahead lines on stdin, one per ready line.
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function goAhead(what) {
    const next = await bounded(lines.next(), `no go-ahead for ${what} within ${TIMEOUT_MS} ms`);
    if (next.done) throw new Error(`stdin closed before the go-ahead for ${what}`);
    return next.value;
}

// -- the wire: every POST and its answer, through the transport's fetch -----------------------

const exchanges = []; // {method, headers, body, status, answer} of each JSON POST
async function recordingFetch(input, init) {
    const response = await fetch(input, init);
    const headers = Object.fromEntries(new Headers(init?.headers ?? {}).entries());
    if (wire) process.stderr.write(`>> ${init?.method ?? 'GET'} ${JSON.stringify(headers)} ${init?.body ?? ''}\n`);
    if ((init?.method ?? 'GET') !== 'POST' || typeof init?.body !== 'string') return response;
    const entry = { headers, body: JSON.parse(init.body), status: response.status };
    entry.method = entry.body.method;
    exchanges.push(entry);
    if ((response.headers.get('content-type') ?? '').startsWith('application/json')) {
        const text = await response.clone().text();
        if (wire) process.stderr.write(`<< ${response.status} ${text}\n`);
        try {
            entry.answer = JSON.parse(text);
        } catch {
            entry.answer = text;
        }
    }
    return response;
}
// The answer to the last tools/call of `tool` (the SDK may refuse it: the task is still there).
function lastAnswer(tool) {
    const found = exchanges.filter((e) => e.method === 'tools/call' && e.body.params?.name === tool).at(-1);
    if (!found) throw new Error(`no tools/call of ${tool} was sent`);
    return found.answer;
}

// -- clients ----------------------------------------------------------------------------------

const clientErrors = [];
async function connect({ extension = true } = {}) {
    const client = new Client(
        { name: 'datapulse-interop-ts-tasks', version: '1.0.0' },
        {
            capabilities: MODERN && extension ? { extensions: { [TASKS]: {} } } : {},
            ...negotiation,
        },
    );
    client.onerror = (error) => clientErrors.push(describe(error));
    await client.connect(transport(recordingFetch), opts);
    return client;
}
// A result schema that takes the answer as it is (the SDK has none for the extension's shapes).
const asIs = { '~standard': { version: 1, vendor: 'datapulse-tests', validate: (value) => ({ value }) } };
const S = specTypeSchemas;

function start(client, tool, args) {
    if (MODERN) {
        // callTool refuses resultType "task"; the refused answer carries the task.
        return client.callTool({ name: tool, arguments: args }, opts).then(
            (result) => ({ unexpected: result }),
            (error) => ({ refused: describe(error), task: lastAnswer(tool).result }),
        );
    }
    const params = { name: tool, arguments: args, task: { ttl: 60000 } };
    return client
        .request({ method: 'tools/call', params }, S.CreateTaskResult, opts)
        .then((created) => ({ task: created.task }));
}
function get(client, taskId) {
    return client.request({ method: 'tasks/get', params: { taskId } }, MODERN ? asIs : S.GetTaskResult, opts);
}
function cancel(client, taskId) {
    return client.request({ method: 'tasks/cancel', params: { taskId } }, MODERN ? asIs : S.CancelTaskResult, opts);
}
function payload(client, taskId) {
    return client.request({ method: 'tasks/result', params: { taskId } }, S.CallToolResult, opts);
}
async function until(client, taskId, status) {
    const deadline = Date.now() + TIMEOUT_MS;
    const seen = [];
    for (;;) {
        const task = await get(client, taskId);
        if (seen.at(-1) !== task.status) seen.push(task.status);
        if (task.status === status) return { task, seen };
        if (TERMINAL.includes(task.status)) throw new Error(`task ${taskId} is ${task.status}, not ${status}`);
        if (Date.now() > deadline) throw new Error(`task ${taskId} not ${status} within ${TIMEOUT_MS} ms`);
        await new Promise((r) => setTimeout(r, 20));
    }
}
const idOf = (started) => {
    if (!started.task?.taskId) throw new Error(`no task: ${JSON.stringify(started)}`);
    return started.task.taskId;
};

// -- the steps ------------------------------------------------------------------------------------

let client;
await step('connect', async () => {
    client = await connect();
    return { protocolVersion: client.getNegotiatedProtocolVersion(), capabilities: client.getServerCapabilities() };
});
if (results.connect.error) {
    emitResult({ exchanges, clientErrors });
    process.exit(1);
}
await step('tools_list', async () => {
    const { tools } = await client.listTools(undefined, opts);
    return Object.fromEntries(tools.map((t) => [t.name, t.execution ?? null]));
});
if (!MODERN) {
    // The typed call refuses the CreateTaskResult (no task runtime); the task was created.
    await step('call_tool_with_task', () =>
        client.callTool({ name: 'reindex', arguments: { corpus: 'ts-typed' }, task: { ttl: 60000 } }, opts),
    );
}

// 1. started and polled to its result
await step('started', () => start(client, 'reindex', { corpus: 'ts-poll', steps: 5, step_s: 0.04 }));
await step('first_get', () => get(client, idOf(results.started)));
await step('polled', () => until(client, idOf(results.started), 'completed'));
if (!MODERN) {
    await step('payload', () => payload(client, idOf(results.started)));
    await step('listed', () => client.request({ method: 'tasks/list', params: {} }, S.ListTasksResult, opts));
}

// 2. cancelled while its tool runs
await step('cancel_started', () => start(client, 'reindex', { corpus: 'ts-cancel', ...LONG }));
emit({ event: 'ready', waiting: 'cancel', corpus: 'ts-cancel' });
await step('go_ahead', () => goAhead('the cancel'));
await step('cancelled', () => cancel(client, idOf(results.cancel_started)));
await step('after_cancel', () => get(client, idOf(results.cancel_started)));
if (!MODERN) await step('payload_of_cancelled', () => payload(client, idOf(results.cancel_started)));

// 3. a failing tool
await step('failing_started', () => start(client, 'explode', { reason: 'ts' }));
await step('failing', () => until(client, idOf(results.failing_started), MODERN ? 'completed' : 'failed'));

// 4. its result read after the client has gone, by a new client with the same token
await step('durable_started', () => start(client, 'reindex', { corpus: 'ts-durable', steps: 10, step_s: 0.05 }));
await step('durable_before_close', () => get(client, idOf(results.durable_started)));
await step('first_closed', async () => {
    const sessionId = client.transport?.sessionId ?? null;
    await client.close();
    return { sessionId };
});
let second;
await step('reconnected', async () => {
    second = await connect();
    return { sessionId: second.transport?.sessionId ?? null };
});
if (!MODERN) await step('durable_payload', () => payload(second, idOf(results.durable_started)));
await step('durable_done', () => until(second, idOf(results.durable_started), 'completed'));

// 5. no task asked for (2025-11-25: no params.task; 2026-07-28: a client without the extension):
//    the tool runs inline, and a tool that runs only as a task is refused
let plain;
await step('plain_connected', async () => {
    plain = await connect({ extension: false });
    return true;
});
await step('inline_call', () => plain.callTool({ name: 'reindex', arguments: { corpus: 'ts-inline' } }, opts));
await step('required_call', () => plain.callTool({ name: 'archive', arguments: { label: 'ts' } }, opts));
await step('plain_close', async () => {
    await plain.close();
    return true;
});
await step('close', async () => {
    await second.close();
    return true;
});
const taskPosts = exchanges
    .filter((e) => e.method?.startsWith('tasks/'))
    .map((e) => ({ method: e.method, mcpName: e.headers['mcp-name'] ?? null, taskId: e.body.params?.taskId ?? null }));
emitResult({ taskPosts, clientErrors });
process.exit(0);
