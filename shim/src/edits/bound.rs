//! The one rule every limit follows: a container without a limit gets the default
//! (or, without a default, the maximum); one above the maximum is refused or clamped.

use crate::policy::OverLimit;
use std::fmt::Display;

#[derive(Debug, Clone, PartialEq)]
pub enum Step<T> {
    /// The request stands.
    Keep,
    /// No limit was asked for: this one is set.
    Default(T),
    /// Above the maximum, lowered to it.
    Clamp(T),
    /// Above the maximum: the refusal clause.
    Refuse(String),
}

/// Decides one limit. `requested` is `None` for unlimited; `key` is the policy key of
/// the maximum, for the refusal message.
pub fn decide<T: PartialOrd + Copy + Display>(
    what: &str,
    key: &str,
    requested: Option<T>,
    default: Option<T>,
    max: Option<T>,
    over: OverLimit,
) -> Step<T> {
    match (requested, max) {
        (None, _) => match default.or(max) {
            Some(v) => Step::Default(v),
            None => Step::Keep,
        },
        (Some(r), Some(m)) if r > m => match over {
            OverLimit::Clamp => Step::Clamp(m),
            OverLimit::Refuse => Step::Refuse(format!(
                "{what} {r} requested > {m} allowed ([limits] {key})"
            )),
        },
        (Some(_), _) => Step::Keep,
    }
}

impl<T: Copy> Step<T> {
    /// The value in force after this step.
    pub fn effective(&self, requested: Option<T>) -> Option<T> {
        match self {
            Step::Keep | Step::Refuse(_) => requested,
            Step::Default(v) | Step::Clamp(v) => Some(*v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OverLimit::*;

    #[test]
    fn table() {
        #[allow(clippy::type_complexity)]
        let rows: &[(Option<i64>, Option<i64>, Option<i64>, OverLimit, Step<i64>)] = &[
            // requested, default, max, mode -> step
            (None, None, None, Refuse, Step::Keep),
            (None, Some(5), None, Refuse, Step::Default(5)),
            (None, Some(5), Some(9), Refuse, Step::Default(5)),
            (None, None, Some(9), Refuse, Step::Default(9)),
            (Some(3), Some(5), Some(9), Refuse, Step::Keep),
            (Some(9), Some(5), Some(9), Refuse, Step::Keep),
            (Some(10), Some(5), Some(9), Clamp, Step::Clamp(9)),
            (
                Some(10),
                Some(5),
                Some(9),
                Refuse,
                Step::Refuse("pids 10 requested > 9 allowed ([limits] max_pids)".into()),
            ),
            (Some(100), Some(5), None, Refuse, Step::Keep),
        ];
        for (req, def, max, mode, want) in rows {
            let got = decide("pids", "max_pids", *req, *def, *max, *mode);
            assert_eq!(
                &got, want,
                "req={req:?} default={def:?} max={max:?} {mode:?}"
            );
        }
    }

    #[test]
    fn effective_values() {
        assert_eq!(Step::Keep.effective(Some(3)), Some(3));
        assert_eq!(Step::Default(5).effective(None), Some(5));
        assert_eq!(Step::Clamp(9).effective(Some(10)), Some(9));
        assert_eq!(
            Step::<i64>::Refuse("x".into()).effective(Some(10)),
            Some(10)
        );
    }
}
