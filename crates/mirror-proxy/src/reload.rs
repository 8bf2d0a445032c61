//! Operating the proxy live: the configuration in force, and a reload that re-reads the
//! `--config` file (under the command line it started with) and applies whatever can change
//! without a restart — the upstream and its timeout, every mirror target and mirror option,
//! the comparisons, the drain timeout, the admin token — or, when any of it is wrong or needs a
//! restart, applies nothing.
//!
//! The admin API (`POST /reload`) and `SIGHUP` both end up in [`Live::reload`]; the admin
//! API's other changes (pause, percentage, the kill switch) go straight to the layer's
//! [`MirrorHandle`].

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tower_mirror::diff::Diff;
use tower_mirror::{HttpSender, MirrorHandle, MirrorLayer, Options, Sender, Target};

use crate::config::{AdminToken, Config, ConfigError, MirrorSettings, RunArgs};
use crate::forward::{LiveRoute, UpstreamRoute};
use crate::telemetry::Telemetry;

/// Who asked for a change: said in every log line about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A request to the admin API.
    Admin,
    /// `SIGHUP`.
    Sighup,
}

impl Source {
    /// As logged.
    pub fn label(self) -> &'static str {
        match self {
            Self::Admin => "admin API",
            Self::Sighup => "SIGHUP",
        }
    }
}

/// Why a reload applied nothing: one line, the CLI's own for a bad file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadError(pub String);

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ReloadError {}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Targets added, by name.
    pub added: Vec<String>,
    /// Targets removed, by name (their counts stay in `/stats` until the next reload).
    pub removed: Vec<String>,
    /// Targets kept under their name with some setting changed.
    pub changed: Vec<String>,
    /// Other settings changed, by config key (`upstream`, `timeout`, ...).
    pub settings: Vec<String>,
}

/// The comparisons' settings: a reload keeps the running [`Diff`] (and its report) while
/// they are unchanged.
type DiffKey = (Vec<String>, Vec<String>, usize);

fn diff_key(settings: &MirrorSettings) -> DiffKey {
    let diff = &settings.diff;
    (
        diff.ignore_headers.clone(),
        diff.ignore_fields.clone(),
        diff.max_body_bytes,
    )
}

/// The mirror layer, its handle, and the one sender every configuration it runs shares, so
/// that each worker's connection pools outlive a reload.
pub(crate) struct Mirroring {
    pub(crate) layer: MirrorLayer,
    handle: MirrorHandle,
    sender: Arc<dyn Sender>,
}

impl Mirroring {
    /// The layer for `config`, its callbacks feeding `telemetry`, its mirrors sent through a
    /// connection pool per worker, and `diff` as its observer when a target is compared.
    pub(crate) fn new(
        config: &Config,
        telemetry: &Arc<Telemetry>,
        diff: Option<&Diff>,
    ) -> Result<Self, ConfigError> {
        let danger = config.danger_accept_invalid_certs;
        let roots = config.tls_roots.clone();
        // tower-mirror gives each target its own bounded pool from this sender, with a shard
        // per worker thread, so that a mirror and its connection stay on one worker.
        let sender: Arc<dyn Sender> = Arc::new(if danger {
            HttpSender::dangerous_accept_invalid_certificates()
        } else {
            HttpSender::with_root_certificates(roots)
        });
        let options = options(&config.mirror, telemetry, &sender, diff);
        let layer = MirrorLayer::with_options(options).map_err(|e| ConfigError(e.to_string()))?;
        Ok(Self {
            handle: layer.handle(),
            layer,
            sender,
        })
    }
}

/// The layer's options for `settings`: built the same way at start and by every reload, with
/// the same callbacks and the same sender.
fn options(
    settings: &MirrorSettings,
    telemetry: &Arc<Telemetry>,
    sender: &Arc<dyn Sender>,
    diff: Option<&Diff>,
) -> Options {
    let (on_success, on_error) = (Arc::clone(telemetry), Arc::clone(telemetry));
    Options {
        on_success: Some(Arc::new(move |target: &str, response: &_| {
            on_success.mirror_succeeded(target, response)
        })),
        on_error: Some(Arc::new(move |target: &str, error: &_| {
            on_error.mirror_failed(target, error)
        })),
        observers: diff
            .filter(|_| settings.compares())
            .map(|diff| Arc::new(diff.clone()) as Arc<dyn tower_mirror::observe::Observer>)
            .into_iter()
            .collect(),
        sender: Some(Arc::clone(sender)),
        ..settings.options()
    }
}

