//! Integration tests of `decomp-data`: generated files in every official format (including
//! every error case), dataset views, downloads from a local HTTP server, and checks on the
//! real data in `shared/` (skipped with a `skipping:` line when it is absent).

mod common;

mod cifar;
mod fetch;
mod idx;
mod locate;
mod real_data;
mod tiny;
mod views;
