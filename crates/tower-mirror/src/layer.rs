//! [`MirrorLayer`]: the configuration, validated once and shared by every service it builds.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tower_layer::Layer;

use crate::budget::ByteBudget;
use crate::client::HttpSender;
use crate::dispatch::{MAX_TARGETS, Shared, TargetState};
use crate::error::ConfigError;
use crate::options::Options;
use crate::sample::Sampler;
use crate::service::Mirror;
use crate::stats::{IneligibleCounters, MirrorStats, TargetCounters};
use crate::target::{CompiledTarget, Target};

/// A [`Layer`] that mirrors requests to shadow targets: see the [crate docs](crate).
///
/// Cloning is cheap (one `Arc`), and every clone, like every service it builds, shares the
/// same targets, sampling counters, in-flight limits, connection pool and statistics.
#[derive(Clone)]
pub struct MirrorLayer {
    pub(crate) shared: Arc<Shared>,
}

impl MirrorLayer {
    /// Mirrors every request to each of `targets`, with the default [`Options`]: asynchronous,
    /// body copied, 5 s timeout.
    ///
    /// ```
    /// let layer = tower_mirror::MirrorLayer::new(["http://127.0.0.1:4000"])?;
    /// # Ok::<(), tower_mirror::ConfigError>(())
    /// ```
    pub fn new<I>(targets: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        Self::with_options(Options {
            targets: targets.into_iter().map(Target::new).collect(),
            ..Options::default()
        })
    }

    /// Builds a layer from `options`, checking every target and option.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first target or option that cannot work: no targets, more
    /// than 64, an unparsable URL, a scheme other than http/https, a base URL with a query,
    /// fragment or user information, a percentage over 100, a header rule naming an invalid
    /// or a reserved header (one the mirror manages itself), a zero timeout or a zero
    /// `max_in_flight`; with the `diff` feature, a target both compared and baseline, more
    /// than one baseline, a baseline without a compared target, or a zero report bound.
    pub fn with_options(options: Options) -> Result<Self, ConfigError> {
        if options.targets.is_empty() {
            return Err(ConfigError::NoTargets);
        }
        if options.targets.len() > MAX_TARGETS {
            return Err(ConfigError::TooManyTargets {
                count: options.targets.len(),
                max: MAX_TARGETS,
            });
        }
        #[cfg(feature = "diff")]
        let diff = crate::diff::DiffEngine::new(options.diff, &options.targets)?.map(Arc::new);
        let targets = options
            .targets
            .into_iter()
            .map(|target| {
                let compiled = CompiledTarget::compile(&target)?;
                if target.percentage > 100 {
                    return Err(ConfigError::PercentageOutOfRange {
                        url: target.url,
                        percentage: target.percentage,
                    });
                }
                Ok(TargetState {
                    sampler: Sampler::new(target.percentage),
                    compiled,
                    target,
                    counters: TargetCounters::default(),
                })
            })
            .collect::<Result<Box<[_]>, _>>()?;
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
        let sender = options
            .sender
            .unwrap_or_else(|| Arc::new(HttpSender::new()));
        Ok(Self {
            shared: Arc::new(Shared {
                targets,
                timeout: options.timeout,
                mode: options.mode,
                copy_body: options.copy_body,
                max_body_bytes: options.max_body_bytes,
                max_in_flight: options.max_in_flight,
                loop_guard: options.loop_guard,
                capture_response_body: options.capture_response_body,
                budget: ByteBudget::new(options.max_buffered_bytes),
                on_error: options.on_error,
                on_success: options.on_success,
                sender,
                not_mirrored: IneligibleCounters::default(),
                in_flight: AtomicUsize::new(0),
                idle: Notify::new(),
                #[cfg(feature = "diff")]
                diff,
            }),
        })
    }

    /// The targets, as configured.
    pub fn targets(&self) -> impl ExactSizeIterator<Item = &Target> {
        self.shared.targets.iter().map(|state| &state.target)
    }

    /// A snapshot of every counter: per target, and of requests not mirrored at all.
    pub fn stats(&self) -> MirrorStats {
        self.shared.stats()
    }

    /// The comparisons so far, per compared target and route (feature `diff`); `None` when no
    /// target is compared.
    #[cfg(feature = "diff")]
    pub fn diff_report(&self) -> Option<crate::diff::DiffReport> {
        self.shared.diff.as_ref().map(|engine| engine.report())
    }

    /// Waits until no mirror is in flight, for at most `timeout`: for a graceful shutdown,
    /// once the server has stopped taking requests and finished the ones it had.
    ///
    /// Mirrors still in flight at the deadline are reported as abandoned (they keep running
    /// until their own timeout or until the runtime shuts down).
    ///
    /// ```no_run
    /// # async fn shutdown(layer: tower_mirror::MirrorLayer) {
    /// let report = layer.drain(std::time::Duration::from_secs(5)).await;
    /// if !report.is_complete() {
    ///     eprintln!("abandoned {} mirrors", report.abandoned());
    /// }
    /// # }
    /// ```
    pub async fn drain(&self, timeout: Duration) -> DrainReport {
        let shared = &self.shared;
        let idle = async {
            loop {
                let notified = shared.idle.notified();
                let mut notified = std::pin::pin!(notified);
                // Register before checking, so a wake-up between the two is not lost.
                notified.as_mut().enable();
                if shared.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(timeout, idle).await;
        DrainReport {
            in_flight: shared
                .targets
                .iter()
                .map(|state| {
                    let n = state.counters.in_flight.load(Ordering::Acquire);
                    (state.target.url.clone(), n)
                })
                .collect(),
        }
    }
}

/// What [`MirrorLayer::drain`] left behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainReport {
    /// Each target's URL as configured, with the mirrors still in flight to it.
    pub in_flight: Vec<(String, usize)>,
}

impl DrainReport {
    /// True when every mirror finished before the deadline.
    pub fn is_complete(&self) -> bool {
        self.abandoned() == 0
    }

    /// Mirrors still in flight at the deadline, over all targets.
    pub fn abandoned(&self) -> usize {
        self.in_flight.iter().map(|(_, n)| n).sum()
    }
}

impl Shared {
    pub(crate) fn stats(&self) -> MirrorStats {
        MirrorStats {
            targets: self
                .targets
                .iter()
                .map(|state| state.counters.snapshot(&state.target.url))
                .collect(),
            not_mirrored: self.not_mirrored.snapshot(),
            buffered_bytes: self.budget.used(),
        }
    }
}

impl<S> Layer<S> for MirrorLayer {
    type Service = Mirror<S>;

    fn layer(&self, inner: S) -> Mirror<S> {
        Mirror::from_shared(inner, Arc::clone(&self.shared))
    }
}

impl fmt::Debug for MirrorLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MirrorLayer")
            .field("targets", &self.targets().collect::<Vec<_>>())
            .field("mode", &self.shared.mode)
            .field("timeout", &self.shared.timeout)
            .finish_non_exhaustive()
    }
}
