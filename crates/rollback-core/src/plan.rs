//! Plans (placeholder while the loader is written).

/// `$USER`, else `$LOGNAME`, else `unknown`.
pub fn default_operator() -> String {
    std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into())
}
