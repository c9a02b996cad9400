"""Against a running gateway (scripts/check-clients.sh starts `discovery up`
and sets DISCOVERY_GATEWAY and DISCOVERY_API_KEY)."""

import os
import unittest

import grpc

from discovery.v1 import common_pb2, face_analysis_pb2, recommendation_pb2
from discovery_client import Client

TARGET = os.environ["DISCOVERY_GATEWAY"]
KEY = os.environ["DISCOVERY_API_KEY"]


class ThroughTheGateway(unittest.TestCase):
    def test_recommend_search_product_photo(self):
        with Client(TARGET, api_key=KEY, user_id="shopper-1") as c:
            page = c.Recommend(
                recommendation_pb2.RecommendRequest(
                    face=recommendation_pb2.FaceContext(
                        face_shape=common_pb2.FACE_SHAPE_OVAL, face_width_mm=138
                    ),
                    page=common_pb2.PageRequest(page_size=3),
                )
            )
            self.assertEqual(len(page.items), 3)
            pid = page.items[0].product.id
            self.assertEqual(c.GetProduct(recommendation_pb2.GetProductRequest(id=pid)).product.id, pid)
            hits = c.SearchProducts(recommendation_pb2.SearchProductsRequest(query="round")).hits
            self.assertTrue(hits)
            photo = os.environ.get("DISCOVERY_TEST_PHOTO")
            if photo:
                with open(photo, "rb") as f:
                    analysis = c.AnalyzeFace(face_analysis_pb2.AnalyzeFaceRequest(image=f.read()))
                self.assertNotEqual(analysis.result.face_shape, common_pb2.FACE_SHAPE_UNSPECIFIED)

    def test_refusals_arrive_as_codes(self):
        with Client(TARGET, api_key="dk_wrong") as c:
            with self.assertRaises(grpc.RpcError) as e:
                c.GetProduct(recommendation_pb2.GetProductRequest(id="x"))
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        with Client(TARGET, api_key=KEY) as c:
            with self.assertRaises(grpc.RpcError) as e:
                c.GetProduct(recommendation_pb2.GetProductRequest(id="no-such-frame"))
            self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)


if __name__ == "__main__":
    unittest.main()
