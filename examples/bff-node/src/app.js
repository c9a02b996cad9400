// The BFF's HTTP API: what a shop's pages call. Two routes over the
// discovery gateway:
//   POST /fit     the shopper's photo in, their face and the frames that fit out
//   GET  /search  free-text search ("round titanium under 150")
// Every input is bounded here before it costs the gateway anything: body
// type and size, query lengths, page sizes, the shopper id's form.
import Fastify from "fastify";
import { Code, ConnectError, FaceShape, FrameShape } from "@discovery/client";
import { inServerSpan } from "./tracing.js";

// The gateway's own photo limit (AnalyzeFaceRequest.image: 15 MiB).
const MAX_PHOTO_BYTES = 15 * 1024 * 1024;

const shopperHeader = {
  type: "object",
  properties: { "x-shopper-id": { type: "string", pattern: "^[A-Za-z0-9_-]{1,64}$" } },
};

const name = (e, v) => (e[v] ?? "UNSPECIFIED").toLowerCase();

const money = (m) =>
  m ? { amount: (Number(m.amountMinor) / 100).toFixed(2), currency: m.currency } : null;

const frame = (p, extra) => ({
  id: p.id,
  name: p.name,
  brand: p.brand,
  shape: name(FrameShape, p.shape),
  price: money(p.price),
  ...extra,
});

const mm = (m) => (m && m.valueMm > 0 ? Math.round(m.valueMm * 10) / 10 : null);

// A gateway refusal as the shop's page should see it: the caller's mistakes
// keep their message, the BFF's own (a refused key) and outages do not leak.
const STATUS = new Map([
  [Code.InvalidArgument, 400],
  [Code.OutOfRange, 400],
  [Code.FailedPrecondition, 422],
  [Code.NotFound, 404],
  [Code.ResourceExhausted, 429],
  [Code.DeadlineExceeded, 504],
  [Code.Unavailable, 503],
]);

function replyError(reply, log, e) {
  const err = ConnectError.from(e);
  const status = STATUS.get(err.code) ?? 502;
  if (status === 502) log.error({ code: Code[err.code], msg: err.rawMessage }, "discovery call failed");
  const retryAfter = err.metadata.get("retry-after");
  if (retryAfter) reply.header("retry-after", retryAfter);
  const message = status === 502 ? "the frame service failed; try again later" : err.rawMessage;
  return reply.code(status).send({ error: message, code: Code[err.code] });
}

const withShopper = (req) => {
  const shopper = req.headers["x-shopper-id"];
  return shopper ? { headers: { "x-user-id": shopper } } : {};
};

/** The BFF over `client` (a DiscoveryClient). */
export function buildApp({ client, logger = true }) {
  // Unknown query parameters are refused, not silently dropped (Fastify's
  // default): a page sending `maxprice` should hear that nothing filtered.
  const app = Fastify({
    logger,
    bodyLimit: 64 * 1024,
    ajv: { customOptions: { removeAdditional: false } },
  });
  app.addContentTypeParser(
    /^image\/(jpeg|png|webp)$/,
    { parseAs: "buffer", bodyLimit: MAX_PHOTO_BYTES },
    (_req, body, done) => done(null, body),
  );

  // A client that asks before uploading (`Expect: 100-continue`: curl does
  // for bodies over 1 MiB) hears 413 before it sends a photo too large,
  // instead of Node's automatic `100 Continue` followed by a 413 mid-upload
  // and a reset connection.
  app.server.on("checkContinue", (req, res) => {
    if (Number(req.headers["content-length"] ?? 0) > MAX_PHOTO_BYTES) {
      res.writeHead(413, { "content-type": "application/json", connection: "close" });
      res.end(JSON.stringify({ error: `the photo is over ${MAX_PHOTO_BYTES} bytes` }));
      return;
    }
    res.writeContinue();
    app.server.emit("request", req, res);
  });

  app.get("/healthz", async () => ({ ok: true }));

  app.post(
    "/fit",
    {
      schema: {
        headers: shopperHeader,
        querystring: {
          type: "object",
          properties: {
            size: { type: "integer", minimum: 1, maximum: 24, default: 6 },
            maxPrice: { type: "integer", minimum: 1, maximum: 100000 },
          },
          additionalProperties: false,
        },
      },
    },
    (req, reply) =>
      inServerSpan(req, "POST /fit", async () => {
        if (!Buffer.isBuffer(req.body) || req.body.length === 0) {
          return reply.code(415).send({ error: "send the photo as the body: image/jpeg, image/png or image/webp" });
        }
        try {
          const out = await client.analyzeAndRecommend(
            {
              analyze: { input: { case: "image", value: req.body } },
              recommend: {
                page: { pageSize: req.query.size },
                placement: "bff-fit",
                filter:
                  req.query.maxPrice === undefined ? undefined : { maxPriceMinor: BigInt(req.query.maxPrice) * 100n },
              },
            },
            { ...withShopper(req), timeoutMs: 15000 },
          );
          const face = out.analysis?.result;
          const page = out.recommendations;
          const m = face?.measurements;
          return {
            face: {
              analysisId: face?.analysisId,
              shape: name(FaceShape, face?.faceShape),
              confidence: face?.faceShapeConfidence,
              measurementsMm: {
                pupillaryDistance: mm(m?.pupillaryDistance),
                faceWidth: mm(m?.faceWidth),
                faceLength: mm(m?.faceLength),
              },
            },
            frames: (page?.items ?? []).map((i) => frame(i.product, { score: i.score, reasons: i.reasons })),
            impressionId: page?.impressionId,
          };
        } catch (e) {
          return replyError(reply, req.log, e);
        }
      }),
  );

  app.get(
    "/search",
    {
      schema: {
        headers: shopperHeader,
        querystring: {
          type: "object",
          required: ["q"],
          properties: {
            q: { type: "string", minLength: 1, maxLength: 256 },
            size: { type: "integer", minimum: 1, maximum: 50, default: 12 },
          },
          additionalProperties: false,
        },
      },
    },
    (req, reply) =>
      inServerSpan(req, "GET /search", async () => {
        try {
          const out = await client.searchProducts(
            { query: req.query.q, page: { pageSize: req.query.size } },
            withShopper(req),
          );
          return {
            query: req.query.q,
            corrected: out.correctedQuery || null,
            understood: out.understood.map((c) => ({ kind: c.kind, label: c.label })),
            frames: out.hits.map((h) => frame(h.product, { score: h.score })),
          };
        } catch (e) {
          return replyError(reply, req.log, e);
        }
      }),
  );

  return app;
}
