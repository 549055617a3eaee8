//! The expectations of `db.restore`'s checks: `= 0`, `>= 1000`, `!= 'broken'`.

/// Comparison of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A parsed `expect`.
#[derive(Debug, Clone)]
pub(crate) struct Expectation {
    op: Op,
    value: String,
}

impl Expectation {
    pub(crate) fn parse(text: &str) -> Result<Expectation, String> {
        let t = text.trim();
        let ops = [
            (">=", Op::Ge),
            ("<=", Op::Le),
            ("!=", Op::Ne),
            ("<>", Op::Ne),
            ("==", Op::Eq),
            ("=", Op::Eq),
            (">", Op::Gt),
            ("<", Op::Lt),
        ];
        for (sym, op) in ops {
            if let Some(rest) = t.strip_prefix(sym) {
                let value = rest.trim().trim_matches('\'').to_string();
                if value.is_empty() {
                    return Err(format!("`{text}` has no value after `{sym}`"));
                }
                if !matches!(op, Op::Eq | Op::Ne) && value.parse::<f64>().is_err() {
                    return Err(format!("`{sym}` compares numbers; `{value}` is not one"));
                }
                return Ok(Expectation { op, value });
            }
        }
        Err(format!(
            "`{text}` does not start with an operator: write e.g. `= 0`, `>= 1000`, `!= 'broken'`"
        ))
    }

    pub(crate) fn holds(&self, observed: Option<&str>) -> bool {
        let Some(observed) = observed else {
            return false;
        };
        if let (Ok(a), Ok(b)) = (observed.trim().parse::<f64>(), self.value.parse::<f64>()) {
            return match self.op {
                Op::Eq => a == b,
                Op::Ne => a != b,
                Op::Lt => a < b,
                Op::Le => a <= b,
                Op::Gt => a > b,
                Op::Ge => a >= b,
            };
        }
        match self.op {
            Op::Eq => observed == self.value,
            Op::Ne => observed != self.value,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_compare_numbers_and_text() {
        let e = Expectation::parse("= 0").unwrap();
        assert!(e.holds(Some("0")));
        assert!(!e.holds(Some("3")));
        assert!(!e.holds(None));
        assert!(Expectation::parse(">= 1000").unwrap().holds(Some("1500")));
        assert!(Expectation::parse("!= 'broken'")
            .unwrap()
            .holds(Some("fine")));
        assert!(Expectation::parse("> abc").is_err());
        assert!(Expectation::parse("0").is_err());
    }
}
