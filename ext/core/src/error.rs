//! Errors that name the field they are about and never stop at the first problem.

use std::fmt;

/// Whether a problem is bad input or a valid feature meshcore does not implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldErrorKind {
    /// The input is wrong (Envoy would NACK it, Istio's webhook would deny it).
    Invalid,
    /// The input is valid but meshcore does not implement it; never ignored silently.
    Unsupported,
}

/// One problem at one field path, e.g. `virtual_hosts[2].routes[0].match.safe_regex.regex`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub kind: FieldErrorKind,
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found while compiling one input. Being the one value every compile step
/// is handed, it also carries the limit those steps check: the RE2 program size Envoy accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoreError {
    pub errors: Vec<FieldError>,
    /// Envoy's runtime `re2.max_program_size.error_level`; `None`: Envoy's default (100).
    pub max_program_size: Option<u64>,
}

impl CoreError {
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty error for a compilation whose regexes may reach `limit` RE2 instructions.
    pub fn with_max_program_size(limit: u64) -> Self {
        Self {
            errors: Vec::new(),
            max_program_size: Some(limit),
        }
    }

    pub fn single(
        kind: FieldErrorKind,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let mut e = Self::new();
        e.push(kind, path, message);
        e
    }

    pub fn push(
        &mut self,
        kind: FieldErrorKind,
        path: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.errors.push(FieldError {
            kind,
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn invalid(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(FieldErrorKind::Invalid, path, message);
    }

    pub fn unsupported(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(FieldErrorKind::Unsupported, path, message);
    }

    /// Moves the other error's problems in, prefixing their paths with `prefix`.
    pub fn extend_prefixed(&mut self, prefix: &str, other: CoreError) {
        for mut e in other.errors {
            e.path = join_path(prefix, &e.path);
            self.errors.push(e);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// True when every problem is an unsupported feature (no invalid input).
    pub fn only_unsupported(&self) -> bool {
        !self.errors.is_empty()
            && self
                .errors
                .iter()
                .all(|e| e.kind == FieldErrorKind::Unsupported)
    }

    /// `Ok(value)` when no problem was recorded.
    pub fn into_result<T>(self, value: T) -> Result<T, CoreError> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

/// Joins two field-path segments: `a` + `b` -> `a.b`, `a` + `[0]` -> `a[0]`.
pub fn join_path(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        rest.to_string()
    } else if rest.is_empty() {
        prefix.to_string()
    } else if rest.starts_with('[') {
        format!("{prefix}{rest}")
    } else {
        format!("{prefix}.{rest}")
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CoreError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_like_proto_field_paths() {
        assert_eq!(
            join_path("virtual_hosts[2]", "routes[0]"),
            "virtual_hosts[2].routes[0]"
        );
        assert_eq!(join_path("routes", "[0]"), "routes[0]");
        assert_eq!(join_path("", "name"), "name");
        assert_eq!(join_path("name", ""), "name");
    }

    #[test]
    fn collects_every_problem() {
        let mut e = CoreError::new();
        e.invalid("a", "bad");
        e.unsupported("b", "not implemented");
        assert_eq!(e.errors.len(), 2);
        assert!(!e.only_unsupported());
        assert_eq!(e.to_string(), "a: bad\nb: not implemented");
        assert!(e.into_result(()).is_err());
    }
}
