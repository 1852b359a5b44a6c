//! Figures, latency statistics, the human table and the JSON document.

use std::time::Duration;

use serde::Serialize;

/// Latency samples of one measurement, sorted.
#[derive(Debug, Clone)]
pub struct Samples {
    /// Nanoseconds, ascending.
    pub ns: Vec<u64>,
    /// Wall time of the whole run (for the rate).
    pub wall: Duration,
}

impl Samples {
    /// Sorts `ns`; `wall` is the elapsed time of the loop that produced them.
    pub fn new(mut ns: Vec<u64>, wall: Duration) -> Self {
        ns.sort_unstable();
        Samples { ns, wall }
    }

    /// All samples of several runs (wall times added).
    pub fn merge(parts: Vec<Samples>) -> Self {
        let wall = parts.iter().map(|p| p.wall).sum();
        let ns = parts.into_iter().flat_map(|p| p.ns).collect();
        Samples::new(ns, wall)
    }

    /// The `q` quantile (0..=1), nearest rank, in microseconds.
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.ns.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * self.ns.len() as f64).ceil() as usize).clamp(1, self.ns.len());
        self.ns[rank - 1] as f64 / 1000.0
    }

    /// Operations per second over the wall time.
    pub fn per_second(&self) -> f64 {
        self.ns.len() as f64 / self.wall.as_secs_f64()
    }
}

/// How a ratio is read.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    /// Lower values are better (latency, memory): ratio = ours / reference.
    Lower,
    /// Higher values are better (throughput): ratio = ours / reference.
    Higher,
}

/// A target for a figure: its ratio (or its value, when there is no reference) against a bound.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// Human form, e.g. `ratio <= 2.0`.
    pub text: String,
    /// Whether this run meets it.
    pub met: bool,
}

/// What a figure is compared with.
#[derive(Debug, Clone, Serialize)]
pub struct Reference {
    /// `floor`, `qemu`, `vhost-device-gpu`, `copy`, ...
    pub name: String,
    /// Its value, same unit as the figure.
    pub value: f64,
}

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Stable key for scripts, e.g. `map.p50`.
    pub key: String,
    /// What it is, for people.
    pub label: String,
    /// Our value.
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// Which direction is better.
    pub better: Better,
    /// The peer or floor it is compared with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
    /// `value / reference.value`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// The target, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// Anything a reader must know (e.g. a peer that is not installed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// A detail of the figure above it (indented in the table).
    #[serde(skip)]
    pub detail: bool,
}

impl Figure {
    /// A figure without reference.
    pub fn new(key: &str, label: &str, value: f64, unit: &str, better: Better) -> Self {
        Figure {
            key: key.into(),
            label: label.trim_start().into(),
            detail: label.starts_with(' '),
            value,
            unit: unit.into(),
            better,
            reference: None,
            ratio: None,
            target: None,
            note: None,
        }
    }

    /// Compares with `name`'s `value` (ratio = ours / theirs).
    pub fn against(mut self, name: &str, value: f64) -> Self {
        self.ratio = (value > 0.0 && value.is_finite()).then(|| self.value / value);
        self.reference = Some(Reference {
            name: name.into(),
            value,
        });
        self
    }

    /// Target on the ratio: at least `min` (higher is better) or at most `max`.
    pub fn ratio_target(mut self, bound: f64) -> Self {
        let (text, met) = match (self.better, self.ratio) {
            (Better::Higher, r) => (format!("ratio >= {bound}"), r.is_some_and(|r| r >= bound)),
            (Better::Lower, r) => (format!("ratio <= {bound}"), r.is_some_and(|r| r <= bound)),
        };
        self.target = Some(Target { text, met });
        self
    }

    /// Target on the value itself (lower is better): below `max`.
    pub fn value_below(mut self, max: f64) -> Self {
        self.target = Some(Target {
            text: format!("< {max} {}", self.unit),
            met: self.value < max,
        });
        self
    }

    /// Adds a note.
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

fn num(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 100_000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The table for people (Markdown, so it can be pasted into BENCHMARKS.md as is).
pub fn table(figures: &[Figure]) -> String {
    let mut out = String::new();
    out.push_str("| figure | ours | compared with | ratio | target |\n");
    out.push_str("|---|---:|---|---:|---|\n");
    for f in figures {
        let reference = f.reference.as_ref().map_or_else(
            || "-".to_string(),
            |r| format!("{} {} {}", r.name, num(r.value), f.unit),
        );
        let ratio = f
            .ratio
            .map_or_else(|| "-".to_string(), |r| format!("{r:.2}x"));
        let target = f.target.as_ref().map_or_else(
            || "-".to_string(),
            |t| format!("{} {}", t.text, if t.met { "(met)" } else { "(NOT met)" }),
        );
        let mut label = if f.detail {
            format!("... {}", f.label)
        } else {
            f.label.clone()
        };
        if let Some(n) = &f.note {
            label.push_str(&format!(" [{n}]"));
        }
        out.push_str(&format!(
            "| {label} | {} {} | {reference} | {ratio} | {target} |\n",
            num(f.value),
            f.unit
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank_over_sorted_samples() {
        let s = Samples::new(
            (1..=100).rev().map(|us| us * 1000).collect(),
            Duration::from_secs(2),
        );
        assert_eq!(s.quantile_us(0.5), 50.0);
        assert_eq!(s.quantile_us(0.99), 99.0);
        assert_eq!(s.quantile_us(1.0), 100.0);
        assert_eq!(s.quantile_us(0.0), 1.0);
        assert_eq!(s.per_second(), 50.0);
        let merged = Samples::merge(vec![s.clone(), s]);
        assert_eq!(merged.ns.len(), 200);
        assert_eq!(merged.wall, Duration::from_secs(4));
        assert!(Samples::new(Vec::new(), Duration::from_secs(1))
            .quantile_us(0.5)
            .is_nan());
    }

    #[test]
    fn ratios_and_targets_follow_the_direction() {
        let slow = Figure::new("a", "latency", 300.0, "us", Better::Lower)
            .against("floor", 100.0)
            .ratio_target(2.0);
        assert_eq!(slow.ratio, Some(3.0));
        assert!(!slow.target.as_ref().unwrap().met);
        let fast = Figure::new("b", "rate", 150.0, "pairs/s", Better::Higher)
            .against("qemu", 100.0)
            .ratio_target(1.2);
        assert!(fast.target.as_ref().unwrap().met);
        // No usable reference: no ratio, target not met.
        let none = Figure::new("c", "rate", 1.0, "pairs/s", Better::Higher)
            .against("peer", 0.0)
            .ratio_target(1.2);
        assert_eq!(none.ratio, None);
        assert!(!none.target.as_ref().unwrap().met);
        let v = Figure::new("d", "inspect", 450.0, "ns", Better::Lower).value_below(1000.0);
        assert!(v.target.as_ref().unwrap().met);
        // Detail rows are indented in the table, trimmed in the JSON.
        let detail = Figure::new("e", "  cpu", 1.0, "us", Better::Lower);
        assert!(detail.detail);
        assert_eq!(detail.label, "cpu");
        let t = table(&[slow, fast, detail]);
        assert!(
            t.contains("| latency | 300.0 us | floor 100.0 us | 3.00x | ratio <= 2 (NOT met) |")
        );
        assert!(t.contains("| ... cpu |"));
    }
}
