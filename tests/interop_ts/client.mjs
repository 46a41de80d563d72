// The official MCP TypeScript SDK v2 client (@modelcontextprotocol/client) against a datapulse
// server, driven by tests/e2e/test_interop_ts.py.
//
//   node client.mjs URL TOKEN [REVISION]
//
// URL is the /mcp endpoint, TOKEN the bearer token (or DATAPULSE_URL / DATAPULSE_TOKEN).
// REVISION is "2025-11-25" (the default: the SDK's `initialize` handshake, its newest
// handshake revision) or "2026-07-28" (versionNegotiation pinned: server/discover, then
// per-request _meta, subscriptions/listen).
//
// Stdout carries JSON lines only:
//   {"event":"ready","waiting":"resource_updated","uri":U}  the client is subscribed to U:
//       the host may now call notify_resource_updated(U)
//   {"event":"ready","waiting":"tools_list_changed","remove":N}  the update arrived (or the wait
//       timed out): the host may now remove tool N; then the same with "add":N, to add tool N
//   {"event":"result",...}  last line: what every step saw. A step that throws is recorded as
//       {"error": {...}} and the script goes on, so one broken piece does not hide the others.
// INTEROP_WIRE=1 logs each HTTP request and response (headers, bodies) to stderr.

import { Client } from '@modelcontextprotocol/client';
import { MODERN, describe, emit, emitResult, log, negotiation, opts, results, step, transport, wire, within } from './common.mjs';

const SUBSCRIBED = process.env.INTEROP_RESOURCE ?? 'pulse://clock';
const REMOVED = process.env.INTEROP_REMOVED_TOOL ?? 'shout';
const ADDED = process.env.INTEROP_ADDED_TOOL ?? 'whisper';

// -- wire log (stderr) ------------------------------------------------------------------------

async function loggingFetch(input, init) {
    const headers = Object.fromEntries(new Headers(init?.headers ?? {}).entries());
    log('>>', init?.method ?? 'GET', String(input), JSON.stringify(headers), init?.body ?? '');
    const response = await fetch(input, init);
    log('<<', response.status, JSON.stringify(Object.fromEntries(response.headers.entries())));
    if (!response.body) return response;
    const [mine, theirs] = response.body.tee();
    (async () => {
        const decoder = new TextDecoder();
        try {
            for await (const chunk of mine) log('<<|', JSON.stringify(decoder.decode(chunk)));
        } catch {
            // the client aborted the body: nothing more to log
        }
    })();
    return new Response(theirs, { status: response.status, statusText: response.statusText, headers: response.headers });
}

// -- waiting for a notification ---------------------------------------------------------------

function waiter() {
    let resolve;
    const promise = new Promise((r) => (resolve = r));
    return { promise, resolve };
}

const updated = [];
const gotUpdate = waiter();
// Each tools/list_changed, as the refreshed tool names (or the refresh's error), in order.
const toolLists = [];
let toolListWaiters = [];
function toolListChanged(entry) {
    toolLists.push(entry);
    const waiting = toolListWaiters;
    toolListWaiters = [];
    for (const w of waiting) w.resolve(entry);
}
let toolListsTaken = 0;
function nextToolList() {
    // The next entry not yet handed out (it may have arrived already).
    if (toolListsTaken < toolLists.length) return Promise.resolve(toolLists[toolListsTaken++]);
    const w = waiter();
    toolListWaiters.push(w);
    return w.promise.then((entry) => {
        toolListsTaken++;
        return entry;
    });
}
// 2026-07-28: the list_changed notifications as they came (with their subscription id).
const notifications = [];

const client = new Client(
    { name: 'datapulse-interop-ts', version: '1.0.0' },
    {
        ...negotiation,
        // 2025 era: the SDK's own list_changed path (notification -> refreshed tools/list).
        // 2026-07-28: this would auto-open a listen stream; the script opens its own instead.
        ...(!MODERN && {
            listChanged: {
                tools: {
                    debounceMs: 0,
                    onChanged: (error, tools) => {
                        toolListChanged(error ? { error: describe(error) } : { tools: tools.map((t) => t.name) });
                    },
                },
            },
        }),
    },
);
const clientErrors = []; // what the SDK reported to client.onerror
client.onerror = (error) => clientErrors.push(describe(error));
client.setNotificationHandler('notifications/resources/updated', (n) => {
    updated.push(n.params);
    gotUpdate.resolve();
});
if (MODERN) {
    client.setNotificationHandler('notifications/tools/list_changed', async (n) => {
        notifications.push({ method: n.method, params: n.params ?? null });
        try {
            const listed = await client.listTools(undefined, { ...opts, cacheMode: 'refresh' });
            toolListChanged({ tools: listed.tools.map((t) => t.name) });
        } catch (error) {
            toolListChanged({ error: describe(error) });
        }
    });
}

