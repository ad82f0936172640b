//! Progress bars on stderr, one style for every stage.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps labelled `prefix`, with a message slot (the class being worked on).
pub fn bar(len: u64, prefix: String) -> ProgressBar {
    let b = ProgressBar::new(len).with_style(
        ProgressStyle::with_template("{prefix:>12} {msg:>9} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})")
            .expect("valid template"),
    );
    b.set_prefix(prefix);
    b
}

/// The bar of `eval`: `len` images.
pub fn images_bar(len: u64, prefix: &'static str) -> ProgressBar {
    let b = ProgressBar::new(len).with_style(
        ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} images ({per_sec}, eta {eta})",
        )
        .expect("valid template"),
    );
    b.set_prefix(prefix);
    b
}

/// A progress callback `(class, images)` for `bar`: names the class, counts the images.
pub fn per_class(b: &ProgressBar) -> impl FnMut(usize, usize) + '_ {
    move |class, n| {
        b.set_message(format!("class {class}"));
        b.inc(n as u64);
    }
}
