//! Routing strategy names (RUN-8, CFG-5).

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// How a deployment is picked among the selectable members of a group (RUN-8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Strategy {
    /// `simple-shuffle` (default): uniform.
    #[default]
    SimpleShuffle,
    /// `weighted`: proportional to weight (all 0 → uniform).
    Weighted,
    /// `priority-based-routing`: lowest priority value, weighted inside.
    PriorityBased,
    /// `least-busy`: fewest in-flight requests, weighted among ties.
    LeastBusy,
    /// `latency-based-routing`: lowest time-decayed mean latency; unsampled
    /// deployments stay in the tie set.
    LatencyBased,
    /// `cost-based-routing`: lowest unit cost, unpriced last.
    CostBased,
    /// `usage-based-routing`: lowest utilization.
    UsageBased,
    /// `rate-limit-aware`: weighted among utilization < 0.9, else weighted.
    RateLimitAware,
    /// `tag-based-routing`: weighted on the tag-filtered pool.
    TagBased,
}

impl Strategy {
    /// Every strategy, in RUN-8 order.
    pub const ALL: [Strategy; 9] = [
        Strategy::SimpleShuffle,
        Strategy::Weighted,
        Strategy::PriorityBased,
        Strategy::LeastBusy,
        Strategy::LatencyBased,
        Strategy::CostBased,
        Strategy::UsageBased,
        Strategy::RateLimitAware,
        Strategy::TagBased,
    ];

    /// Every accepted name, in RUN-8 order.
    pub const NAMES: [&'static str; 9] = [
        "simple-shuffle",
        "weighted",
        "priority-based-routing",
        "least-busy",
        "latency-based-routing",
        "cost-based-routing",
        "usage-based-routing",
        "rate-limit-aware",
        "tag-based-routing",
    ];

    /// The RUN-8 configuration name.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Strategy::SimpleShuffle => "simple-shuffle",
            Strategy::Weighted => "weighted",
            Strategy::PriorityBased => "priority-based-routing",
            Strategy::LeastBusy => "least-busy",
            Strategy::LatencyBased => "latency-based-routing",
            Strategy::CostBased => "cost-based-routing",
            Strategy::UsageBased => "usage-based-routing",
            Strategy::RateLimitAware => "rate-limit-aware",
            Strategy::TagBased => "tag-based-routing",
        }
    }
}

impl FromStr for Strategy {
    type Err = Error;

    /// Exact RUN-8 names; surrounding whitespace is ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim();
        Strategy::ALL
            .into_iter()
            .find(|st| st.as_str() == name)
            .ok_or_else(|| Error::UnknownStrategy { name: name.to_owned() })
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lenient parse for optional settings: a missing, blank or unknown name
/// gives `simple-shuffle` (CFG-5 default). Validate with
/// [`Strategy::from_str`] where a typo must fail loudly.
pub fn parse_strategy_or_default(name: Option<&str>) -> Strategy {
    name.and_then(|n| n.parse().ok()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (st, name) in Strategy::ALL.into_iter().zip(Strategy::NAMES) {
            assert_eq!(st.as_str(), name);
            assert_eq!(name.parse::<Strategy>(), Ok(st));
            assert_eq!(st.to_string(), name);
        }
        assert_eq!(" weighted ".parse::<Strategy>(), Ok(Strategy::Weighted));
    }

    #[test]
    fn names_match_the_domain_list() {
        // Domain validation (route groups, policies) accepts exactly these names.
        assert_eq!(Strategy::NAMES, deltallm_domain::settings::ROUTING_STRATEGIES);
    }

    #[test]
    fn unknown_name_has_helpful_message() {
        let err = "round-robin".parse::<Strategy>().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("'round-robin'"), "{msg}");
        assert!(msg.contains("simple-shuffle") && msg.contains("tag-based-routing"), "{msg}");
    }

    #[test]
    fn lenient_default() {
        assert_eq!(parse_strategy_or_default(None), Strategy::SimpleShuffle);
        assert_eq!(parse_strategy_or_default(Some("")), Strategy::SimpleShuffle);
        assert_eq!(parse_strategy_or_default(Some("nope")), Strategy::SimpleShuffle);
        assert_eq!(parse_strategy_or_default(Some("least-busy")), Strategy::LeastBusy);
    }
}
