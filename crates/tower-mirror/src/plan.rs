//! The plan: [`Options`] checked and compiled into what the request path runs, with one
//! `Arc`'d runtime object per named target. Built once per configuration; requests load it
//! from the layer's [`Control`](crate::control::Control), and mirrors in flight keep the
//! plan they started with.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};

use crate::admit::{Admission, Filter, Limits, RateLimiter, Sampler, TargetState};
use crate::body::ByteBudget;
use crate::client::{HttpSender, Transport};
use crate::config::{ErrorCallback, Mode, Options, SuccessCallback};
use crate::error::ConfigError;
use crate::observe::Observer;
use crate::outbound::BaseUrl;
use crate::outbound::request::{TargetRules, is_reserved};
use crate::stats::MirrorStats;
use crate::target::Target;

/// A compiled configuration.
pub(crate) struct Plan {
    pub(crate) targets: Box<[Arc<TargetRuntime>]>,
    pub(crate) timeout: Duration,
    pub(crate) mode: Mode,
    pub(crate) copy_body: bool,
    pub(crate) max_body_bytes: usize,
    pub(crate) loop_guard: bool,
    pub(crate) send_after_primary: bool,
    pub(crate) capture_response_body: usize,
    pub(crate) budget: Arc<ByteBudget>,
    pub(crate) on_error: Option<ErrorCallback>,
    pub(crate) on_success: Option<SuccessCallback>,
    pub(crate) observers: Box<[Arc<dyn Observer>]>,
    /// Some target records the primary's response: requests it takes need a
    /// [`ResponseJoin`](crate::sink::ResponseJoin).
    pub(crate) records_responses: bool,
    /// Targets the replacement that made this plan removed: their counts stay readable until
    /// the next one.
    pub(crate) retired: Box<[Arc<TargetRuntime>]>,
}

/// One target, as the request path and its mirror tasks use it.
pub(crate) struct TargetRuntime {
    /// As configured; its [`Target::name`] names it everywhere.
    pub(crate) spec: Target,
    pub(crate) admission: Admission,
    /// How its requests are built; `None` for a recording target, which sends none.
    pub(crate) rules: Option<TargetRules>,
    /// Counters, sampling position, live percentage and pause: kept across replacements
    /// that leave the URL and transport alone.
    pub(crate) state: Arc<TargetState>,
    /// Its own connection pool, or the user's sender.
    pub(crate) client: Transport,
}

impl TargetRuntime {
    pub(crate) fn name(&self) -> &str {
        self.spec.name()
    }

    /// The sampling key's value in `request`, for a recording target whose sink keys its
    /// records by it (Kafka); `None` for every other target, at no cost.
    pub(crate) fn record_key(&self, request: &crate::head::RequestHead<'_>) -> Option<Vec<u8>> {
        match &self.client {
            Transport::Sink(sink) if sink.wants_key() => self.admission.sampler.key_value(request),
            _ => None,
        }
    }
}

