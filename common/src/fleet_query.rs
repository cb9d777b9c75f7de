//! Fleet queries as both ends understand them: the filter a listing applies, and the
//! total order pages follow. The hub checks a query with these before it fans out, and
//! every spoke applies the same rules, so a page merged from several spokes is in one
//! order and a cursor means the same position on each.

use std::cmp::Ordering;

use crate::hostname::Pattern;
use crate::limits::{MAX_TRAIT_PREDICATE, MAX_TRAIT_PREDICATES};
use vigo_proto::admin::v1 as api;
use vigo_proto::v1 as pb;

/// Every status word a filter accepts (compliance statuses and `revoked`).
pub const STATUSES: [&str; 8] = [
    "converged",
    "relapsed",
    "diverged",
    "degraded",
    "failed",
    "offline",
    "no_data",
    "revoked",
];

/// A query that does not make sense, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct QueryError {
    pub field: &'static str,
    pub why: String,
}

fn bad(field: &'static str, why: impl Into<String>) -> QueryError {
    QueryError {
        field,
        why: why.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Present,
}

/// One trait predicate: `os=debian`, `mem_mb>4096`, `ipv6` (present).
#[derive(Debug, Clone, PartialEq)]
pub struct TraitPredicate {
    pub key: String,
    op: Op,
    value: String,
    number: Option<f64>,
}

impl TraitPredicate {
    pub fn parse(text: &str) -> Result<Self, QueryError> {
        let text = text.trim();
        let at = text.find(['=', '!', '>', '<']);
        let (key, op, value) = match at {
            None => (text, Op::Present, ""),
            Some(i) => {
                let rest = &text[i..];
                let (op, len) = [
                    ("!=", Op::Ne),
                    (">=", Op::Ge),
                    ("<=", Op::Le),
                    ("=", Op::Eq),
                    (">", Op::Gt),
                    ("<", Op::Lt),
                ]
                .into_iter()
                .find(|(s, _)| rest.starts_with(s))
                .map(|(s, op)| (op, s.len()))
                .ok_or_else(|| {
                    bad(
                        "filter.traits",
                        format!("{text:?}: operators are = != > >= < <="),
                    )
                })?;
                // `mem_mb >= 4096` reads as `mem_mb>=4096`.
                (text[..i].trim_end(), op, rest[len..].trim_start())
            }
        };
        if key.is_empty() {
            return Err(bad("filter.traits", format!("{text:?} names no trait")));
        }
        let number = value.parse::<f64>().ok();
        if matches!(op, Op::Gt | Op::Ge | Op::Lt | Op::Le) && number.is_none() {
            return Err(bad(
                "filter.traits",
                format!("{text:?}: {value:?} is not a number"),
            ));
        }
        Ok(Self {
            key: key.to_string(),
            op,
            value: value.to_string(),
            number,
        })
    }

    pub fn holds(&self, actual: Option<&str>) -> bool {
        let Some(actual) = actual else {
            return self.op == Op::Ne;
        };
        let ordered = || {
            let a = actual.parse::<f64>().ok()?;
            a.partial_cmp(&self.number?)
        };
        match self.op {
            Op::Present => true,
            Op::Eq => actual == self.value,
            Op::Ne => actual != self.value,
            Op::Gt => ordered() == Some(Ordering::Greater),
            Op::Ge => matches!(ordered(), Some(Ordering::Greater | Ordering::Equal)),
            Op::Lt => ordered() == Some(Ordering::Less),
            Op::Le => matches!(ordered(), Some(Ordering::Less | Ordering::Equal)),
        }
    }
}

/// Parses a REST query string (`hostname=web-*&trait=os%3Ddebian&sort=-last_seen`) into
/// a listing request; unknown or malformed parameters are refused by name. Only a
/// listing (`listing`) takes `sort`, `cursor`, `limit` and `with_traits`.
pub fn listing_from_query(
    raw: Option<&str>,
    listing: bool,
) -> Result<api::ListEnvoysRequest, QueryError> {
    let mut req = api::ListEnvoysRequest::default();
    let mut filter = api::EnvoyFilter::default();
    for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        let value = value.into_owned();
        match (key.as_ref(), listing) {
            ("hostname", _) => filter.hostname = value,
            ("spoke", _) => filter.spoke = value,
            ("status", _) => filter.status = value,
            ("hostcrate", _) => filter.hostcrate = value,
            ("trait", _) => {
                if filter.traits.len() == crate::limits::MAX_TRAIT_PREDICATES {
                    return Err(bad(
                        "filter.traits",
                        format!(
                            "more than {} predicates; a query takes at most {}",
                            crate::limits::MAX_TRAIT_PREDICATES,
                            crate::limits::MAX_TRAIT_PREDICATES
                        ),
                    ));
                }
                filter.traits.push(value)
            }
            ("sort", true) => req.sort = value,
            ("cursor", true) => req.cursor = value,
            ("limit", true) => {
                req.limit = value
                    .parse()
                    .map_err(|_| bad("limit", format!("{value:?} is not a number")))?;
            }
            ("with_traits", true) => {
                req.with_traits = value
                    .parse()
                    .map_err(|_| bad("with_traits", format!("{value:?}: true or false")))?;
            }
            (other, _) => return Err(bad("query", format!("unknown parameter {other:?}"))),
        }
    }
    if filter != api::EnvoyFilter::default() {
        req.filter = Some(filter);
    }
    Ok(req)
}

