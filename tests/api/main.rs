//! End-to-end tests: real HTTP against a real server on a random port, a real SQLite file in a
//! temp directory, real training on a few real photos.

mod access;
mod backbones;
mod browser;
mod cli;
mod common;
mod dashboard;
mod datasets;
mod evaluation;
mod export;
mod full_disk;
mod idempotency;
mod jobs;
mod openapi;
mod recovery;
mod training;
mod webhooks;