impl Plan {
    /// Checks and compiles `options`. With `previous`, the plan it replaces: a target of the
    /// same name, URL and transport keeps its state, its rate-limit bucket and (with the same
    /// sender and connection limit) its connection pool. `default_client` connects when
    /// `options.sender` is `None` (one for the layer's life, so that pools survive).
    pub(crate) fn compile(
        options: Options,
        previous: Option<&Plan>,
        default_client: impl FnOnce() -> HttpSender,
    ) -> Result<Self, ConfigError> {
        if options.targets.is_empty() {
            return Err(ConfigError::NoTargets);
        }
        if options.timeout.is_zero() {
            return Err(ConfigError::InvalidOption {
                option: "timeout",
                reason: "must be greater than zero",
            });
        }
        if options.max_in_flight == 0 {
            return Err(ConfigError::InvalidOption {
                option: "max_in_flight",
                reason: "must be at least 1",
            });
        }
        let mut names = HashSet::new();
        for target in &options.targets {
            if !names.insert(target.name()) {
                return Err(ConfigError::DuplicateName {
                    name: target.name().to_owned(),
                });
            }
        }
        for observer in &options.observers {
            observer.check(&options.targets)?;
        }
        // An HttpSender (the default, or given) connects through per-target pools; any
        // other sender is called as it is.
        let default_sender;
        let sending = match &options.sender {
            Some(sender) => sender.as_http_sender().ok_or(sender),
            None => {
                default_sender = default_client();
                Ok(&default_sender)
            }
        };
        let max_in_flight = options.max_in_flight;
        let targets: Box<[Arc<TargetRuntime>]> = options
            .targets
            .into_iter()
            .map(|spec| {
                let before = previous.and_then(|p| p.target(spec.name()));
                let kept = before.filter(|b| b.spec.url == spec.url && b.spec.http2 == spec.http2);
                let state = match kept {
                    Some(before) => Arc::clone(&before.state),
                    None => Arc::new(TargetState::new(spec.percentage)),
                };
                let rate = kept
                    .filter(|b| b.spec.rate_limit == spec.rate_limit)
                    .and_then(|b| b.admission.limits.rate.clone());
                let admission = compile_admission(&spec, max_in_flight, rate)?;
                if spec.is_recording() {
                    // Written down, not sent: no URL to join, no connection.
                    let previous = kept.and_then(|b| match &b.client {
                        Transport::Sink(sink) => Some(sink),
                        _ => None,
                    });
                    let sink = crate::sink::open(&spec, previous, max_in_flight)?;
                    return Ok(Arc::new(TargetRuntime {
                        admission,
                        rules: None,
                        state,
                        client: Transport::Sink(sink),
                        spec,
                    }));
                }
                let rules = Some(compile_rules(&spec)?);
                let client = match sending {
                    Ok(http) => {
                        let previous = kept.and_then(|b| match &b.client {
                            Transport::Pooled(pool) => Some(pool),
                            Transport::Custom(_) | Transport::Sink(_) => None,
                        });
                        // The URL parsed as a base above, so it has an authority.
                        let pool = http.pool_for(&spec, previous).ok_or_else(|| {
                            ConfigError::InvalidTarget {
                                url: spec.url.clone(),
                                reason: "has no host to connect to".to_owned(),
                            }
                        })?;
                        Transport::Pooled(pool)
                    }
                    Err(sender) => Transport::Custom(Arc::clone(sender)),
                };
                let runtime = TargetRuntime {
                    admission,
                    rules,
                    state,
                    client,
                    spec,
                };
                Ok(Arc::new(runtime))
            })
            .collect::<Result<_, ConfigError>>()?;
        // Checked and compiled: only now may the kept targets' live state change.
        for target in targets.iter() {
            let percentage = target.spec.percentage.min(100);
            target
                .state
                .percentage
                .store(percentage, std::sync::atomic::Ordering::Relaxed);
        }
        let retired: Box<[Arc<TargetRuntime>]> = previous.map_or_else(Box::default, |p| {
            p.targets
                .iter()
                .filter(|old| !targets.iter().any(|new| new.name() == old.name()))
                .cloned()
                .collect()
        });
        // Checked: a removed target's idle connections close now, its busy ones after use.
        for target in retired.iter() {
            if let Transport::Pooled(pool) = &target.client {
                pool.retire();
            }
        }
        let budget = previous
            .map(|p| &p.budget)
            .filter(|b| b.limit() == options.max_buffered_bytes)
            .map_or_else(|| ByteBudget::new(options.max_buffered_bytes), Arc::clone);
        let records_responses = targets
            .iter()
            .any(|t| t.spec.is_recording() && t.spec.record.response);
        Ok(Self {
            targets,
            timeout: options.timeout,
            mode: options.mode,
            copy_body: options.copy_body,
            max_body_bytes: options.max_body_bytes,
            loop_guard: options.loop_guard,
            send_after_primary: options.send_after_primary,
            capture_response_body: options.capture_response_body,
            budget,
            on_error: options.on_error,
            on_success: options.on_success,
            observers: options.observers.into(),
            records_responses,
            retired,
        })
    }

