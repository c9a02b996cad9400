// Node transports for the discovery client: gRPC (HTTP/2), Connect (JSON or
// binary, HTTP/1.1 or HTTP/2) and gRPC-Web.
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import type { Interceptor, Transport } from "@connectrpc/connect";
import {
  createDiscoveryClient,
  discoveryInterceptors,
  type CallOptions,
  type DiscoveryClient,
} from "./index.js";

/** How to reach the gateway. */
export type Protocol = "grpc" | "connect" | "connect-json" | "grpc-web";

export interface NodeOptions extends CallOptions {
  /** The gateway, e.g. `http://127.0.0.1:50051` or `https://discovery.shop.example`. */
  baseUrl: string;
  /** gRPC by default; `connect-json` for JSON on the wire. */
  protocol?: Protocol;
  /** Default deadline of a call, in ms (default 5000; streams: none). */
  timeoutMs?: number;
  /**
   * Interceptors run before the discovery ones (outermost first), e.g. one
   * that opens a client span and sends its `traceparent`: it then covers
   * the retries too.
   */
  interceptors?: Interceptor[];
}

/** A transport to the gateway with the discovery interceptors. */
export function nodeTransport(o: NodeOptions): Transport {
  const interceptors = [...(o.interceptors ?? []), ...discoveryInterceptors(o)];
  const defaultTimeoutMs = o.timeoutMs ?? 5000;
  switch (o.protocol ?? "grpc") {
    case "grpc":
      return createGrpcTransport({ baseUrl: o.baseUrl, interceptors, defaultTimeoutMs });
    case "connect":
      return createConnectTransport({
        baseUrl: o.baseUrl,
        httpVersion: "1.1",
        useBinaryFormat: true,
        interceptors,
        defaultTimeoutMs,
      });
    case "connect-json":
      return createConnectTransport({
        baseUrl: o.baseUrl,
        httpVersion: "1.1",
        useBinaryFormat: false,
        interceptors,
        defaultTimeoutMs,
      });
    case "grpc-web":
      return createGrpcWebTransport({
        baseUrl: o.baseUrl,
        httpVersion: "1.1",
        interceptors,
        defaultTimeoutMs,
      });
  }
}

/** A client of the gateway from Node. */
export function createNodeClient(o: NodeOptions): DiscoveryClient {
  return createDiscoveryClient(nodeTransport(o));
}
