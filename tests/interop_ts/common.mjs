// What the interop scripts (client.mjs, asking.mjs, tasks.mjs) share: the command line, the
// JSON lines on stdout, the steps and their results, timeouts, and the transport.
//
//   node SCRIPT URL TOKEN [REVISION]
//
// URL is the /mcp endpoint, TOKEN the bearer token (or DATAPULSE_URL / DATAPULSE_TOKEN).
// REVISION is "2025-11-25" (the default) or "2026-07-28". INTEROP_TIMEOUT_MS bounds each request
// and each wait (default 5000).

import { basename } from 'node:path';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/client';

const REVISIONS = ['2025-11-25', '2026-07-28'];
const [url = process.env.DATAPULSE_URL, token = process.env.DATAPULSE_TOKEN, revision = '2025-11-25'] =
    process.argv.slice(2);
if (!url || !token || !REVISIONS.includes(revision)) {
    process.stderr.write(`usage: node ${basename(process.argv[1] ?? 'SCRIPT')} URL TOKEN [${REVISIONS.join('|')}]\n`);
    process.exit(2);
}
export { revision };
export const MODERN = revision === '2026-07-28';
export const TIMEOUT_MS = Number(process.env.INTEROP_TIMEOUT_MS ?? 5000);
export const opts = { timeout: TIMEOUT_MS };
// Client options for the revision: 2026-07-28 pins versionNegotiation (server/discover, then
// per-request _meta); 2025-11-25 keeps the SDK's `initialize` handshake.
export const negotiation = MODERN ? { versionNegotiation: { mode: { pin: '2026-07-28' } } } : {};

export const emit = (line) => process.stdout.write(JSON.stringify(line) + '\n');
// The SDK warns through console (e.g. a list call without the capability): keep stdout JSON.
for (const level of ['log', 'info', 'warn', 'debug']) console[level] = (...args) => console.error(...args);

export function describe(error) {
    if (!(error instanceof Error)) return { message: String(error) };
    const out = { name: error.constructor?.name ?? error.name, message: error.message };
    if (error.code !== undefined) out.code = error.code;
    if (error.data !== undefined) out.data = error.data;
    return out;
}

// What every step saw. A step that throws is recorded as {"error": {...}} and the script goes
// on, so one broken piece does not hide the others.
export const results = {};
export let current = 'setup'; // the step running, to tell where a client error happened
export async function step(name, fn) {
    current = name;
    try {
        results[name] = await fn();
    } catch (error) {
        results[name] = { error: describe(error) };
    }
}
// The last stdout line: {"event":"result", revision, ...results, ...extra}.
export const emitResult = (extra) => emit({ event: 'result', revision, ...results, ...extra });

// `promise`, or a rejection with `message` after TIMEOUT_MS.
export async function bounded(promise, message) {
    let timer;
    const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(message)), TIMEOUT_MS);
    });
    try {
        return await Promise.race([promise, timeout]);
    } finally {
        clearTimeout(timer);
    }
}
export const within = (promise, what) => bounded(promise, `timed out after ${TIMEOUT_MS} ms waiting for ${what}`);

// The Streamable HTTP transport to URL with the bearer token; `fetch` replaces the global one.
export function transport(fetch) {
    return new StreamableHTTPClientTransport(new URL(url), {
        requestInit: { headers: { Authorization: `Bearer ${token}` } },
        ...(fetch && { fetch }),
    });
}

// INTEROP_WIRE=1: log each HTTP request and response to stderr.
export const wire = process.env.INTEROP_WIRE === '1';
export const log = (...parts) => process.stderr.write(parts.join(' ') + '\n');