    /// The target named `name`.
    pub(crate) fn target(&self, name: &str) -> Option<&Arc<TargetRuntime>> {
        self.targets.iter().find(|t| t.name() == name)
    }

    /// A snapshot of every target's counters; `not_mirrored` is the caller's.
    pub(crate) fn stats(&self, not_mirrored: crate::stats::NotMirroredStats) -> MirrorStats {
        MirrorStats {
            targets: self
                .targets
                .iter()
                .map(|t| (t, false))
                .chain(self.retired.iter().map(|t| (t, true)))
                .map(|(t, removed)| {
                    let mut stats = t.state.counters.snapshot(t.name(), &t.spec.url, removed);
                    stats.connections = t.client.connections();
                    stats
                })
                .collect(),
            not_mirrored,
            buffered_bytes: self.budget.used(),
        }
    }
}

fn setting_error(target: &Target) -> impl Fn((&'static str, String)) -> ConfigError + '_ {
    |(setting, reason)| ConfigError::InvalidSetting {
        target: target.name().to_owned(),
        setting,
        reason,
    }
}

/// The target's filter, sampler and limits.
/// The target's filter, sampler and limits; `rate`, the bucket to keep, if any.
fn compile_admission(
    target: &Target,
    max_in_flight: usize,
    rate: Option<Arc<RateLimiter>>,
) -> Result<Admission, ConfigError> {
    let invalid = setting_error(target);
    if target.percentage > 100 {
        return Err(ConfigError::PercentageOutOfRange {
            url: target.url.clone(),
            percentage: target.percentage,
        });
    }
    if target.max_connections == 0 {
        return Err(invalid((
            "max_connections",
            "must be at least 1".to_owned(),
        )));
    }
    if let Some(redact) = &target.redact {
        redact.check().map_err(&invalid)?;
    }
    // Only a file target records the primary's response (a Kafka record has no room for a
    // cap of its own, and an HTTP target records nothing).
    if target.record.response && (!target.is_recording() || target.is_kafka()) {
        return Err(invalid((
            "record_response",
            "only for a file target (url = \"file:///…\")".to_owned(),
        )));
    }
    let filter = Filter::compile(&target.filter).map_err(&invalid)?;
    let sampler = match &target.sample_by {
        Some(key) => Sampler::by_key(key).map_err(|r| invalid(("sample_by", r)))?,
        None => Sampler::counter(),
    };
    let rate = match (rate, target.rate_limit) {
        (Some(kept), Some(_)) => Some(kept),
        (_, Some(limit)) => Some(Arc::new(RateLimiter::new(limit).ok_or_else(|| {
            invalid((
                "rate",
                "must be at least 1 mirror per a non-zero period".to_owned(),
            ))
        })?)),
        (_, None) => None,
    };
    Ok(Admission {
        filter,
        sampler,
        limits: Limits::new(max_in_flight, rate),
    })
}

/// The target's base URL, transport, path rewrite and header rules, checked.
pub(crate) fn compile_rules(target: &Target) -> Result<TargetRules, ConfigError> {
    let invalid = |reason: String| ConfigError::InvalidTarget {
        url: target.url.clone(),
        reason,
    };
    let header_name = |name: &str, rule: &str| {
        let parsed = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| invalid(format!("{rule} {name:?} is not a valid header name")))?;
        if is_reserved(&parsed) {
            return Err(invalid(format!(
                "{rule} {name:?}: the mirror manages this header itself"
            )));
        }
        Ok(parsed)
    };
    let strip_headers = target
        .strip_headers
        .iter()
        .map(|name| header_name(name, "strip_headers"))
        .collect::<Result<_, _>>()?;
    let set_headers = target
        .set_headers
        .iter()
        .map(|(name, value)| {
            let name = header_name(name, "set_headers")?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                invalid(format!(
                    "set_headers {name}: {value:?} is not a valid header value"
                ))
            })?;
            Ok((name, value))
        })
        .collect::<Result<_, _>>()?;
    let rewrite_path = match &target.rewrite_path {
        Some((from, to)) => {
            let regex = regex::Regex::new(from).map_err(|e| {
                let reason = e.to_string();
                let last = reason.lines().last().unwrap_or("invalid").trim();
                setting_error(target)((
                    "rewrite_path",
                    format!("{from:?} is not a valid regular expression: {last}"),
                ))
            })?;
            Some((regex, to.clone()))
        }
        None => None,
    };
    Ok(TargetRules {
        base: BaseUrl::parse(&target.url).map_err(|e| invalid(e.to_string()))?,
        http2: target.http2,
        strip_headers,
        set_headers,
        rewrite_path,
        trace_context: target.trace_context,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile_options(options: Options) -> Result<Plan, ConfigError> {
        Plan::compile(options, None, crate::client::HttpSender::new)
    }

    #[test]
    fn header_rules_are_checked() {
        let ok = Target::new("http://h")
            .strip_header("Authorization")
            .set_header("x-shadow", "1");
        let compiled = compile_rules(&ok).unwrap();
        assert_eq!(compiled.strip_headers, ["authorization"]);
        assert_eq!(compiled.set_headers[0].0, "x-shadow");
        let cases = [
            (
                Target::new("http://h").strip_header("bad name"),
                "not a valid header name",
            ),
            (
                Target::new("http://h").set_header("x-ok", "bad\nvalue"),
                "not a valid header value",
            ),
            (
                Target::new("http://h").set_header("Host", "evil"),
                "manages this header",
            ),
            (
                Target::new("http://h").strip_header("x-mirrored-from"),
                "manages this header",
            ),
            (
                Target::new("http://h").set_header("proxy-authorization", "x"),
                "manages this header",
            ),
            (
                Target::new("http://h").set_header("content-length", "1"),
                "manages this header",
            ),
        ];
        for (target, expected) in cases {
            let text = compile_rules(&target).unwrap_err().to_string();
            assert!(
                text.contains(expected) && text.contains("\"http://h\""),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_settings_name_the_target_and_the_setting() {
        let compile = |target: Target| {
            compile_options(Options {
                targets: vec![target],
                ..Options::default()
            })
            .err()
            .map(|e| e.to_string())
        };
        let base = || Target::new("http://h").with_name("staging");
        let cases = [
            (base().path_regex("("), "path_regex"),
            (base().rewrite_path("[", "/"), "rewrite_path"),
            (
                base().sample_by(crate::SampleKey::header("bad name")),
                "sample_by",
            ),
            (base().rate_limit(crate::RateLimit::per_second(0)), "rate"),
            (base().path_prefix("api"), "paths"),
        ];
        for (target, setting) in cases {
            let text = compile(target).expect("an error");
            assert!(
                text.contains("\"staging\"") && text.contains(setting) && !text.contains('\n'),
                "{text}"
            );
        }
        let twice = compile_options(Options {
            targets: vec![
                Target::new("http://a"),
                Target::new("http://b").with_name("http://a"),
            ],
            ..Options::default()
        });
        assert_eq!(
            twice.err(),
            Some(ConfigError::DuplicateName {
                name: "http://a".into()
            })
        );
        // Same URL, two names: fine (two filters on one shadow, say).
        assert!(
            compile_options(Options {
                targets: vec![
                    Target::new("http://a"),
                    Target::new("http://a").with_name("a2")
                ],
                ..Options::default()
            })
            .is_ok()
        );
    }
}
