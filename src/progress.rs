//! Progress on long work (deploy, snapshot, bench): indicatif bars on stderr, drawn only when
//! stderr is a terminal, so piped output and test logs stay clean.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting `total` operations, labelled `label`.
pub fn bar(total: u64, label: &str) -> ProgressBar {
    styled(total, label, "{pos}/{len} ({per_sec}, {eta} left)")
}

/// A bar counting `total` bytes, labelled `label`, with a message after it.
pub fn bytes(total: u64, label: &str) -> ProgressBar {
    styled(
        total,
        label,
        "{bytes}/{total_bytes} ({bytes_per_sec}, {eta} left) {msg}",
    )
}

/// A bar of `total` with `label` before it and `counts` after it.
fn styled(total: u64, label: &str, counts: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let template = format!("{{prefix:>12}} [{{bar:30}}] {counts}");
    bar.set_style(
        ProgressStyle::with_template(&template)
            .expect("valid progress template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}

/// A spinner for work of unknown length, saying `message`.
pub fn spinner(message: &str) -> ProgressBar {
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("valid progress template"));
    spinner.set_message(message.to_string());
    spinner.enable_steady_tick(Duration::from_millis(120));
    spinner
}
