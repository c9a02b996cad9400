"""The journey layer alone: identity metadata and retries (no server)."""

import unittest

import grpc

from discovery_client import Client


class Refusal(grpc.RpcError):
    def __init__(self, code, after=None):
        self._code, self._after = code, after

    def code(self):
        return self._code

    def trailing_metadata(self):
        return () if self._after is None else (("retry-after", str(self._after)),)


class JourneyLayer(unittest.TestCase):
    def client(self, **kw):
        self.slept = []
        return Client("127.0.0.1:1", api_key="dk_k", user_id="alice", sleep=self.slept.append, **kw)

    def test_identity_and_deadline_on_every_call(self):
        seen = {}

        def method(request, timeout=None, metadata=None):
            seen.update(request=request, timeout=timeout, metadata=metadata)
            return "answer"

        c = self.client()
        self.assertEqual(c.call(method, "req"), "answer")
        self.assertEqual(seen["timeout"], 5.0)
        self.assertIn(("x-api-key", "dk_k"), seen["metadata"])
        self.assertIn(("x-user-id", "alice"), seen["metadata"])

    def test_a_short_retry_after_is_waited_then_answered(self):
        calls = []

        def method(request, **kw):
            calls.append(1)
            if len(calls) < 3:
                raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, 1)
            return "ok"

        c = self.client()
        self.assertEqual(c.call(method, "req"), "ok")
        self.assertEqual(self.slept, [1.0, 1.0])

    def test_other_refusals_are_the_callers(self):
        for error in [
            Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, 120),
            Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, None),
            Refusal(grpc.StatusCode.UNAVAILABLE, 1),
        ]:
            calls = []

            def method(request, **kw):
                calls.append(1)
                raise error

            with self.assertRaises(grpc.RpcError):
                self.client().call(method, "req")
            self.assertEqual(len(calls), 1)


if __name__ == "__main__":
    unittest.main()