/// The comparisons for `settings`, counted in `telemetry`.
pub(crate) fn new_diff(
    settings: &MirrorSettings,
    telemetry: &Arc<Telemetry>,
) -> Result<Diff, ConfigError> {
    let on_comparison = Arc::clone(telemetry);
    let mut options = settings.diff.clone();
    options.on_comparison = Some(Arc::new(move |comparison: &_| {
        on_comparison.compared(comparison)
    }));
    Diff::new(options).map_err(|e| ConfigError(e.to_string()))
}

/// What a reload replaces, under one lock so that reloads never interleave.
struct State {
    /// The configuration in force.
    config: Config,
    /// The comparisons last built, with their settings: kept, and readable at `/diff`, even
    /// while no target is compared.
    diff: Option<(DiffKey, Diff)>,
}

/// The running proxy's changeable parts: what the admin API and `SIGHUP` act on.
pub struct Live {
    telemetry: Arc<Telemetry>,
    mirroring: Option<Mirroring>,
    route: LiveRoute,
    token: ArcSwapOption<AdminToken>,
    /// The command line the proxy started with, applied over the file at every reload.
    args: Option<RunArgs>,
    state: Mutex<State>,
}

impl Live {
    /// The live state of a proxy started with `config`; reloadable when `args` name a config
    /// file.
    pub(crate) fn new(
        config: Config,
        telemetry: Arc<Telemetry>,
        mirroring: Option<Mirroring>,
        diff: Option<Diff>,
        args: Option<RunArgs>,
    ) -> Self {
        let route = UpstreamRoute::live(config.upstream.clone(), config.upstream_timeout);
        let token = ArcSwapOption::from(config.admin_token.clone().map(Arc::new));
        let diff = diff.map(|diff| (diff_key(&config.mirror), diff));
        Self {
            telemetry,
            mirroring,
            route,
            token,
            args,
            state: Mutex::new(State { config, diff }),
        }
    }

    /// The proxy's counters.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// The mirror layer's handle, unless the proxy has no mirror layer.
    pub fn mirror(&self) -> Option<&MirrorHandle> {
        self.mirroring.as_ref().map(|m| &m.handle)
    }

    /// The mirror layer, unless the proxy has no mirror layer.
    pub fn layer(&self) -> Option<&MirrorLayer> {
        self.mirroring.as_ref().map(|m| &m.layer)
    }

    /// The comparisons (the last built, even when no target is compared any more).
    pub fn diff(&self) -> Option<Diff> {
        self.lock().diff.as_ref().map(|(_, diff)| diff.clone())
    }

    /// Whether a target in force is the comparisons' noise baseline: only then is noise
    /// cancelled.
    pub fn has_baseline(&self) -> bool {
        self.lock()
            .config
            .mirror
            .targets
            .iter()
            .any(|t| t.is_baseline())
    }

    /// The admin token in force, if one is configured.
    pub fn token(&self) -> Option<Arc<AdminToken>> {
        self.token.load_full()
    }

    /// Where requests go: read by every worker at each request.
    pub(crate) fn route(&self) -> &LiveRoute {
        &self.route
    }

    /// The drain timeout in force.
    pub fn drain_timeout(&self) -> Duration {
        self.lock().config.drain_timeout
    }

