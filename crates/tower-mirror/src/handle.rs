//! [`MirrorHandle`]: operating a running layer — the kill switch, pausing a target, changing
//! its percentage, replacing the whole configuration — while requests run, without a lock on
//! the request path.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::config::Options;
use crate::control::{Changes, Control};
use crate::error::ConfigError;
use crate::stats::DrainReport;
use crate::stats::MirrorStats;

/// A handle on a running [`MirrorLayer`](crate::MirrorLayer), from
/// [`MirrorLayer::handle`](crate::MirrorLayer::handle) (or [`MirrorLayer::pair`](crate::MirrorLayer::pair)):
/// `Clone + Send + Sync`, cheap to clone, and every clone acts on the same layer and every
/// service it built.
///
/// ```
/// use tower_mirror::{MirrorLayer, Options, Target};
///
/// let (layer, handle) = MirrorLayer::pair(Options {
///     targets: vec![Target::new("http://127.0.0.1:4000").with_name("staging")],
///     ..Options::default()
/// })?;
/// handle.set_percentage("staging", 10)?;   // a rollout step
/// handle.pause("staging")?;                // staging is melting: that target only
/// handle.disable();                        // or everything, from the next request on
/// assert!(!handle.is_enabled());
/// # let _ = layer;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct MirrorHandle {
    control: Arc<Control>,
}

impl MirrorHandle {
    pub(crate) fn new(control: Arc<Control>) -> Self {
        Self { control }
    }

    /// The kill switch: from the next request on, nothing is mirrored (counted in
    /// [`NotMirroredStats::disabled`](crate::NotMirroredStats::disabled)). Mirrors already
    /// decided or in flight finish. The request path pays one relaxed atomic load for it.
    pub fn disable(&self) {
        self.control.enabled.store(false, Relaxed);
    }

    /// Switches mirroring back on.
    pub fn enable(&self) {
        self.control.enabled.store(true, Relaxed);
    }

    /// False while the kill switch is on.
    pub fn is_enabled(&self) -> bool {
        self.control.enabled.load(Relaxed)
    }

    /// Stops mirroring to the target named `name`, from the next request on (counted in its
    /// [`TargetStats::paused`](crate::TargetStats::paused); its sampling does not advance).
    /// A replacement that keeps the target keeps it paused.
    ///
    /// # Errors
    /// [`ControlError::UnknownTarget`] when no target has that name.
    pub fn pause(&self, name: &str) -> Result<(), ControlError> {
        self.with_target(name, |state| state.paused.store(true, Relaxed))
    }

    /// Resumes mirroring to the target named `name`.
    ///
    /// # Errors
    /// [`ControlError::UnknownTarget`] when no target has that name.
    pub fn resume(&self, name: &str) -> Result<(), ControlError> {
        self.with_target(name, |state| state.paused.store(false, Relaxed))
    }

    /// Sets the share of requests the target named `name` receives, from the next request
    /// on. The counter sampler keeps its position, so any 100 consecutive requests from then
    /// on hold exactly `percentage` mirrored ones; a key sampler's shares nest, so raising
    /// the percentage only adds keys.
    ///
    /// # Errors
    /// [`ControlError::UnknownTarget`], or [`ControlError::PercentageOutOfRange`] over 100.
    pub fn set_percentage(&self, name: &str, percentage: u32) -> Result<(), ControlError> {
        if percentage > 100 {
            return Err(ControlError::PercentageOutOfRange { percentage });
        }
        self.with_target(name, |state| state.percentage.store(percentage, Relaxed))
    }

    /// Replaces the whole configuration atomically: it is checked first, and an invalid one
    /// returns its [`ConfigError`] and changes nothing. Requests that arrive after the call
    /// use the new one; mirrors already decided finish under the one they started with.
    ///
    /// Targets are matched by name. One whose URL and transport ([`Target::http2`](crate::Target::http2))
    /// are unchanged keeps its counters, sampling position, pause, rate-limit bucket (when its
    /// cap is unchanged) and connection pool (when `options.sender` is `None`); its
    /// percentage is the new one. A removed target's counts stay in
    /// [`stats`](Self::stats) (with [`TargetStats::removed`](crate::TargetStats::removed))
    /// until the next replacement.
    ///
    /// # Errors
    /// Whatever [`MirrorLayer::with_options`](crate::MirrorLayer::with_options) would return
    /// for `options`.
    pub fn replace(&self, options: Options) -> Result<Changes, ConfigError> {
        self.control.replace(options)
    }

    /// Each target's name, URL, live percentage and whether it is paused, in order.
    pub fn targets(&self) -> Vec<TargetStatus> {
        let plan = self.control.plan.load();
        plan.targets
            .iter()
            .map(|t| TargetStatus {
                name: t.name().to_owned(),
                url: t.spec.url.clone(),
                percentage: t.state.percentage.load(Relaxed),
                enabled: !t.state.paused.load(Relaxed),
            })
            .collect()
    }

    /// A snapshot of every counter, as [`MirrorLayer::stats`](crate::MirrorLayer::stats).
    pub fn stats(&self) -> MirrorStats {
        self.control.stats()
    }

    /// Waits for the mirrors in flight, as [`MirrorLayer::drain`](crate::MirrorLayer::drain).
    pub async fn drain(&self, timeout: Duration) -> DrainReport {
        self.control.drain(timeout).await
    }

    fn with_target(
        &self,
        name: &str,
        change: impl FnOnce(&crate::admit::TargetState),
    ) -> Result<(), ControlError> {
        let plan = self.control.plan.load();
        let target = plan
            .target(name)
            .ok_or_else(|| ControlError::UnknownTarget {
                name: name.to_owned(),
            })?;
        change(&target.state);
        Ok(())
    }
}

impl fmt::Debug for MirrorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MirrorHandle")
            .field("enabled", &self.is_enabled())
            .finish_non_exhaustive()
    }
}

/// A target's live settings, from [`MirrorHandle::targets`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TargetStatus {
    /// The target's name.
    pub name: String,
    /// Its URL as configured.
    pub url: String,
    /// Its live percentage (0 to 100).
    pub percentage: u32,
    /// False while it is paused.
    pub enabled: bool,
}

/// Why a [`MirrorHandle`] call could not be carried out.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ControlError {
    /// No target has this name.
    UnknownTarget {
        /// The name asked for.
        name: String,
    },
    /// A percentage over 100.
    PercentageOutOfRange {
        /// The percentage asked for.
        percentage: u32,
    },
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownTarget { name } => write!(f, "no mirror target is named {name:?}"),
            Self::PercentageOutOfRange { percentage } => {
                write!(f, "percentage {percentage} is over 100")
            }
        }
    }
}

impl std::error::Error for ControlError {}
