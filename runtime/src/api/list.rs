//! `GET /api/v1/tasks`: its query string as a store filter. Every
//! parameter is checked; an unknown one, a repeat of a single-valued one
//! or a bad value is a 400 that names it.

use execgo_runtime_protocol::TaskStatus;

use super::error::ApiError;
use crate::store::{Cursor, TaskFilter};

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

pub fn parse(query: &str) -> Result<TaskFilter, ApiError> {
    let mut f = TaskFilter {
        limit: DEFAULT_LIMIT,
        ..Default::default()
    };
    let mut seen_limit = false;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "status" => {
                for name in value.split(',') {
                    let s = TaskStatus::parse(name.trim()).ok_or_else(|| {
                        ApiError::invalid(format!(
                            "status '{name}' is not one of accepted, running, success, failed, cancelled"
                        ))
                    })?;
                    if !f.statuses.contains(&s) {
                        f.statuses.push(s);
                    }
                }
            }
            "tenant" => once(&mut f.tenant, "tenant", &value)?,
            "owner" => once(&mut f.owner, "owner", &value)?,
            "label" => {
                let (k, v) = value.split_once(':').ok_or_else(|| {
                    ApiError::invalid(format!("label '{value}' must be key:value"))
                })?;
                if k.is_empty() {
                    return Err(ApiError::invalid(format!(
                        "label '{value}' has an empty key"
                    )));
                }
                f.labels.push((k.to_string(), v.to_string()));
            }
            "created_after" => {
                let t = timestamp("created_after", &value, Round::Down)?;
                once(&mut f.created_after, "created_after", &t)?
            }
            "created_before" => {
                let t = timestamp("created_before", &value, Round::Up)?;
                once(&mut f.created_before, "created_before", &t)?
            }
            "limit" => {
                if std::mem::replace(&mut seen_limit, true) {
                    return Err(ApiError::invalid("limit is given more than once"));
                }
                f.limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid(format!(
                            "limit '{value}' must be a whole number from 1 to {MAX_LIMIT}"
                        ))
                    })?;
            }
            "cursor" => {
                if f.after.is_some() {
                    return Err(ApiError::invalid("cursor is given more than once"));
                }
                f.after = Some(Cursor::decode(&value).ok_or_else(|| {
                    ApiError::invalid(
                        "cursor is not one this runtime gave (pass next_cursor as it is)",
                    )
                })?);
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown query parameter '{other}' (known: status, tenant, owner, label, \
                     created_after, created_before, limit, cursor)"
                )))
            }
        }
    }
    Ok(f)
}

fn once(slot: &mut Option<String>, name: &str, value: &str) -> Result<(), ApiError> {
    if slot.is_some() {
        return Err(ApiError::invalid(format!("{name} is given more than once")));
    }
    *slot = Some(value.to_string());
    Ok(())
}

enum Round {
    Down,
    Up,
}

/// An RFC 3339 time as stored timestamps are written (UTC, milliseconds),
/// rounded so that comparing at millisecond precision keeps the bound's
/// meaning: down for "after", up for "before".
fn timestamp(name: &str, value: &str, round: Round) -> Result<String, ApiError> {
    let t = chrono::DateTime::parse_from_rfc3339(value)
        .map_err(|e| {
            ApiError::invalid(format!(
                "{name} '{value}' is not an RFC 3339 time (e.g. 2026-01-02T15:04:05Z): {e}"
            ))
        })?
        .with_timezone(&chrono::Utc);
    let sub_ms = t.timestamp_subsec_nanos() % 1_000_000;
    let t = match round {
        Round::Up if sub_ms > 0 => t + chrono::Duration::nanoseconds(1_000_000 - i64::from(sub_ms)),
        _ => t - chrono::Duration::nanoseconds(i64::from(sub_ms)),
    };
    Ok(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_every_filter() {
        let f = parse("").unwrap();
        assert_eq!(f.limit, DEFAULT_LIMIT);
        assert!(f.statuses.is_empty() && f.after.is_none());
        let f = parse(
            "status=running,success&status=failed&tenant=acme&owner=bob&label=team:a&\
             label=url:http%3A%2F%2Fx&created_after=2026-01-01T00:00:00.1234Z&\
             created_before=2026-01-01T01:00:00.1234%2B01:00&limit=1000",
        )
        .unwrap();
        assert_eq!(
            f.statuses,
            [TaskStatus::Running, TaskStatus::Success, TaskStatus::Failed]
        );
        assert_eq!(f.tenant.as_deref(), Some("acme"));
        assert_eq!(f.owner.as_deref(), Some("bob"));
        assert_eq!(
            f.labels,
            [
                ("team".to_string(), "a".to_string()),
                ("url".to_string(), "http://x".to_string())
            ]
        );
        assert_eq!(f.created_after.as_deref(), Some("2026-01-01T00:00:00.123Z"));
        assert_eq!(
            f.created_before.as_deref(),
            Some("2026-01-01T00:00:00.124Z")
        );
        assert_eq!(f.limit, 1000);
    }

    #[test]
    fn bad_input_names_the_parameter() {
        for (q, needle) in [
            ("status=done", "status 'done'"),
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=x", "limit"),
            ("limit=5&limit=6", "more than once"),
            ("tenant=a&tenant=b", "tenant is given more than once"),
            ("label=nocolon", "key:value"),
            ("label=:v", "empty key"),
            ("created_after=yesterday", "created_after"),
            ("cursor=abc", "cursor"),
            ("follow=true", "unknown query parameter 'follow'"),
        ] {
            let e = parse(q).unwrap_err();
            assert_eq!(e.status(), 400, "{q}");
            assert!(e.message.contains(needle), "{q}: {}", e.message);
        }
    }
}