await step('connect', async () => {
    await client.connect(transport(wire && loggingFetch), opts);
    return {
        protocolVersion: client.getNegotiatedProtocolVersion(),
        era: client.getProtocolEra(),
        serverInfo: client.getServerVersion(),
        capabilities: client.getServerCapabilities(),
    };
});
if (results.connect.error) {
    emitResult({ notifications, clientErrors });
    process.exit(1);
}

// -- tools ------------------------------------------------------------------------------------

await step('tools_list', async () => {
    const { tools } = await client.listTools(undefined, opts);
    return Object.fromEntries(tools.map((t) => [t.name, t]));
});
await step('tools_call_add', () => client.callTool({ name: 'add', arguments: { a: 2, b: 3 } }, opts));
await step('tools_call_add_default', () => client.callTool({ name: 'add', arguments: { a: 41 } }, opts));
await step('tools_call_add_bad', () => client.callTool({ name: 'add', arguments: { a: 'two' } }, opts));
await step('tools_call_describe', () =>
    client.callTool({ name: 'describe_point', arguments: { point: { x: 1.5, y: -2 }, label: 'p' } }, opts),
);

// -- resources --------------------------------------------------------------------------------

await step('resources_list', async () => (await client.listResources(undefined, opts)).resources);
await step('resource_templates_list', async () => (await client.listResourceTemplates(undefined, opts)).resourceTemplates);
await step('read_text', () => client.readResource({ uri: 'pulse://clock' }, { ...opts, cacheMode: 'bypass' }));
await step('read_blob', () => client.readResource({ uri: 'pulse://logo.png' }, { ...opts, cacheMode: 'bypass' }));
await step('read_template', () => client.readResource({ uri: 'notes://alpha' }, { ...opts, cacheMode: 'bypass' }));
await step('read_missing', () => client.readResource({ uri: 'nowhere://x' }, { ...opts, cacheMode: 'bypass' }));

// -- prompts and completions ------------------------------------------------------------------

await step('prompts_list', async () => (await client.listPrompts(undefined, opts)).prompts);
await step('prompts_get', () =>
    client.getPrompt({ name: 'review', arguments: { code: 'print(1)', language: 'rust' } }, opts),
);
await step('prompts_get_default', () => client.getPrompt({ name: 'review', arguments: { code: 'x = 1' } }, opts));
await step('complete_prompt', () =>
    client.complete({ ref: { type: 'ref/prompt', name: 'review' }, argument: { name: 'language', value: 'py' } }, opts),
);
await step('complete_template', () =>
    client.complete(
        {
            ref: { type: 'ref/resource', uri: 'notes://{name}' },
            argument: { name: 'name', value: 'b' },
            context: { arguments: { name: 'b' } },
        },
        opts,
    ),
);

// -- a resource update pushed by the host -----------------------------------------------------

let subscription;
await step('subscribe', async () => {
    if (MODERN) {
        subscription = await client.listen(
            { resourceSubscriptions: [SUBSCRIBED], toolsListChanged: true },
            opts,
        );
        return { honoredFilter: subscription.honoredFilter };
    }
    return await client.subscribeResource({ uri: SUBSCRIBED }, opts);
});
emit({ event: 'ready', waiting: 'resource_updated', uri: SUBSCRIBED });
await step('resource_updated', async () => {
    if (results.subscribe.error) throw new Error('not subscribed');
    await within(gotUpdate.promise, `notifications/resources/updated for ${SUBSCRIBED}`);
    return updated;
});
// A read after the update sees the new state (ttlMs 0: the SDK caches nothing to serve).
await step('read_after_update', () => client.readResource({ uri: SUBSCRIBED }, opts));

// -- tools/list_changed after the host removes a tool, then adds one ----------------------------

emit({ event: 'ready', waiting: 'tools_list_changed', remove: REMOVED });
await step('tools_list_changed_removed', async () => await within(nextToolList(), 'notifications/tools/list_changed'));
await step('tools_call_removed', () => client.callTool({ name: REMOVED, arguments: { text: 'x' } }, opts));
emit({ event: 'ready', waiting: 'tools_list_changed', add: ADDED });
await step('tools_list_changed_added', async () => await within(nextToolList(), 'notifications/tools/list_changed'));
await step('tools_call_added', () => client.callTool({ name: ADDED, arguments: { text: 'Quiet' } }, opts));

if (subscription) {
    await step('unsubscribe', async () => {
        await subscription.close();
        return { closed: await subscription.closed };
    });
}
await step('close', async () => {
    await client.close();
    return true;
});
emitResult({ updated, toolLists, notifications, clientErrors });
