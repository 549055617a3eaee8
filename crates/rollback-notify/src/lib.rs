#![doc = include_str!("../README.md")]

pub mod email;
mod http;
pub mod slack;
pub mod statuspage;
pub mod timeline;
pub mod webhook;

use rollback_core::Registry;

pub use email::{EmailConfig, EmailNotifier, SmtpSecurity};
pub use slack::{SlackConfig, SlackNotifier};
pub use statuspage::{StatuspageConfig, StatuspageNotifier};
pub use webhook::{WebhookConfig, WebhookNotifier};

/// Registers this crate's notifier kinds: `slack`, `email`, `statuspage`,
/// `webhook`.
pub fn register(registry: &mut Registry) {
    registry
        .notifier(
            "slack",
            "posts one Slack message per run, updates it and replies in its thread",
            SlackNotifier::new,
        )
        .notifier(
            "email",
            "sends a plain-text email with the run's timeline over SMTP",
            EmailNotifier::new,
        )
        .notifier(
            "statuspage",
            "opens, updates and resolves an Atlassian Statuspage incident",
            StatuspageNotifier::new,
        )
        .notifier(
            "webhook",
            "POSTs each event as JSON signed with HMAC-SHA256",
            WebhookNotifier::new,
        );
}

/// Checks that a secret field holds a reference (`${env:...}` or
/// `${file:...}`), so the value stays out of plan files and is redacted from
/// everything the engine writes.
pub(crate) fn secret_reference(
    field: &str,
    value: &str,
    example: &str,
) -> Result<(), rollback_core::ConfigError> {
    if value.trim().is_empty() {
        return Err(rollback_core::ConfigError::field(
            field,
            format!("is empty: write a reference such as {example}"),
        ));
    }
    if !(value.contains("${env:") || value.contains("${file:")) {
        return Err(rollback_core::ConfigError::field(
            field,
            format!(
                "holds a literal secret: keep it out of the plan file and write a reference \
                 such as {example} (or ${{file:PATH}}), which is resolved at run time and \
                 redacted from the journal"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_the_four_kinds() {
        let mut registry = Registry::empty();
        register(&mut registry);
        let kinds: Vec<&str> = registry
            .notifier_kinds()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(kinds, ["email", "slack", "statuspage", "webhook"]);
    }
}
