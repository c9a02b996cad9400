// Traces for the BFF (OpenTelemetry JS 2.x: the 3.x line needs Node 22).
// With OTEL_EXPORTER_OTLP_ENDPOINT set, spans go over OTLP/gRPC to it
// (Jaeger, Tempo, a collector), as the discovery services' do; without it
// the API's no-op tracer is used and nothing is exported.
//
// What it gives the BFF: a server span per HTTP request, the parent taken
// from the browser's `traceparent` when it sends one, and `clientSpans`, a
// Connect interceptor that opens a client span per discovery call and sends
// its `traceparent` to the gateway, so one trace runs from the shop's page
// through the BFF to every discovery service.
import { context, propagation, SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-grpc";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { BatchSpanProcessor, NodeTracerProvider } from "@opentelemetry/sdk-trace-node";

let provider;

/** Starts exporting when OTEL_EXPORTER_OTLP_ENDPOINT is set; returns the shutdown (flush) function. */
export function startTracing(serviceName) {
  const endpoint = process.env.OTEL_EXPORTER_OTLP_ENDPOINT;
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  if (!endpoint) return async () => {};
  provider = new NodeTracerProvider({
    resource: resourceFromAttributes({
      "service.name": process.env.OTEL_SERVICE_NAME ?? serviceName,
    }),
    spanProcessors: [
      new BatchSpanProcessor(new OTLPTraceExporter({ url: endpoint }), {
        scheduledDelayMillis: 500,
      }),
    ],
  });
  provider.register({ propagator: new W3CTraceContextPropagator() });
  return () => provider.shutdown();
}

const tracer = () => trace.getTracer("discovery-bff-example");

const headerGetter = {
  keys: (h) => Object.keys(h),
  get: (h, k) => {
    const v = h[k];
    return Array.isArray(v) ? v[0] : v;
  },
};

/**
 * Runs `fn(span)` in a server span named `name`, child of the request's
 * `traceparent` if it has a valid one (a malformed one starts a new trace).
 */
export function inServerSpan(req, name, fn) {
  const parent = propagation.extract(context.active(), req.headers, headerGetter);
  return tracer().startActiveSpan(
    name,
    {
      kind: SpanKind.SERVER,
      attributes: { "http.request.method": req.method, "http.route": req.routeOptions.url },
    },
    parent,
    async (span) => {
      try {
        const out = await fn(span);
        return out;
      } catch (e) {
        span.recordException(e);
        span.setStatus({ code: SpanStatusCode.ERROR, message: String(e?.message ?? e) });
        throw e;
      } finally {
        span.end();
      }
    },
  );
}

/** A Connect interceptor: a client span per call, its context sent as `traceparent`. */
export const clientSpans = (next) => async (req) => {
  const service = req.service.typeName;
  const method = req.method.name;
  return tracer().startActiveSpan(
    `${service}/${method}`,
    {
      kind: SpanKind.CLIENT,
      attributes: { "rpc.system": "grpc", "rpc.service": service, "rpc.method": method },
    },
    async (span) => {
      propagation.inject(context.active(), req.header, {
        set: (h, k, v) => h.set(k, v),
      });
      try {
        return await next(req);
      } catch (e) {
        span.setAttribute("rpc.grpc.status_code", e?.code ?? 2);
        span.setStatus({ code: SpanStatusCode.ERROR, message: String(e?.message ?? e) });
        throw e;
      } finally {
        span.end();
      }
    },
  );
};
