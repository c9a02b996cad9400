// The discovery gateway's client: the generated messages and service
// (protobuf-es, from ../../proto) and a thin layer for the journey: the API
// key and shopper id on every call, a default deadline, and retries of calls
// the gateway refused with RESOURCE_EXHAUSTED when its `retry-after` says
// waiting helps. Transport-agnostic: `./node` gives Node transports; in a
// browser pass a `@connectrpc/connect-web` transport.
import {
  Code,
  ConnectError,
  createClient,
  type Client,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";
import { Discovery } from "./gen/discovery/v1/gateway_pb.js";

export * from "./gen/discovery/v1/common_pb.js";
export * from "./gen/discovery/v1/face_analysis_pb.js";
export * from "./gen/discovery/v1/gateway_pb.js";
export * from "./gen/discovery/v1/monitoring_pb.js";
export * from "./gen/discovery/v1/recommendation_pb.js";
export * from "./gen/discovery/v1/sync_pb.js";
export { Code, ConnectError };

/** What every call carries. */
export interface CallOptions {
  /** The API key (`discovery keys create`; `discovery up` prints one). */
  apiKey: string;
  /** The shopper the call is for (authenticated keys' per-user limits). */
  userId?: string;
  /** Retries of a call refused with RESOURCE_EXHAUSTED (default 2). */
  retries?: number;
  /** Longest `retry-after` worth waiting for, in ms (default 2000). */
  maxRetryWaitMs?: number;
}

/** The public API's client. */
export type DiscoveryClient = Client<typeof Discovery>;

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(t);
      reject(signal.reason);
    });
  });

/** The interceptors every discovery call goes through: identity, then retries. */
export function discoveryInterceptors(o: CallOptions): Interceptor[] {
  const retries = o.retries ?? 2;
  const maxWait = o.maxRetryWaitMs ?? 2000;
  const identity: Interceptor = (next) => async (req) => {
    req.header.set("x-api-key", o.apiKey);
    if (o.userId) req.header.set("x-user-id", o.userId);
    return next(req);
  };
  const retry: Interceptor = (next) => async (req) => {
    for (let attempt = 0; ; attempt++) {
      try {
        return await next(req);
      } catch (e) {
        const err = ConnectError.from(e);
        // A stream's request may be half sent; only unary calls are retried.
        if (err.code !== Code.ResourceExhausted || req.stream || attempt >= retries) throw err;
        // Without retry-after the gateway is not saying waiting helps.
        const raw = err.metadata.get("retry-after");
        const after = raw === null ? NaN : Number(raw);
        if (!Number.isFinite(after) || after < 0 || after * 1000 > maxWait) throw err;
        await sleep(after * 1000, req.signal);
      }
    }
  };
  return [identity, retry];
}

/** A client over `transport` (made with `discoveryInterceptors`). */
export function createDiscoveryClient(transport: Transport): DiscoveryClient {
  return createClient(Discovery, transport);
}
