//! The generated protobuf messages and gRPC stubs of package `recsys.v1`
//! (`shared/proto/recsys/v1/*.proto`), their encoded descriptor set for server reflection, and the
//! codec the stubs use.

#![allow(clippy::all, missing_docs)]

/// Package `recsys.v1`.
pub mod v1 {
    tonic::include_proto!("recsys.v1");
}

/// The encoded `FileDescriptorSet` of every `.proto` file, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/recsys_descriptor.bin"));

pub mod json {
    //! What the messages' JSON form needs beyond serde's derives.

    /// `vector_source` by its name (`"store"`, `"cache"`, `"fold_in"`, `"cold_start"`,
    /// `"unspecified"`) rather than the enum's number.
    pub mod vector_source {
        use super::super::v1::VectorSource;

        pub fn serialize<S: serde::Serializer>(value: &i32, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(name(*value))
        }

        pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
            let text = <String as serde::Deserialize>::deserialize(d)?;
            [
                VectorSource::Unspecified,
                VectorSource::Cache,
                VectorSource::Store,
                VectorSource::FoldIn,
                VectorSource::ColdStart,
            ]
            .into_iter()
            .find(|v| name(*v as i32) == text)
            .map(|v| v as i32)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown vector source {text:?}")))
        }

        /// The name of a vector source in JSON.
        pub fn name(value: i32) -> &'static str {
            match VectorSource::try_from(value) {
                Ok(VectorSource::Cache) => "cache",
                Ok(VectorSource::Store) => "store",
                Ok(VectorSource::FoldIn) => "fold_in",
                Ok(VectorSource::ColdStart) => "cold_start",
                _ => "unspecified",
            }
        }
    }
}

pub mod codec {
    //! Prost's codec with one change: a message that does not decode (garbage bytes, a string
    //! field that is not UTF-8) is the sender's fault, `INVALID_ARGUMENT`, not `INTERNAL`.

    use std::marker::PhantomData;

    use prost::Message;
    use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
    use tonic::Status;
    use tonic_prost::{ProstDecoder, ProstEncoder};

    #[derive(Debug, Clone)]
    pub struct StrictCodec<T, U>(PhantomData<(T, U)>);

    impl<T, U> Default for StrictCodec<T, U> {
        fn default() -> Self {
            StrictCodec(PhantomData)
        }
    }

    impl<T, U> Codec for StrictCodec<T, U>
    where
        T: Message + Send + 'static,
        U: Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = ProstEncoder<T>;
        type Decoder = StrictDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            ProstEncoder::new(BufferSettings::default())
        }

        fn decoder(&mut self) -> Self::Decoder {
            StrictDecoder(ProstDecoder::new(BufferSettings::default()))
        }
    }

    /// [`ProstDecoder`] answering `INVALID_ARGUMENT` for bytes that are not the message.
    #[derive(Debug)]
    pub struct StrictDecoder<U>(ProstDecoder<U>);

    impl<U: Message + Default> Decoder for StrictDecoder<U> {
        type Item = U;
        type Error = Status;

        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
            self.0.decode(buf).map_err(|status| {
                Status::invalid_argument(format!(
                    "the message is not valid protobuf: {}",
                    status.message()
                ))
            })
        }

        fn buffer_settings(&self) -> BufferSettings {
            self.0.buffer_settings()
        }
    }
}
