//! Errors of the router crate.

/// Router errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A routing strategy name outside RUN-8.
    #[error("unknown routing strategy '{name}'; expected one of: {}", crate::strategy::Strategy::NAMES.join(", "))]
    UnknownStrategy {
        /// The rejected name.
        name: String,
    },
}

/// Result with the router [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
