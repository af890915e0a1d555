//! The form of a queued batch: one `ExportMetricsServiceRequest`, protobuf-encoded, and
//! gzipped when the exporter compresses ([`crate::exporters::otlp::batcher`] does it as it writes the request).
//!
//! The queue stores a batch in the form it was queued in. A disk queue can outlive a
//! configuration: batches queued with gzip on may be sent after a restart with it off, and the
//! other way round. [`as_sent`] turns a batch into what the transport is configured to send,
//! once per send; the common case, a batch queued by this run, is passed through untouched.

use std::io::{Read, Write};

use bytes::Bytes;

/// The first bytes of a gzip member (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Most bytes a queued gzip batch may unpack to. The batcher keeps requests under 4 MiB; this
/// bounds what a damaged (or planted) record can make the agent allocate.
pub const MAX_UNPACKED: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("cannot gzip a queued batch: {0}")]
    Gzip(std::io::Error),
    #[error("a queued gzip batch does not unpack: {0}")]
    Gunzip(std::io::Error),
    #[error("a queued gzip batch unpacks to more than {MAX_UNPACKED} bytes")]
    TooLarge,
}

/// Whether `payload` is gzip rather than a protobuf request. No request starts with byte
/// 0x1f: it would be field 3 with wire type 7, which protobuf does not have (the request's
/// only field is 1, tag byte 0x0a), so the first two bytes tell them apart.
pub fn is_gzip(payload: &[u8]) -> bool {
    payload.starts_with(&GZIP_MAGIC)
}

/// `payload` as a transport configured with `gzip` (the level, `None` for no compression)
/// sends it.
pub fn as_sent(payload: &Bytes, gzip: Option<u32>) -> Result<Bytes, PayloadError> {
    match (is_gzip(payload), gzip) {
        (true, Some(_)) | (false, None) => Ok(payload.clone()),
        (false, Some(level)) => {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(payload.len() / 8),
                flate2::Compression::new(level),
            );
            enc.write_all(payload).map_err(PayloadError::Gzip)?;
            enc.finish().map(Bytes::from).map_err(PayloadError::Gzip)
        }
        (true, None) => {
            let mut out = Vec::with_capacity(payload.len().saturating_mul(8).min(MAX_UNPACKED));
            let read = flate2::read::GzDecoder::new(&payload[..])
                .take(MAX_UNPACKED as u64 + 1)
                .read_to_end(&mut out)
                .map_err(PayloadError::Gunzip)?;
            if read > MAX_UNPACKED {
                return Err(PayloadError::TooLarge);
            }
            Ok(Bytes::from(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use prost::Message;

    fn request() -> Bytes {
        use crate::model::{Point, ResourceId, Sweep, Value};
        use crate::semconv;
        let mut sweep = Sweep::new(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000));
        for c in 0..20 {
            let id = format!("container-{c}");
            let r = sweep.resource_mut(ResourceId::Container(id.clone()), || {
                vec![(semconv::CONTAINER_ID, id.as_str().into())]
            });
            for i in 0..10 {
                r.points.push(
                    Point::new(&semconv::CONTAINER_NETWORK.io, Value::Int(c * 1000 + i))
                        .with(semconv::NETWORK_INTERFACE_NAME, format!("eth{i}"))
                        .with(semconv::NETWORK_IO_DIRECTION, semconv::DIRECTION_RECEIVE),
                );
            }
        }
        Bytes::from(crate::exporters::otlp::encode::encode_sweep(&sweep).encode_to_vec())
    }

    #[test]
    fn a_request_is_never_taken_for_gzip_and_gzip_always_is() {
        let raw = request();
        assert!(!is_gzip(&raw) && raw[0] == 0x0a, "a request starts with field 1's tag");
        assert!(!is_gzip(&[]), "the empty request");
        let packed = as_sent(&raw, Some(1)).unwrap();
        assert!(is_gzip(&packed));
    }

    #[test]
    fn each_form_becomes_the_configured_one_and_back_unchanged() {
        let raw = request();
        for level in [1, 6, 9] {
            let packed = as_sent(&raw, Some(level)).unwrap();
            assert!(packed.len() < raw.len(), "level {level}: {} of {}", packed.len(), raw.len());
            assert_eq!(as_sent(&packed, Some(level)).unwrap(), packed, "gzip kept as it is");
            let back = as_sent(&packed, None).unwrap();
            assert_eq!(back, raw, "level {level} unpacks to the request");
            ExportMetricsServiceRequest::decode(&back[..]).expect("still a request");
        }
        assert_eq!(as_sent(&raw, None).unwrap(), raw, "raw kept as it is");
    }

    #[test]
    fn damaged_or_oversized_gzip_is_an_error_not_a_panic() {
        let packed = as_sent(&request(), Some(1)).unwrap();
        let mut cut = packed.to_vec();
        cut.truncate(packed.len() / 2);
        assert!(matches!(as_sent(&Bytes::from(cut), None), Err(PayloadError::Gunzip(_))));
        let mut flipped = packed.to_vec();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0xff;
        assert!(as_sent(&Bytes::from(flipped), None).is_err(), "a CRC or stream error");
        // A bomb: 80 MiB of zeros packs into about 80 KiB.
        let zeros = vec![0u8; MAX_UNPACKED + 16 * 1024 * 1024];
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(9));
        enc.write_all(&zeros).unwrap();
        let bomb = Bytes::from(enc.finish().unwrap());
        assert!(matches!(as_sent(&bomb, None), Err(PayloadError::TooLarge)));
    }
}
