//! Progress display: a bar on a terminal, periodic log lines otherwise (CI logs, cron mail).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// A progress display for `total` units of `what`.
pub struct Progress {
    bar: Option<ProgressBar>,
    what: String,
    total: u64,
    done: u64,
    last_log: Instant,
}

impl Progress {
    pub fn new(what: &str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>12.bold} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(what.to_string());
            bar
        });
        Progress {
            bar,
            what: what.to_string(),
            total,
            done: 0,
            last_log: Instant::now(),
        }
    }

    /// Adds `n` done units; `message` is shown on the bar, and logged at most every 5 s otherwise.
    pub fn advance(&mut self, n: u64, message: &str) {
        self.done += n;
        match &self.bar {
            Some(bar) => {
                bar.inc(n);
                bar.set_message(message.to_string());
            }
            None => {
                if self.last_log.elapsed() >= Duration::from_secs(5) || self.done >= self.total {
                    tracing::info!(
                        done = self.done,
                        total = self.total,
                        "{}: {message}",
                        self.what
                    );
                    self.last_log = Instant::now();
                }
            }
        }
    }

    /// Logs every step (for few, long steps like training iterations).
    pub fn step(&mut self, message: &str) {
        match &self.bar {
            Some(bar) => {
                bar.inc(1);
                bar.set_message(message.to_string());
            }
            None => {
                self.done += 1;
                tracing::info!("{} {}/{}: {message}", self.what, self.done, self.total);
            }
        }
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish();
        }
    }
}
