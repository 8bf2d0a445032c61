//! One exchange with a target: send, receive the head, read the body for connection reuse,
//! keeping its first bytes when someone wants them.

use std::time::Instant;

use bytes::BytesMut;
use http::{Method, Uri};
use http_body_util::BodyExt;

use crate::client::{SendFuture, ShadowBody};
use crate::error::{BoxError, MirrorError};
use crate::response::MirrorResponse;

/// How much of a shadow response body is read so that its connection can be reused; a longer
/// body is dropped unread and its connection closed.
const DRAIN_LIMIT: usize = 1 << 20;

/// Awaits the response to a request on its way (`sending`, for `method` `uri`), reads it,
/// keeps the body's first `capture` bytes; also says whether the whole body fit in them.
pub(super) async fn exchange(
    sending: SendFuture,
    method: Method,
    uri: Uri,
    capture: usize,
) -> Result<(MirrorResponse, bool), MirrorError> {
    let started = Instant::now();
    let response = sending.await.map_err(MirrorError::from_send)?;
    let latency = started.elapsed();
    let (parts, body) = response.into_parts();
    let (body, complete) = drain(body, capture)
        .await
        .map_err(MirrorError::response_body)?;
    let response = MirrorResponse {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        method,
        uri,
        latency,
        body: body.freeze(),
    };
    Ok((response, complete))
}

/// Reads a response body so its connection can be reused, keeping its first `capture`
/// bytes; says whether the whole body fit in them.
async fn drain(mut body: ShadowBody, capture: usize) -> Result<(BytesMut, bool), BoxError> {
    let mut captured = BytesMut::new();
    let mut read = 0usize;
    let limit = DRAIN_LIMIT.max(capture);
    while read < limit {
        let Some(frame) = body.frame().await.transpose()? else {
            return Ok((captured, read <= capture));
        };
        if let Ok(data) = frame.into_data() {
            read = read.saturating_add(data.len());
            let room = capture.saturating_sub(captured.len());
            captured.extend_from_slice(&data[..room.min(data.len())]);
        }
    }
    Ok((captured, false))
}
