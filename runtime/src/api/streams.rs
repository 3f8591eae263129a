//! The streamed answers: an event follower as Server-Sent Events, and a
//! log as raw bytes (a byte range of it, or followed as the task writes).
//! The engine's streams are pulled by hyper as the client reads, so a slow
//! client holds one chunk of the runtime's memory, not a backlog.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use warp::http::{header, HeaderMap, Response, StatusCode};

use super::error::ApiError;
use super::routes::{Body, Reply};
use crate::engine::streams::{EventItem, LogName, LogSpan, MAX_OFFSET};
use crate::engine::Engine;

fn flag(name: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ApiError::invalid(format!(
            "{name} '{value}' must be true or false"
        ))),
    }
}

/// A byte offset into a log: at most [`MAX_OFFSET`] (a read past it is
/// EINVAL, not end of file).
fn number(name: &str, value: &str) -> Result<u64, ApiError> {
    value
        .parse::<u64>()
        .ok()
        .filter(|n| *n <= MAX_OFFSET)
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "{name} '{value}' must be a whole number of bytes, at most {MAX_OFFSET}"
            ))
        })
}

/// `GET .../events` query: `Some(after)` to follow from after event
/// `after` (`Last-Event-ID`, else 0), `None` for the plain array.
pub fn events_query(query: &str, headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let mut follow = false;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "follow" => follow = flag("follow", &value)?,
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown query parameter '{other}' (known: follow)"
                )))
            }
        }
    }
    if !follow {
        return Ok(None);
    }
    let after = match headers.get("last-event-id") {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                ApiError::invalid("Last-Event-ID must be the seq of an event (a whole number)")
            })?,
    };
    Ok(Some(after))
}

fn streamed<S>(stream: S) -> Body
where
    S: futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
{
    StreamBody::new(stream.map(|r| r.map(Frame::data))).boxed_unsync()
}

/// One event as an SSE message: `id` its seq, `event` its type, `data`
/// its JSON (one line).
pub fn sse_message(item: &EventItem) -> Bytes {
    match item {
        EventItem::Event(e) => {
            let data = serde_json::to_string(e).unwrap_or_else(|_| "{}".into());
            Bytes::from(format!(
                "id: {}\nevent: {}\ndata: {data}\n\n",
                e.seq, e.event_type
            ))
        }
        EventItem::KeepAlive => Bytes::from_static(b": keep-alive\n\n"),
    }
}

pub async fn follow_events(engine: &Arc<Engine>, id: &str, after: i64) -> Result<Reply, ApiError> {
    let permit = engine.stream_permit()?;
    let events = engine.follow_events(id, after, permit).await?;
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(streamed(events.map(|item| Ok(sse_message(&item)))))
        .map_err(|e| ApiError::internal(format!("building the response: {e}")))
}

/// A `Range: bytes=...` with one range; anything else is ignored (the
/// whole log is sent), as HTTP allows.
fn range(headers: &HeaderMap) -> Option<LogSpan> {
    let spec = headers.get(header::RANGE)?.to_str().ok()?.trim();
    let spec = spec.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        return Some(LogSpan::Suffix(last.parse().ok()?));
    }
    let first = first.parse().ok()?;
    let last = if last.is_empty() {
        None
    } else {
        Some(last.parse().ok()?)
    };
    Some(LogSpan::Range { first, last })
}

/// `GET /api/v1/tasks/{id}/logs/{stdout|stderr}`.
pub async fn log(
    engine: &Arc<Engine>,
    id: &str,
    name: &str,
    query: &str,
    headers: &HeaderMap,
) -> Result<Reply, ApiError> {
    let name = LogName::parse(name).ok_or_else(|| {
        ApiError::verbatim(
            super::error::ApiErrorCode::NotFound,
            format!("not found: no log named '{name}' (stdout or stderr)"),
        )
    })?;
    let (mut follow, mut offset) = (false, None);
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "follow" => follow = flag("follow", &value)?,
            "offset" => offset = Some(number("offset", &value)?),
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown query parameter '{other}' (known: follow, offset)"
                )))
            }
        }
    }
    let ranged = if follow { None } else { range(headers) };
    if ranged.is_some() && offset.is_some() {
        return Err(ApiError::invalid("give offset or a Range header, not both"));
    }
    let offset = offset.unwrap_or(0);
    let (span, permit) = match (follow, ranged) {
        (true, _) => (LogSpan::Follow(offset), Some(engine.stream_permit()?)),
        (false, Some(r)) => (r, None),
        (false, None) => (LogSpan::From(offset), None),
    };
    let read = engine.read_log(id, name, span, permit).await?;
    let mut r = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CACHE_CONTROL, "no-cache");
    match read.end {
        Some(end) => {
            r = r
                .header(header::ACCEPT_RANGES, "bytes")
                .header(header::CONTENT_LENGTH, end - read.start);
            if matches!(span, LogSpan::Range { .. } | LogSpan::Suffix(_)) {
                r = r.status(StatusCode::PARTIAL_CONTENT).header(
                    header::CONTENT_RANGE,
                    format!(
                        "bytes {}-{}/{}",
                        read.start,
                        end.saturating_sub(1),
                        read.len
                    ),
                );
            }
        }
        None => r = r.header("x-content-type-options", "nosniff"),
    }
    r.body(streamed(read.body))
        .map_err(|e| ApiError::internal(format!("building the response: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn ranges() {
        let r = |v: &str| range(&headers(&[("range", v)]));
        assert_eq!(
            r("bytes=0-9"),
            Some(LogSpan::Range {
                first: 0,
                last: Some(9)
            })
        );
        assert_eq!(
            r("bytes=5-"),
            Some(LogSpan::Range {
                first: 5,
                last: None
            })
        );
        assert_eq!(r("bytes=-3"), Some(LogSpan::Suffix(3)));
        for ignored in [
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=x-",
            "bytes=",
            "bytes=-",
        ] {
            assert_eq!(r(ignored), None, "{ignored}");
        }
        assert_eq!(range(&HeaderMap::new()), None);
    }

    #[test]
    fn event_queries() {
        let none = HeaderMap::new();
        assert_eq!(events_query("", &none).unwrap(), None);
        assert_eq!(events_query("follow=false", &none).unwrap(), None);
        assert_eq!(events_query("follow=true", &none).unwrap(), Some(0));
        let h = headers(&[("last-event-id", "7")]);
        assert_eq!(events_query("follow=1", &h).unwrap(), Some(7));
        for (q, h) in [
            ("follow=yes", HeaderMap::new()),
            ("since=3", HeaderMap::new()),
            ("follow=true", headers(&[("last-event-id", "-1")])),
            ("follow=true", headers(&[("last-event-id", "x")])),
        ] {
            assert_eq!(events_query(q, &h).unwrap_err().status(), 400, "{q}");
        }
    }

    #[test]
    fn sse_framing() {
        let e = crate::model::EventRecord {
            seq: 3,
            task_id: "t".into(),
            handle_id: "t".into(),
            event_type: "started".into(),
            client_type: "task_started".into(),
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            message: Some("a\nb".into()),
            data: None,
        };
        let text = sse_message(&EventItem::Event(e));
        let text = std::str::from_utf8(&text).unwrap();
        assert!(text.starts_with("id: 3\nevent: started\ndata: {"), "{text}");
        assert!(text.ends_with("}\n\n"));
        assert_eq!(text.matches('\n').count(), 4, "the data is one line");
    }
}
