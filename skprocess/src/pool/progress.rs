//! The progress bar of one call, drawn on stderr once the call has run for
//! a while, when the caller asked for it (`Pool::with_progress`, with the
//! `progress` feature). Without the feature this is a no-op.

use super::Options;

/// A call that runs longer than this shows its progress bar.
#[cfg(feature = "progress")]
const SHOW_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// The progress of one call.
#[cfg(feature = "progress")]
pub(crate) struct Progress {
    enabled: bool,
    total: Option<u64>,
    started: std::time::Instant,
    done: u64,
    bar: Option<indicatif::ProgressBar>,
}

#[cfg(feature = "progress")]
impl Progress {
    /// The progress of a call of `total` items, if known.
    pub(crate) fn new(options: &Options, total: Option<u64>) -> Self {
        Progress {
            enabled: options.progress,
            total,
            started: std::time::Instant::now(),
            done: 0,
            bar: None,
        }
    }

    /// `n` more items have ended.
    pub(crate) fn advance(&mut self, n: usize) {
        self.done += n as u64;
        if !self.enabled {
            return;
        }
        if self.bar.is_none() && self.started.elapsed() >= SHOW_AFTER {
            self.bar = Some(self.draw());
        }
        if let Some(bar) = &self.bar {
            bar.set_position(self.done);
        }
    }

    fn draw(&self) -> indicatif::ProgressBar {
        let (bar, template) = match self.total {
            Some(total) => (
                indicatif::ProgressBar::new(total),
                "{bar:40} {pos}/{len} items, {per_sec}, {elapsed} (eta {eta})",
            ),
            None => (
                indicatif::ProgressBar::new_spinner(),
                "{spinner} {pos} items, {per_sec}, {elapsed}",
            ),
        };
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar
    }

    /// The call has ended: the bar, if drawn, is cleared.
    pub(crate) fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// The progress of one call: nothing is drawn without the `progress`
/// feature.
#[cfg(not(feature = "progress"))]
pub(crate) struct Progress;

#[cfg(not(feature = "progress"))]
impl Progress {
    pub(crate) fn new(_: &Options, _: Option<u64>) -> Self {
        Progress
    }

    pub(crate) fn advance(&mut self, _: usize) {}

    pub(crate) fn finish(&mut self) {}
}
