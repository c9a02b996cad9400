// Starts the example BFF:
//   DISCOVERY_GATEWAY=http://127.0.0.1:50051 DISCOVERY_API_KEY=dk_... npm start
// PORT (default 3000) and HOST (default 127.0.0.1) say where it listens;
// OTEL_EXPORTER_OTLP_ENDPOINT, where its traces go.
import { startTracing, clientSpans } from "./tracing.js";
import { createNodeClient } from "@discovery/client/node";
import { buildApp } from "./app.js";

const stopTracing = startTracing("bff-example");

const baseUrl = process.env.DISCOVERY_GATEWAY;
const apiKey = process.env.DISCOVERY_API_KEY;
if (!baseUrl || !apiKey) {
  console.error("bff: set DISCOVERY_GATEWAY (e.g. http://127.0.0.1:50051) and DISCOVERY_API_KEY (discovery up prints one)");
  process.exit(2);
}
const port = Number(process.env.PORT ?? 3000);
const host = process.env.HOST ?? "127.0.0.1";

const client = createNodeClient({ baseUrl, apiKey, protocol: "grpc", interceptors: [clientSpans] });
const app = buildApp({ client, logger: { level: process.env.LOG_LEVEL ?? "info" } });

let stopping = false;
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, async () => {
    if (stopping) return;
    stopping = true;
    await app.close();
    await stopTracing();
    process.exit(0);
  });
}

try {
  const url = await app.listen({ port, host });
  console.log(`bff listening on ${url}`);
} catch (e) {
  console.error(`bff: cannot listen on ${host}:${port}: ${e.message}`);
  process.exit(1);
}
