//! [`MirrorLayer`]: the configuration, validated once and shared by every service it builds.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use crate::config::Options;
use crate::control::Control;
use crate::error::ConfigError;
use crate::handle::MirrorHandle;
use crate::service::Mirror;
use crate::stats::{DrainReport, MirrorStats};
use crate::target::Target;

/// A [`Layer`] that mirrors requests to shadow targets: see the [crate docs](crate).
///
/// Cloning is cheap (one `Arc`), and every clone, like every service it builds, shares the
/// same targets, sampling counters, in-flight limits, connection pool and statistics.
#[derive(Clone)]
pub struct MirrorLayer {
    control: Arc<Control>,
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
    /// [`ConfigError`] naming the first target or option that cannot work: no targets, two
    /// targets with one name, an unparsable URL, a scheme other than http/https, a base URL
    /// with a query, fragment, user information or a port over 65535, a percentage over 100,
    /// a header rule naming an invalid or a reserved header (one the mirror manages itself), an
    /// invalid filter, key, rate or rewrite setting, a zero timeout or a zero `max_in_flight`,
    /// or an observer's own check (with the `diff` feature: a target both compared and
    /// baseline, more than one baseline, a baseline without a compared target).
    pub fn with_options(options: Options) -> Result<Self, ConfigError> {
        Ok(Self {
            control: Arc::new(Control::new(options)?),
        })
    }

    /// The targets, as configured.
    pub fn targets(&self) -> Vec<Target> {
        let plan = self.control.plan.load();
        plan.targets.iter().map(|t| t.spec.clone()).collect()
    }

    /// A snapshot of every counter: per target, and of requests not mirrored at all.
    pub fn stats(&self) -> MirrorStats {
        self.control.stats()
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
        self.control.drain(timeout).await
    }

    /// A handle to operate this layer while it runs: the kill switch, pausing a target,
    /// changing its percentage, replacing the configuration. See [`MirrorHandle`].
    pub fn handle(&self) -> MirrorHandle {
        MirrorHandle::new(Arc::clone(&self.control))
    }

    /// A layer built from `options` and its handle, as tower-http's
    /// `InFlightRequestsLayer::pair` gives a layer and its counter.
    ///
    /// # Errors
    /// As [`with_options`](Self::with_options).
    pub fn pair(options: Options) -> Result<(Self, MirrorHandle), ConfigError> {
        let layer = Self::with_options(options)?;
        let handle = layer.handle();
        Ok((layer, handle))
    }
}

impl<S> Layer<S> for MirrorLayer {
    type Service = Mirror<S>;

    fn layer(&self, inner: S) -> Mirror<S> {
        Mirror::new(inner, Arc::clone(&self.control))
    }
}

impl fmt::Debug for MirrorLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plan = self.control.plan.load();
        f.debug_struct("MirrorLayer")
            .field("targets", &self.targets())
            .field("mode", &plan.mode)
            .field("timeout", &plan.timeout)
            .finish_non_exhaustive()
    }
}
