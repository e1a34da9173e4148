//! The protobuf codec every generated client and server uses: prost's, with
//! small starting buffers.
//!
//! tonic's default codec starts every stream with an 8 KiB encode and an
//! 8 KiB decode buffer. A coordinator holds one long-lived stream per node, and
//! the messages on it are mostly far smaller (acks, pings, a report of a few
//! KiB), so at 10,000 nodes those defaults alone cost 160 MiB. These buffers
//! start at [`START`] and grow to the largest message the stream carries.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// A stream's buffers start this large.
pub const START: usize = 1024;

/// tonic's own threshold for yielding while a stream encodes a backlog.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// prost encoding with [`START`]-byte starting buffers.
#[derive(Debug, Clone)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(START, YIELD_THRESHOLD)
}
