// The journey layer on its own: identity headers, and retries that honour
// the gateway's retry-after (no server needed).
import { test } from "node:test";
import assert from "node:assert/strict";
import { Code, ConnectError, discoveryInterceptors } from "../dist/index.js";

// Runs a unary request through the interceptors to `next`.
function run(options, next) {
  const chain = discoveryInterceptors(options).reduceRight((n, i) => i(n), next);
  const req = { stream: false, header: new Headers(), signal: new AbortController().signal };
  return chain(req);
}

function limited(after) {
  const metadata = new Headers();
  if (after !== undefined) metadata.set("retry-after", String(after));
  return new ConnectError("Recommend: limited", Code.ResourceExhausted, metadata);
}

test("every call carries the key and the shopper", async () => {
  let seen;
  await run({ apiKey: "dk_k", userId: "alice" }, async (req) => {
    seen = req.header;
    return { message: {} };
  });
  assert.equal(seen.get("x-api-key"), "dk_k");
  assert.equal(seen.get("x-user-id"), "alice");
});

test("a refusal whose retry-after is short is retried, then answered", async () => {
  let calls = 0;
  const res = await run({ apiKey: "k" }, async () => {
    calls++;
    if (calls < 3) throw limited(0);
    return { message: "ok" };
  });
  assert.equal(res.message, "ok");
  assert.equal(calls, 3);
});

test("a long retry-after, no retry-after, or another code is the caller's", async () => {
  for (const err of [limited(120), limited(undefined), new ConnectError("down", Code.Unavailable)]) {
    let calls = 0;
    await assert.rejects(
      run({ apiKey: "k" }, async () => {
        calls++;
        throw err;
      }),
      (e) => e.code === err.code,
    );
    assert.equal(calls, 1);
  }
});

test("retries stop at the limit", async () => {
  let calls = 0;
  await assert.rejects(
    run({ apiKey: "k", retries: 1 }, async () => {
      calls++;
      throw limited(0);
    }),
    (e) => e.code === Code.ResourceExhausted,
  );
  assert.equal(calls, 2);
});
