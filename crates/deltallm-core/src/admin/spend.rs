//! Spend totals for the admin API.

use chrono::{DateTime, Utc};
use deltallm_storage::{SpendGroupBy, SpendSummaryRow};

use crate::{Error, Gateway, Result};

impl Gateway {
    /// Totals per model, provider or deployment in `[from, to)`.
    pub async fn spend_summary(
        &self,
        group_by: &str,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Vec<SpendSummaryRow>> {
        let group = match group_by {
            "" | "model" => SpendGroupBy::Model,
            "provider" => SpendGroupBy::Provider,
            "deployment" => SpendGroupBy::Deployment,
            other => {
                return Err(Error::invalid(format!("group_by must be model, provider or deployment, not '{other}'")));
            }
        };
        let parse = |v: Option<&str>, name: &str| -> Result<Option<DateTime<Utc>>> {
            match v.map(str::trim).filter(|s| !s.is_empty()) {
                None => Ok(None),
                Some(s) => DateTime::parse_from_rfc3339(s)
                    .map(|d| Some(d.with_timezone(&Utc)))
                    .or_else(|_| {
                        chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                            .map(|d| d.and_hms_opt(0, 0, 0).map(|t| t.and_utc()))
                    })
                    .map_err(|_| Error::invalid(format!("{name} must be an RFC 3339 timestamp or a YYYY-MM-DD date"))),
            }
        };
        let (from, to) = (parse(from, "from")?, parse(to, "to")?);
        self.flush_spend().await;
        Ok(self.store().spend_summary(group, from, to).await?)
    }
}