/// A checked [`api::EnvoyFilter`].
#[derive(Debug, Clone, Default)]
pub struct Filter {
    hostname: Option<Pattern>,
    pub spoke: Option<String>,
    pub status: Option<String>,
    pub hostcrate: Option<String>,
    pub traits: Vec<TraitPredicate>,
}

impl Filter {
    pub fn parse(f: Option<&api::EnvoyFilter>) -> Result<Self, QueryError> {
        let Some(f) = f else {
            return Ok(Self::default());
        };
        let hostname = if f.hostname.is_empty() {
            None
        } else {
            Some(Pattern::new(&f.hostname).map_err(|e| bad("filter.hostname", e))?)
        };
        if f.traits.len() > MAX_TRAIT_PREDICATES {
            return Err(bad(
                "filter.traits",
                format!(
                    "{} predicates; a query takes at most {MAX_TRAIT_PREDICATES}",
                    f.traits.len()
                ),
            ));
        }
        if let Some(t) = f.traits.iter().find(|t| t.len() > MAX_TRAIT_PREDICATE) {
            return Err(bad(
                "filter.traits",
                format!(
                    "a predicate of {} bytes; at most {MAX_TRAIT_PREDICATE}",
                    t.len()
                ),
            ));
        }
        let status = non_empty(&f.status);
        if let Some(s) = &status
            && !STATUSES.contains(&s.as_str())
        {
            return Err(bad(
                "filter.status",
                format!("{s:?} is not one of {}", STATUSES.join(", ")),
            ));
        }
        Ok(Self {
            hostname,
            spoke: non_empty(&f.spoke),
            status,
            hostcrate: non_empty(&f.hostcrate),
            traits: f
                .traits
                .iter()
                .map(|t| TraitPredicate::parse(t))
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn matches_hostname(&self, hostname: &str) -> bool {
        self.hostname.as_ref().is_none_or(|g| g.is_match(hostname))
    }

    pub fn matches_status(&self, status: &str) -> bool {
        self.status.as_deref().is_none_or(|s| s == status)
    }

    pub fn matches_hostcrate(&self, hostcrate: &str) -> bool {
        self.hostcrate.as_deref().is_none_or(|h| h == hostcrate)
    }

    /// Every trait predicate holds; `get` borrows a trait's value (no copy per envoy).
    pub fn matches_traits<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.traits.iter().all(|p| p.holds(get(&p.key)))
    }

    pub fn is_everything(&self) -> bool {
        self.hostname.is_none()
            && self.status.is_none()
            && self.hostcrate.is_none()
            && self.traits.is_empty()
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortField {
    Hostname,
    Id,
    LastSeen,
    Status,
}

/// The order of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sort {
    pub field: SortField,
    pub descending: bool,
}

impl SortField {
    /// Every sort field, as listings take them.
    pub const ALL: [SortField; 4] = [
        SortField::Hostname,
        SortField::Id,
        SortField::LastSeen,
        SortField::Status,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SortField::Hostname => "hostname",
            SortField::Id => "id",
            SortField::LastSeen => "last_seen",
            SortField::Status => "status",
        }
    }
}

impl Sort {
    pub fn parse(text: &str) -> Result<Self, QueryError> {
        let (descending, name) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let found = SortField::ALL.into_iter().find(|f| f.name() == name);
        let field = match (name, found) {
            ("", _) => SortField::Hostname,
            (_, Some(field)) => field,
            (other, None) => {
                return Err(bad(
                    "sort",
                    format!(
                        "{other:?}: sort by hostname, id, last_seen or status (prefix - to reverse)"
                    ),
                ));
            }
        };
        Ok(Self { field, descending })
    }

    pub fn as_str(&self) -> String {
        let name = self.field.name();
        if self.descending {
            format!("-{name}")
        } else {
            name.to_string()
        }
    }

    /// An envoy's position under this order. The envoy id breaks ties, so positions
    /// are unique and a page boundary never splits or repeats an envoy.
    pub fn key(&self, id: u64, hostname: &str, last_seen_ms: u64, status: &str) -> pb::SortKey {
        let (text, number) = match self.field {
            SortField::Hostname => (hostname, 0),
            SortField::Id => ("", 0),
            SortField::LastSeen => ("", last_seen_ms),
            SortField::Status => (status, 0),
        };
        pb::SortKey {
            text: text.to_string(),
            number,
            envoy_id: id,
        }
    }

    pub fn key_of(&self, e: &api::EnvoySummary) -> pb::SortKey {
        let id = u64::from_str_radix(&e.envoy_id, 16).unwrap_or(0);
        self.key(id, &e.hostname, e.last_seen_ms, &e.status)
    }

    pub fn compare(&self, a: &pb::SortKey, b: &pb::SortKey) -> Ordering {
        let natural =
            (a.text.as_str(), a.number, a.envoy_id).cmp(&(b.text.as_str(), b.number, b.envoy_id));
        if self.descending {
            natural.reverse()
        } else {
            natural
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trait_predicates() {
        let p = |s| TraitPredicate::parse(s).unwrap();
        assert!(p("os=debian").holds(Some("debian")));
        assert!(!p("os=debian").holds(Some("ubuntu")));
        assert!(!p("os=debian").holds(None));
        assert!(p("os!=debian").holds(None));
        assert!(p("mem_mb>4096").holds(Some("8192")));
        assert!(!p("mem_mb>4096").holds(Some("4096")));
        assert!(p("mem_mb>=4096").holds(Some("4096")));
        assert!(p("cpus<8").holds(Some("2")));
        assert!(!p("cpus<8").holds(Some("many")));
        assert!(p("ipv6").holds(Some("::1")));
        assert!(!p("ipv6").holds(None));
        assert_eq!(
            TraitPredicate::parse("mem>lots").unwrap_err().field,
            "filter.traits"
        );
        assert!(TraitPredicate::parse("=x").is_err());
        // Spaces around the operator are the operator's.
        assert!(p("mem_mb >= \t4096").holds(Some("4096")));
        assert!(p("os = debian").holds(Some("debian")));
        assert!(TraitPredicate::parse("  = x").is_err());
    }

    #[test]
    fn filters_name_the_bad_field() {
        let f = api::EnvoyFilter {
            status: "green".into(),
            ..Default::default()
        };
        assert_eq!(Filter::parse(Some(&f)).unwrap_err().field, "filter.status");
        let f = api::EnvoyFilter {
            hostname: "web-[".into(),
            ..Default::default()
        };
        assert_eq!(
            Filter::parse(Some(&f)).unwrap_err().field,
            "filter.hostname"
        );
        assert_eq!(Sort::parse("size").unwrap_err().field, "sort");
    }

    #[test]
    fn order_is_total_and_reversible() {
        let s = Sort::parse("hostname").unwrap();
        let a = s.key(2, "a", 0, "");
        let b = s.key(1, "b", 0, "");
        let a2 = s.key(3, "a", 0, "");
        assert_eq!(s.compare(&a, &b), Ordering::Less);
        assert_eq!(s.compare(&a, &a2), Ordering::Less, "the id breaks ties");
        let r = Sort::parse("-hostname").unwrap();
        assert_eq!(r.compare(&a, &b), Ordering::Greater);
        assert_eq!(r.as_str(), "-hostname");
    }
}
