// The official MCP TypeScript SDK v2 client (@modelcontextprotocol/client) answering a datapulse
// tool that asks mid-call: elicitation, sampling and roots handlers (setRequestHandler), driven
// by tests/e2e/test_interop_ts_asking.py against the app of tests/e2e/test_asking_wire.py.
//
//   node asking.mjs URL TOKEN [REVISION]
//
// URL is the /mcp endpoint, TOKEN the bearer token. REVISION is "2025-11-25" (the default: the
// `initialize` handshake; the server's questions arrive as requests on the call's SSE stream and
// the SDK POSTs its responses) or "2026-07-28" (versionNegotiation pinned: the call answers
// `input_required` and the SDK's auto-fulfilment driver runs the same handlers, then retries
// with `inputResponses` and `requestState`).
//
// Stdout carries one JSON line: {"event":"result",...} with what every step returned (a step
// that threw is recorded as {"error": {...}}), what each handler was given, and the tools/call
// bodies the SDK POSTed (to show the rounds on the wire). INTEROP_TIMEOUT_MS bounds each call.

import { Client } from '@modelcontextprotocol/client';
import { current, describe, emitResult, log, negotiation, opts, results, step, transport, wire, within } from './common.mjs';

// -- the wire: the tools/call bodies the SDK sends --------------------------------------------

const calls = []; // {id, name, arguments, inputResponses?, requestState?, issuedState?}
// INTEROP_WIRE=1 logs each HTTP request and response (bodies included) to stderr.
let fetches = 0;
// POSTs whose response headers have not arrived yet. The SDK POSTs its answer to a question of
// ours without awaiting the 202, and the server may deliver the tool's result first: closing
// then would abort that POST (onerror: AbortError), so close waits for these first.
const pendingPosts = new Set();
function recordingFetch(input, init) {
    const sent = sendRecorded(input, init);
    if (init?.method === 'POST') {
        const settled = sent.then(
            () => undefined,
            () => undefined,
        );
        pendingPosts.add(settled);
        settled.then(() => pendingPosts.delete(settled));
    }
    return sent;
}
async function sendRecorded(input, init) {
    let call;
    if (init?.method === 'POST' && typeof init.body === 'string') {
        try {
            const message = JSON.parse(init.body);
            if (message.method === 'tools/call') {
                const { name, arguments: args, inputResponses, requestState } = message.params;
                call = { id: message.id, name, arguments: args, inputResponses, requestState };
                calls.push(call);
            }
        } catch {
            // not JSON: nothing to record
        }
    }
    const n = ++fetches;
    if (wire) log(`>> ${n}`, init?.method ?? 'GET', String(input), init?.body ?? '');
    const response = await fetch(input, init);
    if (call && (response.headers.get('content-type') ?? '').startsWith('application/json')) {
        // 2026-07-28: the requestState the server issued, to compare with the retry's echo.
        try {
            const answer = await response.clone().json();
            if (answer.result?.resultType === 'input_required') call.issuedState = answer.result.requestState;
        } catch {
            // not a JSON-RPC answer: nothing to record
        }
    }
    if (!wire) return response;
    log(`<< ${n}`, response.status, response.headers.get('content-type') ?? '');
    if (!response.body) return response;
    const [mine, theirs] = response.body.tee();
    (async () => {
        const decoder = new TextDecoder();
        try {
            for await (const chunk of mine) log(`<<| ${n}`, JSON.stringify(decoder.decode(chunk)));
            log(`<<| ${n} end`);
        } catch (error) {
            log(`<<| ${n} aborted`, String(error));
        }
    })();
    return new Response(theirs, { status: response.status, statusText: response.statusText, headers: response.headers });
}

// -- the host: what the user and the model answer ---------------------------------------------

const elicitAnswers = []; // planned answers, in order; 'throw' makes the handler fail
const elicited = []; // the params each elicitation/create came with
const sampled = [];
let rootsAsked = 0;

const client = new Client(
    { name: 'datapulse-interop-ts-asking', version: '1.0.0' },
    {
        capabilities: { elicitation: { form: {} }, sampling: {}, roots: { listChanged: false } },
        ...negotiation,
    },
);
const clientErrors = [];
client.onerror = (error) => clientErrors.push({ ...describe(error), during: current });

client.setRequestHandler('elicitation/create', async (request) => {
    elicited.push(request.params);
    const planned = elicitAnswers.shift();
    if (planned === undefined) throw new Error('no answer planned');
    if (planned === 'throw') throw new Error('the dialog was closed');
    return planned;
});
client.setRequestHandler('sampling/createMessage', async (request) => {
    sampled.push(request.params);
    return {
        model: 'ts-model',
        role: 'assistant',
        content: { type: 'text', text: 'ts summary' },
        stopReason: 'endTurn',
    };
});
client.setRequestHandler('roots/list', async () => {
    rootsAsked += 1;
    return { roots: [{ uri: 'file:///ts-project', name: 'ts-project' }] };
});

await step('connect', async () => {
    await client.connect(transport(recordingFetch), opts);
    return { protocolVersion: client.getNegotiatedProtocolVersion(), era: client.getProtocolEra() };
});
if (results.connect.error) {
    emitResult({ calls, elicited, sampled, rootsAsked, clientErrors });
    process.exit(1);
}

// Each deploy step plans one answer and records the handler's view and the result.
async function deploy(service, answer) {
    elicitAnswers.push(answer);
    const seen = elicited.length;
    const result = await client.callTool({ name: 'deploy', arguments: { service } }, opts);
    return { result, elicited: elicited.slice(seen), calls: calls.filter((c) => c.arguments?.service === service) };
}

await step('deploy_accept', () => deploy('accepted', { action: 'accept', content: { confirm: true } }));
await step('deploy_decline', () => deploy('declined', { action: 'decline' }));
await step('deploy_cancel', () => deploy('cancelled', { action: 'cancel' }));
await step('deploy_error', () => deploy('refused', 'throw'));
await step('summarize', async () => {
    const result = await client.callTool({ name: 'summarize', arguments: { text: 'a ts story' } }, opts);
    return { result, calls: calls.filter((c) => c.name === 'summarize') };
});
await step('roots', async () => {
    const result = await client.callTool({ name: 'roots', arguments: {} }, opts);
    return { result, calls: calls.filter((c) => c.name === 'roots') };
});
await step('register', async () => {
    elicitAnswers.push({ action: 'accept', content: { name: 'Tess' } }, { action: 'accept', content: { age: 29 } });
    const seen = elicited.length;
    const result = await client.callTool({ name: 'register', arguments: {} }, opts);
    return { result, elicited: elicited.slice(seen), calls: calls.filter((c) => c.name === 'register') };
});
await step('close', async () => {
    await within(Promise.allSettled([...pendingPosts]), 'the answers POSTed to be acknowledged');
    await client.close();
    return true;
});
emitResult({ sampled, rootsAsked, unusedAnswers: elicitAnswers, clientErrors });
