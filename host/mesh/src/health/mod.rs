//! Active health checks: every instance of a service with a `health` spec is checked by a
//! health-checker plugin (through a [`CheckRunner`]: the daemon's runs plugins), on a jittered
//! schedule, with hysteresis.
//!
//! | module | holds |
//! |---|---|
//! | [`state`] | the per-instance hysteresis machine ([`ActiveHealth`]) and the plain records of a check; a leaf: it knows only the health spec |
//! | [`check`] | the check loop: [`CheckRunner`], one task per instance, applying each verdict to the instance's state |
//!
//! The instance state holds an [`ActiveHealth`], so [`crate::instance`] depends on [`state`];
//! the loop updates instances, so [`check`] depends on [`crate::instance`].

pub mod check;
pub mod state;

pub use self::check::{CheckContext, CheckOutcome, CheckRunner, check_once, spawn_checks};
pub use self::state::{
    ActiveHealth, CheckReport, CheckVerdict, HealthState, InstanceRecord, LastCheck,
};