    /// True when a reload has a config file to re-read.
    pub fn reloadable(&self) -> bool {
        self.args.as_ref().is_some_and(|a| a.config.is_some())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Re-reads the config file under the original command line and applies it, or nothing
    /// of it; counts and logs the outcome with its `source`.
    pub fn reload(&self, source: Source) -> Result<Reloaded, ReloadError> {
        let result = self.try_reload();
        self.telemetry.record_reload(result.is_ok());
        match &result {
            // Counts on the summary line, then one line per target or setting changed: log
            // fields stay plain values (no lists rendered as text).
            Ok(reloaded) => {
                tracing::info!(
                    source = source.label(),
                    added = reloaded.added.len(),
                    removed = reloaded.removed.len(),
                    changed = reloaded.changed.len(),
                    settings = reloaded.settings.len(),
                    "configuration reloaded"
                );
                let targets = [
                    ("added", &reloaded.added),
                    ("removed", &reloaded.removed),
                    ("changed", &reloaded.changed),
                ];
                for (change, names) in targets {
                    for name in names {
                        tracing::info!(source = source.label(), target = %name, change, "target reloaded");
                    }
                }
                for key in &reloaded.settings {
                    tracing::info!(source = source.label(), key = %key, "setting reloaded");
                }
            }
            Err(error) => tracing::warn!(
                source = source.label(),
                %error,
                "reload refused: the running configuration is unchanged"
            ),
        }
        result
    }

    fn try_reload(&self) -> Result<Reloaded, ReloadError> {
        let args = self
            .args
            .as_ref()
            .filter(|args| args.config.is_some())
            .ok_or_else(|| {
                ReloadError(
                    "no config file to re-read: the proxy was started without --config".to_owned(),
                )
            })?;
        let mut state = self.lock();
        let config = Config::load(args).map_err(|e| ReloadError(e.0))?;
        let fixed = state.config.fixed_differences(&config);
        if !fixed.is_empty() {
            return Err(ReloadError(format!(
                "cannot change while running, restart to change: {}; nothing of this reload was applied",
                fixed.join(", ")
            )));
        }
        let mut reloaded = Reloaded {
            settings: changed_settings(&state.config, &config),
            ..Reloaded::default()
        };
        let mut new_diff_state = None;
        match &self.mirroring {
            None if config.mirror.targets.is_empty() => {}
            None => {
                return Err(ReloadError(
                    "[[mirror]]: the proxy started without mirror targets, so it has no mirror \
                     layer; adding the first target needs a restart"
                        .to_owned(),
                ));
            }
            Some(mirroring) => {
                let key = diff_key(&config.mirror);
                let diff = match &state.diff {
                    Some((old, diff)) if *old == key => Some(diff.clone()),
                    _ if config.mirror.compares() => {
                        let diff = new_diff(&config.mirror, &self.telemetry)
                            .map_err(|e| ReloadError(e.0))?;
                        new_diff_state = Some((key, diff.clone()));
                        Some(diff)
                    }
                    _ => None,
                };
                let options = options(
                    &config.mirror,
                    &self.telemetry,
                    &mirroring.sender,
                    diff.as_ref(),
                );
                // Track the new targets first, so that none of their outcomes goes unrecorded.
                let before = self.telemetry.target_names();
                let names = || config.mirror.targets.iter().map(Target::name);
                self.telemetry
                    .track_targets(before.iter().map(String::as_str).chain(names()));
                match mirroring.handle.replace(options) {
                    Ok(changes) => {
                        self.telemetry.track_targets(
                            names().chain(changes.removed.iter().map(String::as_str)),
                        );
                        reloaded.added = changes.added;
                        reloaded.removed = changes.removed;
                        reloaded.changed = changes.changed;
                    }
                    Err(error) => {
                        self.telemetry
                            .track_targets(before.iter().map(String::as_str));
                        let message = if config.mirror.targets.is_empty() {
                            format!(
                                "[[mirror]]: {error}; a running proxy keeps at least one target \
                                 (percentage = 0 mirrors nothing, POST /mirroring/disable stops \
                                 all), removing every one needs a restart"
                            )
                        } else {
                            format!("config file [[mirror]]: {error}")
                        };
                        return Err(ReloadError(message));
                    }
                }
            }
        }
        if let Some(diff) = new_diff_state {
            state.diff = Some(diff);
        }
        self.route.store(Arc::new(UpstreamRoute {
            upstream: config.upstream.clone(),
            timeout: config.upstream_timeout,
        }));
        self.token.store(config.admin_token.clone().map(Arc::new));
        state.config = config;
        Ok(reloaded)
    }
}

/// The settings a reload may change, besides the targets, that differ between `old` and
/// `new`, by config key.
fn changed_settings(old: &Config, new: &Config) -> Vec<String> {
    let (a, b) = (&old.mirror, &new.mirror);
    let token_changed = match (&old.admin_token, &new.admin_token) {
        (Some(old), Some(new)) => !old.same_as(new),
        (None, None) => false,
        _ => true,
    };
    [
        ("upstream", old.upstream.url != new.upstream.url),
        ("upstream_http2", old.upstream.http2 != new.upstream.http2),
        (
            "upstream_timeout",
            old.upstream_timeout != new.upstream_timeout,
        ),
        ("timeout", a.timeout != b.timeout),
        ("sync", a.sync != b.sync),
        ("copy_body", a.copy_body != b.copy_body),
        ("max_body", a.max_body != b.max_body),
        ("max_buffered", a.max_buffered != b.max_buffered),
        ("max_in_flight", a.max_in_flight != b.max_in_flight),
        ("drain_timeout", old.drain_timeout != new.drain_timeout),
        ("diff", diff_key(a) != diff_key(b)),
        ("admin_token_file", token_changed),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(key, _)| key.to_owned())
    .collect()
}
