//! Eligibility: requests no target may take, whatever its settings.

use http::{Method, header};

use crate::head::RequestHead;
use crate::outbound::{X_MIRRORED_FROM, hop};
use crate::stats::Ineligible;

/// Why this request must not be mirrored at all, if it must not: checked once per request,
/// before any target's steps.
pub(crate) fn ineligible(request: &RequestHead<'_>, loop_guard: bool) -> Option<Ineligible> {
    let headers = request.headers();
    // One walk over the few header names present costs less than two hash lookups.
    let (mut mirrored, mut upgrade) = (false, false);
    for name in headers.keys() {
        if *name == header::UPGRADE {
            upgrade = true;
        } else if *name == X_MIRRORED_FROM {
            mirrored = true;
        }
    }
    // The loop guard first, so that a mirror of a CONNECT still counts as a mirror.
    if loop_guard && mirrored {
        Some(Ineligible::AlreadyMirrored)
    } else if request.method() == Method::CONNECT {
        Some(Ineligible::Connect)
    } else if !request.uri().path().starts_with('/') {
        Some(Ineligible::UnsupportedUri)
    } else if upgrade && hop::is_upgrade(headers) {
        // The same rule a proxy forwards by: `Upgrade` with the `upgrade` connection option.
        Some(Ineligible::Upgrade)
    } else {
        None
    }
}
