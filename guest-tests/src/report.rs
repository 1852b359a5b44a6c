//! The line format shared by the guest binary and the host runner.
//!
//! Every case prints exactly one line: `ok NAME`, `FAILED NAME: WHY` or
//! `skipped NAME: WHY`, and a program ends with the summary line
//! `N passed, N failed, N skipped`. The runner also understands libtest's
//! `test result: ok. N passed; N failed; N ignored; ...` line (ignored counts as
//! skipped), which is what `dmabuf-info`'s test executables print.

use std::fmt;

/// What happened to one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The case ran and every assertion held.
    Passed,
    /// The case ran and an assertion failed; the text says which.
    Failed(String),
    /// The case could not apply here; the text says why.
    Skipped(String),
}

/// Pass/fail/skip counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Cases that passed.
    pub passed: u32,
    /// Cases that failed.
    pub failed: u32,
    /// Cases that were skipped.
    pub skipped: u32,
}

impl Tally {
    /// Counts one outcome.
    pub fn record(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Passed => self.passed += 1,
            Outcome::Failed(_) => self.failed += 1,
            Outcome::Skipped(_) => self.skipped += 1,
        }
    }

    /// Adds another tally to this one.
    pub fn add(&mut self, other: Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
    }

    /// Total number of cases counted.
    pub fn total(&self) -> u32 {
        self.passed + self.failed + self.skipped
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

/// Formats the one line printed for a case.
pub fn case_line(name: &str, outcome: &Outcome) -> String {
    match outcome {
        Outcome::Passed => format!("ok {name}"),
        Outcome::Failed(why) => format!("FAILED {name}: {why}"),
        Outcome::Skipped(why) => format!("skipped {name}: {why}"),
    }
}

/// Parses our own summary line `N passed, N failed, N skipped`.
pub fn parse_summary(line: &str) -> Option<Tally> {
    let mut parts = line.trim().split(", ");
    let passed = number_before(parts.next()?, "passed")?;
    let failed = number_before(parts.next()?, "failed")?;
    let skipped = number_before(parts.next()?, "skipped")?;
    if parts.next().is_some() {
        return None;
    }
    Some(Tally {
        passed,
        failed,
        skipped,
    })
}

/// Parses libtest's `test result: ok. 3 passed; 0 failed; 1 ignored; ...` line.
pub fn parse_libtest_result(line: &str) -> Option<Tally> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let (_, counts) = rest.split_once(". ")?;
    let mut tally = Tally::default();
    let mut seen = 0;
    for part in counts.split("; ") {
        if let Some(n) = number_before(part, "passed") {
            tally.passed = n;
            seen += 1;
        } else if let Some(n) = number_before(part, "failed") {
            tally.failed = n;
            seen += 1;
        } else if let Some(n) = number_before(part, "ignored") {
            tally.skipped = n;
            seen += 1;
        }
    }
    (seen == 3).then_some(tally)
}

fn number_before(part: &str, word: &str) -> Option<u32> {
    let (number, rest) = part.trim().split_once(' ')?;
    (rest == word).then(|| number.parse().ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_round_trips() {
        let tally = Tally {
            passed: 7,
            failed: 1,
            skipped: 2,
        };
        assert_eq!(parse_summary(&tally.to_string()), Some(tally));
        assert_eq!(parse_summary("7 passed, 1 failed"), None);
        assert_eq!(parse_summary("x passed, 1 failed, 2 skipped"), None);
    }

    #[test]
    fn libtest_line_is_understood() {
        let line = "test result: FAILED. 12 passed; 3 failed; 4 ignored; 0 measured; 0 filtered out; finished in 0.02s";
        assert_eq!(
            parse_libtest_result(line),
            Some(Tally {
                passed: 12,
                failed: 3,
                skipped: 4
            })
        );
        assert_eq!(parse_libtest_result("test result: ok."), None);
    }

    #[test]
    fn case_lines_name_the_outcome() {
        assert_eq!(case_line("a", &Outcome::Passed), "ok a");
        assert_eq!(case_line("b", &Outcome::Failed("x".into())), "FAILED b: x");
        assert_eq!(
            case_line("c", &Outcome::Skipped("y".into())),
            "skipped c: y"
        );
    }
}
