//! The `Recommend` wire path: a reply that is either a message or bytes
//! already encoded (a cache hit), and the codec that writes either.

use bytes::{BufMut, Bytes};
use discovery_proto::v1 as pb;
use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// A `RecommendResponse`, as a message or as its encoding.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Encoded `RecommendResponse` bytes, and whether they came from cache
    /// (then [`CACHED_TRUE`] is appended on the wire).
    Encoded(Bytes, bool),
    /// A message to encode.
    Message(pb::RecommendResponse),
}

/// `RecommendResponse.cached = true` (field 3, varint 1). Protobuf takes the
/// last value of a repeated scalar field, so appending this to an encoded
/// response marks it as served from cache.
pub const CACHED_TRUE: [u8; 2] = [3 << 3, 1];

impl Reply {
    /// The message (decoding if needed), for in-process callers and tests.
    pub fn into_message(self) -> Result<pb::RecommendResponse, Status> {
        match self {
            Self::Message(m) => Ok(m),
            Self::Encoded(b, cached) => {
                let mut m = pb::RecommendResponse::decode(b)
                    .map_err(|e| Status::internal(format!("encoded reply unreadable: {e}")))?;
                m.cached |= cached;
                Ok(m)
            }
        }
    }
}

/// Codec for `Recommend`: decodes the request with prost, writes [`Reply`].
#[derive(Debug, Default, Clone, Copy)]
pub struct RecommendCodec;

/// Encoder half of [`RecommendCodec`].
#[derive(Debug, Default, Clone, Copy)]
pub struct ReplyEncoder;

/// Decoder half of [`RecommendCodec`].
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestDecoder;

impl Codec for RecommendCodec {
    type Encode = Reply;
    type Decode = pb::RecommendRequest;
    type Encoder = ReplyEncoder;
    type Decoder = RequestDecoder;
    fn encoder(&mut self) -> Self::Encoder {
        ReplyEncoder
    }
    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder
    }
}

impl Encoder for ReplyEncoder {
    type Item = Reply;
    type Error = Status;
    fn encode(&mut self, item: Reply, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match item {
            Reply::Encoded(b, cached) => {
                dst.put_slice(&b);
                if cached {
                    dst.put_slice(&CACHED_TRUE);
                }
                Ok(())
            }
            Reply::Message(m) => m
                .encode(dst)
                .map_err(|e| Status::internal(format!("encoding the reply failed: {e}"))),
        }
    }
}

impl Decoder for RequestDecoder {
    type Item = pb::RecommendRequest;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        pb::RecommendRequest::decode(src).map(Some).map_err(|e| {
            Status::invalid_argument(format!("request is not a RecommendRequest: {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appending_the_cached_flag_sets_it() {
        let m = pb::RecommendResponse {
            catalog_version: 7,
            ..Default::default()
        };
        let mut b = m.encode_to_vec();
        b.extend_from_slice(&CACHED_TRUE);
        let back = pb::RecommendResponse::decode(&b[..]).unwrap();
        assert!(back.cached);
        assert_eq!(back.catalog_version, 7);
    }
}
