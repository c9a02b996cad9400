// Against a running gateway (scripts/check-clients.sh starts `discovery up`
// and sets DISCOVERY_GATEWAY and DISCOVERY_API_KEY): every transport the
// package offers reaches the same answers, and refusals arrive as codes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { create } from "@bufbuild/protobuf";
import { Code, FaceShape, RecommendRequestSchema } from "../dist/index.js";
import { createNodeClient } from "../dist/node.js";

const baseUrl = process.env.DISCOVERY_GATEWAY;
const apiKey = process.env.DISCOVERY_API_KEY;
if (!baseUrl || !apiKey) {
  throw new Error("set DISCOVERY_GATEWAY and DISCOVERY_API_KEY (scripts/check-clients.sh does)");
}

for (const protocol of ["grpc", "connect", "connect-json", "grpc-web"]) {
  test(`${protocol}: recommend, search, product, photo, a stream, refusals`, async () => {
    const client = createNodeClient({ baseUrl, apiKey, protocol, userId: "shopper-1" });
    const rec = await client.recommend(
      create(RecommendRequestSchema, {
        face: { faceShape: FaceShape.OVAL, faceWidthMm: 138 },
        page: { pageSize: 3 },
        placement: "home",
      }),
    );
    assert.equal(rec.items.length, 3);
    const id = rec.items[0].product.id;
    const search = await client.searchProducts({ query: "round" });
    assert.ok(search.hits.length > 0);
    const product = await client.getProduct({ id });
    assert.equal(product.product.id, id);
    if (process.env.DISCOVERY_TEST_PHOTO) {
      const image = readFileSync(process.env.DISCOVERY_TEST_PHOTO);
      const analysis = await client.analyzeFace({ input: { case: "image", value: image } });
      assert.notEqual(analysis.result.faceShape, FaceShape.UNSPECIFIED);
    }
    // A server stream: the conversation's events as they come.
    const kinds = [];
    for await (const ev of client.converse({ sessionId: `ts-${protocol}`, utterance: "round frames under 150" })) {
      kinds.push(ev.event.case);
    }
    assert.ok(kinds.includes("results") && kinds.includes("reply"), kinds.join());
    const stranger = createNodeClient({ baseUrl, apiKey: "dk_wrong", protocol });
    await assert.rejects(
      (async () => {
        for await (const _ of stranger.converse({ utterance: "round" }));
      })(),
      (e) => e.code === Code.Unauthenticated,
    );
    await assert.rejects(stranger.getProduct({ id }), (e) => e.code === Code.Unauthenticated);
    await assert.rejects(client.getProduct({ id: "no-such-frame" }), (e) => e.code === Code.NotFound);
  });
}
