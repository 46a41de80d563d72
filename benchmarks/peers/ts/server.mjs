// Benchmark peer 3: the official MCP TypeScript SDK on Node, written the way the SDK's own
// examples are (simpleStreamableHttp / jsonResponseStreamableHttp / simpleSseServer): one
// McpServer per session, express via createMcpExpressApp, tool `get_time`.
//
//   node benchmarks/peers/ts/server.mjs --port 8000 --token T --ping-interval 15 [--json-response]
//
// Endpoints: POST/GET/DELETE /mcp (Streamable HTTP, stateful), GET /sse + POST /messages
// (legacy 2024-11-05 HTTP+SSE), GET /healthz (no auth). Every other route needs
// `Authorization: Bearer TOKEN`, the same plain string compare the other servers do, so every
// server under test pays for an auth check.
//
// Pings: Streamable HTTP streams use the SDK's own keep-alive (`keepAliveMs`). The legacy SSE
// transport has none, so this peer writes `: ping` comments itself, the way a user would.

import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';

import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { createMcpExpressApp } from '@modelcontextprotocol/sdk/server/express.js';
import { SSEServerTransport } from '@modelcontextprotocol/sdk/server/sse.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js';

const { values: args } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '8000' },
    token: { type: 'string', default: process.env.LOCAL_BEARER_TOKEN ?? 'bench' },
    'ping-interval': { type: 'string', default: '15' },
    'json-response': { type: 'boolean', default: false },
  },
});

const pingMs = Math.round(Number(args['ping-interval']) * 1000);
const expectedAuth = `Bearer ${args.token}`;

function buildServer() {
  const server = new McpServer({ name: 'ts-sdk-peer', version: '1.0.0' });
  server.registerTool('get_time', { description: 'Current UTC time (ISO 8601)' }, async () => {
    const time = new Date().toISOString();
    return {
      content: [{ type: 'text', text: JSON.stringify({ time }) }],
      structuredContent: { time },
    };
  });
  return server;
}

const app = createMcpExpressApp({ host: args.host });

app.get('/healthz', (_req, res) => {
  res.json({ status: 'ok', server: 'ts-sdk-peer' });
});

app.use((req, res, next) => {
  if (req.headers.authorization !== expectedAuth) {
    res.status(401).json({ error: 'unauthorized' });
    return;
  }
  next();
});

// ---- Streamable HTTP (/mcp), stateful sessions --------------------------------------------

const streamable = new Map(); // session id -> transport

app.post('/mcp', async (req, res) => {
  const sessionId = req.headers['mcp-session-id'];
  let transport = sessionId ? streamable.get(sessionId) : undefined;
  if (!transport) {
    if (sessionId || !isInitializeRequest(req.body)) {
      res.status(sessionId ? 404 : 400).json({
        jsonrpc: '2.0',
        error: { code: -32000, message: sessionId ? 'Session not found' : 'No session' },
        id: null,
      });
      return;
    }
    transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      enableJsonResponse: args['json-response'],
      keepAliveMs: pingMs,
      onsessioninitialized: (sid) => {
        streamable.set(sid, transport);
      },
    });
    transport.onclose = () => {
      if (transport.sessionId) streamable.delete(transport.sessionId);
    };
    await buildServer().connect(transport);
  }
  await transport.handleRequest(req, res, req.body);
});

async function handleSessionRequest(req, res) {
  const transport = streamable.get(req.headers['mcp-session-id']);
  if (!transport) {
    res.status(404).send('Session not found');
    return;
  }
  await transport.handleRequest(req, res);
}

app.get('/mcp', handleSessionRequest);
app.delete('/mcp', handleSessionRequest);

// ---- Legacy HTTP+SSE (/sse + /messages) ---------------------------------------------------

const legacy = new Map(); // session id -> transport

app.get('/sse', async (_req, res) => {
  const transport = new SSEServerTransport('/messages', res);
  legacy.set(transport.sessionId, transport);
  const timer = pingMs >= 1 ? setInterval(() => res.write(': ping\n\n'), pingMs) : undefined;
  timer?.unref();
  res.on('close', () => {
    if (timer) clearInterval(timer);
    legacy.delete(transport.sessionId);
  });
  await buildServer().connect(transport);
});

app.post('/messages', async (req, res) => {
  const transport = legacy.get(req.query.sessionId);
  if (!transport) {
    res.status(404).send('Session not found');
    return;
  }
  await transport.handlePostMessage(req, res, req.body);
});

const listener = app.listen(Number(args.port), args.host, (error) => {
  if (error) {
    console.error('listen failed:', error);
    process.exit(1);
  }
  console.error(`ts-sdk-peer listening on http://${args.host}:${args.port}`);
});
listener.keepAliveTimeout = 30_000;
listener.headersTimeout = 35_000;
listener.requestTimeout = 0; // SSE responses are long-lived
listener.maxConnections = 1_000_000;

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    listener.close();
    listener.closeAllConnections();
    process.exit(0);
  });
}
