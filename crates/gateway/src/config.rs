//! The gateway's variables (its `Config` is read in `lib.rs`).

use discovery_kit::config::Variable;

/// This service's variables, with their defaults (the launcher lists them
/// with everyone's: `discovery env`, the README).
pub const VARIABLES: &[Variable] = &[
    Variable {
        name: "DISCOVERY_GATEWAY_PORT",
        default: "50051",
        help: "gateway gRPC port (public API, gRPC-Web)",
    },
    Variable {
        name: "DISCOVERY_API_KEYS_REFRESH",
        default: "10s",
        help: "gateway: how often API keys are reloaded from api_keys (revocations take effect within it)",
    },
    Variable {
        name: "DISCOVERY_CORS_ORIGINS",
        default: "*",
        help: "gateway: origins allowed for browser gRPC-Web calls (comma-separated)",
    },
    Variable {
        name: "DISCOVERY_LIMITS",
        default: "true",
        help: "gateway: rate and per-method concurrency limits on or off (benchmarks)",
    },
    Variable {
        name: "DISCOVERY_LIMIT_GLOBAL",
        default: "1000/s:2000",
        help: "gateway: every call, all gateways together (N/s, N/m, N/h, optional :BURST, or off)",
    },
    Variable {
        name: "DISCOVERY_LIMIT_FACE",
        default: "50/m",
        help: "gateway: AnalyzeFace, all callers",
    },
    Variable {
        name: "DISCOVERY_LIMIT_RECOMMEND",
        default: "200/m",
        help: "gateway: Recommend, all callers",
    },
    Variable {
        name: "DISCOVERY_LIMIT_AUTHENTICATED",
        default: "100/m,face=10/h,recommend=20/m",
        help: "gateway: per signed-in user (x-user-id)",
    },
    Variable {
        name: "DISCOVERY_LIMIT_ANONYMOUS",
        default: "20/m,face=3/h,recommend=5/m",
        help: "gateway: per address for anonymous callers",
    },
    Variable {
        name: "DISCOVERY_LIMIT_PARTNER",
        default: "off",
        help: "gateway: per partner key",
    },
    Variable {
        name: "DISCOVERY_CONCURRENCY_FACE",
        default: "10",
        help: "gateway: AnalyzeFace calls in flight per gateway",
    },
    Variable {
        name: "DISCOVERY_CONCURRENCY_RECOMMEND",
        default: "50",
        help: "gateway: Recommend calls in flight per gateway",
    },
    Variable {
        name: "DISCOVERY_GATEWAY_MAX_IN_FLIGHT",
        default: "2000",
        help: "gateway: calls in flight before shedding (RESOURCE_EXHAUSTED, retry-after)",
    },
    Variable {
        name: "DISCOVERY_GATEWAY_REPLICAS",
        default: "1",
        help: "gateway: replica count, or dns://host:port of the gateway's headless Service to count them; the local fallback (Redis down) divides limits by it",
    },
    Variable {
        name: "DISCOVERY_LIMIT_REDIS_TIMEOUT",
        default: "50ms",
        help: "gateway: Redis answer time before the local fallback",
    },
    Variable {
        name: "DISCOVERY_GATEWAY_CONNECTIONS",
        default: "1",
        help: "gateway: HTTP/2 connections per upstream replica and worker",
    },
    Variable {
        name: "DISCOVERY_GATEWAY_WORKERS",
        default: "cores",
        help: "gateway: worker threads, each serving its connections start to end",
    },
    Variable {
        name: "DISCOVERY_HEALTH_INTERVAL",
        default: "10s",
        help: "gateway: upstream health checks (unhealthy after 3 failures, healthy after 2 successes)",
    },
    Variable {
        name: "DISCOVERY_GATEWAY_RETRIES",
        default: "2",
        help: "gateway: extra attempts for idempotent calls, on another replica, within a retry budget",
    },
    Variable {
        name: "DISCOVERY_TRUSTED_PROXIES",
        default: "",
        help: "gateway: CIDRs of the load balancers whose X-Forwarded-For / Forwarded name the client (empty: the TCP peer is the client)",
    },
    Variable {
        name: "DISCOVERY_LIMIT_CLIENT_SHARE",
        default: "0.5",
        help: "gateway: the largest share of the global rate and in-flight budgets one client (API key's client) may take; 1 turns it off",
    },
    Variable {
        name: "DISCOVERY_GATEWAY_BODY_TIMEOUT",
        default: "10s",
        help: "gateway: a unary request body must arrive within this (a photo: 4x); a stream must send a frame at least this often",
    },
    Variable {
        name: "DISCOVERY_GATEWAY_MIN_DEADLINE",
        default: "5ms",
        help: "gateway: shortest caller deadline (grpc-timeout) forwarded; shorter ones answer DEADLINE_EXCEEDED at once",
    },
    Variable {
        name: "DISCOVERY_GATEWAY_MAX_DEADLINE",
        default: "60s",
        help: "gateway: longest deadline honoured; callers asking more get this",
    },
];
