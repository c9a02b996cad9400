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
    /// Encoded `RecommendResponse` bytes (shared with the cache) and the
    /// per-call fields appended after them on the wire.
    Encoded(Bytes, Trailer),
    /// A message to encode.
    Message(pb::RecommendResponse),
}

/// `RecommendResponse.cached = true` (field 3, varint 1). Protobuf takes the
/// last value of a scalar field, so appending this to an encoded response
/// marks it as served from cache.
pub const CACHED_TRUE: [u8; 2] = [3 << 3, 1];

/// Room for the trailer: the cached flag, a 32-byte impression id and a
/// variant label (experiment id up to 64, '/', name up to 32) with tags
/// and lengths.
const TRAILER: usize = 2 + 34 + 3 + 97;

/// The fields of one showing of a (possibly cached) page, encoded without
/// allocating: `cached`, `impression_id` (field 5) and `variant` (field 6),
/// appended to the shared encoding as protobuf merges them.
#[derive(Clone, Copy)]
pub struct Trailer {
    bytes: [u8; TRAILER],
    len: usize,
    cached: bool,
}

impl std::fmt::Debug for Trailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trailer")
            .field("cached", &self.cached)
            .field("bytes", &&self.bytes[..self.len])
            .finish()
    }
}

impl Trailer {
    /// The trailer of a page served `cached` or not, with an impression id
    /// (empty: none) and variant label (cut to fit: labels are validated
    /// shorter).
    pub fn new(cached: bool, impression_id: &[u8], variant: &str) -> Self {
        let mut t = Self {
            bytes: [0; TRAILER],
            len: 0,
            cached,
        };
        if cached {
            t.put(&CACHED_TRUE);
        }
        t.field(5, &impression_id[..impression_id.len().min(32)]);
        t.field(6, &variant.as_bytes()[..variant.len().min(97)]);
        t
    }

    /// Whether the page came from cache.
    pub fn cached(&self) -> bool {
        self.cached
    }

    fn field(&mut self, number: u8, value: &[u8]) {
        if value.is_empty() {
            return;
        }
        // Tag (length-delimited) and a one-byte length: values are < 128.
        self.put(&[(number << 3) | 2, value.len() as u8]);
        self.put(value);
    }

    fn put(&mut self, b: &[u8]) {
        self.bytes[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
    }

    /// The encoded fields.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Reply {
    /// The message (decoding if needed), for in-process callers and tests.
    pub fn into_message(self) -> Result<pb::RecommendResponse, Status> {
        match self {
            Self::Message(m) => Ok(m),
            Self::Encoded(b, trailer) => {
                let mut m = pb::RecommendResponse::decode(b)
                    .map_err(|e| Status::internal(format!("encoded reply unreadable: {e}")))?;
                m.merge(trailer.as_bytes())
                    .map_err(|e| Status::internal(format!("reply trailer unreadable: {e}")))?;
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
            Reply::Encoded(b, trailer) => {
                dst.put_slice(&b);
                dst.put_slice(trailer.as_bytes());
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

    #[test]
    fn a_trailer_sets_the_per_call_fields_of_a_shared_encoding() {
        let m = pb::RecommendResponse {
            catalog_version: 7,
            ..Default::default()
        };
        let variant = format!("{}/{}", "e".repeat(64), "v".repeat(32));
        let t = Trailer::new(true, b"0123456789abcdeffedcba9876543210", &variant);
        let back = Reply::Encoded(Bytes::from(m.encode_to_vec()), t)
            .into_message()
            .unwrap();
        assert!(back.cached);
        assert_eq!(back.catalog_version, 7);
        assert_eq!(back.impression_id, "0123456789abcdeffedcba9876543210");
        assert_eq!(back.variant, variant);
        let plain = Trailer::new(false, b"", "default");
        assert_eq!(plain.as_bytes(), b"\x32\x07default");
    }
}
